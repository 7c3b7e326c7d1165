"""Moderation and server administration: policy, prompt filter, bans, mod-log entries.

Decisions live here (plain ids and records, no Discord objects); the admin cog and the presentation
layer only translate between Discord and :class:`~bot.moderation.service.ModerationService`.
"""
