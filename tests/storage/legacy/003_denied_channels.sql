-- Channels switched off while every other channel stays allowed (a JSON array of channel ids).
-- Before this, "deny" from "all channels" listed every current channel as allowed, which silently shut
-- Palette out of channels created later.
ALTER TABLE guild_policy ADD COLUMN denied_channels TEXT NOT NULL DEFAULT '[]';
