"""/palette: the server's policy (limits, channels, models, moderation), for members with Manage Server.

Discord hides the group from members without Manage Server (``default_permissions``), but a server can
override that in its integration settings, so every subcommand checks the permission again here
(:meth:`AdminCog.interaction_check`). Decisions live in :mod:`bot.moderation`; this cog translates.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.catalog import MODELS
from bot.errors import ValidationError
from bot.moderation import modlog
from bot.moderation.bans import describe_duration, parse_duration
from bot.moderation.service import capped_note, describe_channels, describe_role_limit, summarize
from bot.presentation import embeds
from bot.presentation.moderation import ConfirmView, ModActionButton, delete_message

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

RESOLUTION_CHOICES = [app_commands.Choice(name=r, value=r) for r in ("1K", "2K", "4K")]
MAX_LIST_LINES = 40


class AdminCog(commands.Cog):
    palette = app_commands.Group(
        name="palette",
        description="Server settings for Palette (Manage Server)",
        default_permissions=discord.Permissions(manage_guild=True),
        guild_only=True,
    )
    blocklist = app_commands.Group(
        name="blocklist", description="Words and patterns refused in prompts", parent=palette
    )

    def __init__(self, bot: PaletteBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ModActionButton)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:  # type: ignore[override]
        """The server-side check behind ``default_permissions``: it cannot be overridden by a server."""
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage()
        perms = interaction.permissions
        if not (perms.manage_guild or perms.administrator):
            raise app_commands.MissingPermissions(["manage_guild"])
        return True

    # ------------------------------------------------------------------ helpers

    @property
    def mod(self) -> Any:
        return self.bot.moderation

    @staticmethod
    def ids(interaction: discord.Interaction) -> tuple[int, int]:
        assert interaction.guild_id is not None
        return interaction.guild_id, interaction.user.id

    @staticmethod
    async def reply(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(
            text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    # ------------------------------------------------------------------ limits

    @palette.command(name="limits", description="Per-user limits, the server pool, max size and images")
    @app_commands.describe(
        daily="Images per member per 24 hours, up to the bot's limit (0 = the bot's limit)",
        hourly="Images per member per hour, up to the bot's limit (0 = the bot's limit)",
        pool="Images for the whole server per 24 hours (0 = no pool)",
        max_resolution="Largest output size members may ask for",
        max_images="Most images in one request (0 = the model's maximum)",
        reset="Back to the bot's defaults for everything above",
    )
    @app_commands.choices(max_resolution=RESOLUTION_CHOICES)
    async def limits(
        self,
        interaction: discord.Interaction,
        daily: app_commands.Range[int, 0, 100_000] | None = None,
        hourly: app_commands.Range[int, 0, 100_000] | None = None,
        pool: app_commands.Range[int, 0, 100_000] | None = None,
        max_resolution: app_commands.Choice[str] | None = None,
        max_images: app_commands.Range[int, 0, 10] | None = None,
        reset: bool = False,
    ) -> None:
        guild_id, actor = self.ids(interaction)
        if reset:
            changes: dict[str, Any] = dict(
                daily_limit=None, hourly_limit=None, daily_pool=None, max_resolution=None, max_images=None
            )
        else:
            changes = {}
            if daily is not None:
                changes["daily_limit"] = daily
            if hourly is not None:
                changes["hourly_limit"] = hourly
            if pool is not None:
                changes["daily_pool"] = pool or None
            if max_resolution is not None:
                changes["max_resolution"] = max_resolution.value
            if max_images is not None:
                changes["max_images"] = max_images or None
        if not changes:
            raise ValidationError("Give at least one limit to change (or `reset`).")
        await self.mod.update_policy(guild_id, actor, "limits", **changes)
        text = "✅ Limits updated. " + await self.limits_line(guild_id)
        note = capped_note(self.bot.settings, daily_limit=daily, hourly_limit=hourly)
        await self.reply(interaction, text + (f"\n{note}" if note else ""))

    async def limits_line(self, guild_id: int) -> str:
        policy = await self.bot.db.moderation.get_policy(guild_id)
        rows = dict(summarize(policy, [], 0, self.bot.settings))
        return " · ".join(
            f"{k}: {rows[k]}"
            for k in ("Limits per user", "Server daily pool", "Max resolution", "Max images per request")
        )

    @palette.command(
        name="role-limit", description="Give a role its own per-user limits (most generous wins)"
    )
    @app_commands.describe(
        role="The role",
        daily="Images per member per 24 hours for this role, up to the bot's limit (0 = the bot's limit)",
        hourly="Images per member per hour for this role, up to the bot's limit (0 = the bot's limit)",
        clear="Remove this role's override",
    )
    async def role_limit(
        self,
        interaction: discord.Interaction,
        role: discord.Role,
        daily: app_commands.Range[int, 0, 100_000] | None = None,
        hourly: app_commands.Range[int, 0, 100_000] | None = None,
        clear: bool = False,
    ) -> None:
        guild_id, actor = self.ids(interaction)
        if clear:
            cleared = await self.mod.clear_role_limit(guild_id, actor, role.id)
            text = (
                f"✅ {role.mention} has no override now." if cleared else f"{role.mention} had no override."
            )
            await self.reply(interaction, text)
            return
        if daily is None and hourly is None:
            raise ValidationError("Give `daily` and/or `hourly` (or `clear`).")
        limit = await self.mod.set_role_limit(guild_id, actor, role.id, daily=daily, hourly=hourly)
        text = f"✅ {role.mention}: {describe_role_limit(limit, self.bot.settings)}."
        note = capped_note(self.bot.settings, daily_limit=daily, hourly_limit=hourly)
        await self.reply(interaction, text + (f"\n{note}" if note else ""))

    # ------------------------------------------------------------------ where and what

    @palette.command(name="channels", description="Choose the channels where Palette may be used")
    @app_commands.describe(
        action="allow / deny a channel, reset to all channels, or list",
        channel="The channel to allow or deny",
    )
    @app_commands.choices(
        action=[
            app_commands.Choice(name="allow", value="allow"),
            app_commands.Choice(name="deny", value="deny"),
            app_commands.Choice(name="reset (all channels)", value="reset"),
            app_commands.Choice(name="list", value="list"),
        ]
    )
    async def channels(
        self,
        interaction: discord.Interaction,
        action: app_commands.Choice[str],
        channel: discord.TextChannel | discord.Thread | None = None,
    ) -> None:
        guild_id, actor = self.ids(interaction)
        policy = await self.bot.db.moderation.get_policy(guild_id)
        if action.value == "list":
            await self.reply(interaction, f"Palette may be used in: {describe_channels(policy)}.")
            return
        allowed, denied = list(policy.allowed_channels), list(policy.denied_channels)
        if action.value == "reset":
            allowed, denied = [], []
        elif channel is None:
            raise ValidationError("Pick the channel to allow or deny.")
        elif allowed:  # an allow-list: edit it
            if action.value == "allow" and channel.id not in allowed:
                allowed.append(channel.id)
            elif action.value == "deny":
                allowed = [c for c in allowed if c != channel.id]
                if not allowed:
                    raise ValidationError("That would leave no channel; use `reset` or allow another first.")
        elif action.value == "deny":  # every channel: switch this one off (new channels stay allowed)
            denied = sorted({*denied, channel.id})
        elif channel.id in denied:  # allow a switched-off channel again
            denied = [c for c in denied if c != channel.id]
        else:  # "allow" with every channel open starts an allow-list of this channel
            allowed, denied = [channel.id], []
        after = await self.mod.update_policy(
            guild_id, actor, "channels", allowed_channels=tuple(allowed), denied_channels=tuple(denied)
        )
        await self.reply(interaction, f"✅ Palette may be used in: {describe_channels(after)}.")

    @palette.command(name="models", description="Which models members may use, and the server's default")
    @app_commands.describe(
        allowed="Comma-separated model keys, or `all`",
        default="The model used when a member doesn't pick one",
    )
    async def models(
        self, interaction: discord.Interaction, allowed: str | None = None, default: str | None = None
    ) -> None:
        guild_id, actor = self.ids(interaction)
        if allowed is None and default is None:
            keys = ", ".join(f"`{m.key}`" for m in MODELS)
            raise ValidationError(f"Give `allowed` and/or `default`. Models: {keys}.")
        changes: dict[str, Any] = {}
        if allowed is not None:
            raw = [k.strip() for k in allowed.split(",") if k.strip()]
            changes["allowed_models"] = () if raw in ([], ["all"]) else tuple(dict.fromkeys(raw))
        if default is not None:
            changes["default_model"] = None if default.strip() in ("", "none", "default") else default.strip()
        after = await self.mod.update_policy(guild_id, actor, "models", **changes)
        allowed_text = ", ".join(f"`{m}`" for m in after.allowed_models) or "all models"
        await self.reply(
            interaction, f"✅ Allowed: {allowed_text}. Default: `{after.default_model or 'Palette default'}`."
        )

    @models.autocomplete("default")
    async def _model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=f"{m.label} ({m.key})"[:100], value=m.key)
            for m in MODELS
            if current.lower() in m.key
        ][:25]

    @palette.command(name="modrole", description="The moderator role (besides Manage Messages)")
    @app_commands.describe(role="Members with this role can delete results and act on reports; empty = none")
    async def modrole(self, interaction: discord.Interaction, role: discord.Role | None = None) -> None:
        guild_id, actor = self.ids(interaction)
        await self.mod.update_policy(guild_id, actor, "moderator role", mod_role_id=role.id if role else None)
        await self.reply(interaction, f"✅ Moderator role: {role.mention if role else 'none'}.")

    @palette.command(name="modlog", description="The channel where Palette logs generations and moderation")
    @app_commands.describe(channel="The mod-log channel; empty = no mod log")
    async def modlog(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        guild_id, actor = self.ids(interaction)
        await self.mod.update_policy(
            guild_id, actor, "mod-log channel", modlog_channel_id=channel.id if channel else None
        )
        await self.reply(interaction, f"✅ Mod log: {channel.mention if channel else 'off'}.")

    @palette.command(name="gallery", description="This server's web gallery of results (members only)")
    @app_commands.describe(
        mode="on: members see results of non-NSFW channels on Palette's website; off: nobody does"
    )
    @app_commands.choices(
        mode=[app_commands.Choice(name="on", value="on"), app_commands.Choice(name="off", value="off")]
    )
    async def gallery(self, interaction: discord.Interaction, mode: app_commands.Choice[str]) -> None:
        guild_id, actor = self.ids(interaction)
        enabled = mode.value == "on"
        before = await self.bot.db.web.set_gallery(guild_id, enabled, actor, self.mod.clock())
        if before != enabled:
            self.mod.emit(
                modlog.policy_change(
                    guild_id, actor_id=actor, what="web gallery",
                    before="on" if before else "off", after=mode.value,
                )
            )  # fmt: skip
        site = self.bot.settings.web_base_url
        where = f" at {site.rstrip('/')}/servers/{guild_id}" if enabled and site else ""
        await self.reply(interaction, f"✅ Web gallery: {mode.value}{where}.")

    @palette.command(name="nsfw", description="What NSFW-marked channels allow")
    @app_commands.describe(
        mode="same: the same rules as everywhere; relaxed: no NSFW term list and normal provider safety"
    )
    @app_commands.choices(
        mode=[
            app_commands.Choice(name="same as other channels", value="same"),
            app_commands.Choice(name="relaxed", value="relaxed"),
        ]
    )
    async def nsfw(self, interaction: discord.Interaction, mode: app_commands.Choice[str]) -> None:
        guild_id, actor = self.ids(interaction)
        await self.mod.update_policy(guild_id, actor, "NSFW channels", nsfw_mode=mode.value)
        await self.reply(interaction, f"✅ NSFW channels: {mode.name}.")

    @palette.command(name="autoban", description="Ban members automatically after repeated blocked prompts")
    @app_commands.describe(
        hits="Blocked prompts that trigger a ban (0 = off)",
        window="Within this time, e.g. 10m",
        duration="Ban length, e.g. 1h, 1d",
    )
    async def autoban(
        self,
        interaction: discord.Interaction,
        hits: app_commands.Range[int, 0, 100],
        window: str | None = None,
        duration: str | None = None,
    ) -> None:
        guild_id, actor = self.ids(interaction)
        changes: dict[str, Any] = {"autoban_hits": hits}
        for key, value in (("autoban_window", window), ("autoban_duration", duration)):
            if value is not None:
                seconds = parse_duration(value)
                if seconds is None:
                    raise ValidationError("Auto-ban times must be durations like `10m` or `1h`.")
                changes[key] = seconds
        after = await self.mod.update_policy(guild_id, actor, "auto-ban", **changes)
        text = (
            "off"
            if after.autoban_hits == 0
            else f"{after.autoban_hits} blocked prompts within {describe_duration(after.autoban_window)} → "
            f"{describe_duration(after.autoban_duration)} ban"
        )
        await self.reply(interaction, f"✅ Auto-ban: {text}.")

    @palette.command(
        name="status",
        description="Queue depth, this server's usage today, and provider health for the bot's owner",
    )
    async def status(self, interaction: discord.Interaction) -> None:
        guild_id, user_id = self.ids(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        snapshots = None
        workers = None
        # Provider health and the deployment's processes are the operator's business: the bot's owner
        # sees them, server managers do not.
        if await self.bot.flows.is_operator(interaction.user):
            snapshots = await self.bot.generator.health_snapshot()
            workers = await self.bot.queue.workers()
        usage = await self.bot.db.jobs.usage(user_id, time.time(), guild_id=guild_id)
        depth = await self.bot.queue.depth()  # the whole deployment, every gateway and worker
        embed = embeds.status_embed(
            snapshots,
            queued=depth.queued,
            running=depth.running,
            server_images_today=usage.guild_pool_used,
        )
        if workers is not None:
            embed.add_field(name="Processes", value=describe_workers(workers, time.time()), inline=False)
            slots = " · ".join(
                f"{name} {used}/{total}" for name, (used, total) in sorted(depth.slots.items())
            )
            embed.add_field(name="Provider slots in use", value=slots or "none", inline=False)
        await interaction.followup.send(embed=embed, ephemeral=True)

    @palette.command(name="settings", description="Show the whole Palette policy of this server")
    async def settings(self, interaction: discord.Interaction) -> None:
        guild_id, _ = self.ids(interaction)
        repo = self.bot.db.moderation
        policy = await repo.get_policy(guild_id)
        d = self.bot.settings
        rows = summarize(policy, await repo.role_limits(guild_id), len(await repo.blocklist(guild_id)), d)
        embed = discord.Embed(title="Palette settings", colour=embeds.BRAND)
        embed.description = (
            f"Bot limits per member: {fmt(d.user_daily_limit)} a day, {fmt(d.user_hourly_limit)} an hour, "
            f"{fmt(d.user_max_concurrent)} at a time (this server and its roles can lower them, not raise "
            f"them; the limits below are the ones that apply). DMs {'allowed' if d.allow_dms else 'off'}."
        )
        for name, value in rows:
            embed.add_field(name=name, value=embeds.truncate(value, 1024), inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    # ------------------------------------------------------------------ blocklist

    @blocklist.command(name="add", description="Refuse prompts containing a word or matching a pattern")
    @app_commands.describe(
        pattern="A word or phrase (end with * to block words starting with it) or a regular expression",
        kind="word (obfuscation-proof, whole words) or regex",
        scope="Everywhere, or only as an NSFW term (not in relaxed NSFW channels)",
    )
    @app_commands.choices(
        kind=[
            app_commands.Choice(name="word", value="word"),
            app_commands.Choice(name="regex", value="regex"),
        ],
        scope=[
            app_commands.Choice(name="everywhere", value="all"),
            app_commands.Choice(name="NSFW term", value="sfw"),
        ],
    )
    async def blocklist_add(
        self,
        interaction: discord.Interaction,
        pattern: app_commands.Range[str, 1, 200],
        kind: app_commands.Choice[str] | None = None,
        scope: app_commands.Choice[str] | None = None,
    ) -> None:
        guild_id, actor = self.ids(interaction)
        stored = await self.mod.add_block(
            guild_id, actor, kind.value if kind else "word", pattern, scope.value if scope else "all"
        )
        await self.reply(interaction, f"✅ Blocked `{stored}`.")

    @blocklist.command(name="remove", description="Remove a word or pattern from the blocklist")
    @app_commands.describe(pattern="The word or pattern, as listed")
    async def blocklist_remove(self, interaction: discord.Interaction, pattern: str) -> None:
        guild_id, actor = self.ids(interaction)
        removed = await self.mod.remove_block(guild_id, actor, pattern)
        await self.reply(interaction, f"✅ Removed `{pattern}`." if removed else f"`{pattern}` isn't listed.")

    @blocklist.command(name="list", description="Show the blocklist")
    async def blocklist_list(self, interaction: discord.Interaction) -> None:
        guild_id, _ = self.ids(interaction)
        entries = await self.bot.db.moderation.blocklist(guild_id)
        policy = await self.bot.db.moderation.get_policy(guild_id)
        lines = [
            f"`{e.pattern}` · {e.kind}" + (" · NSFW term" if e.scope == "sfw" else "")
            for e in entries[:MAX_LIST_LINES]
        ]
        if len(entries) > MAX_LIST_LINES:
            lines.append(f"… and {len(entries) - MAX_LIST_LINES} more")
        head = f"Built-in list: {'on' if policy.builtin_blocklist else 'off'}."
        await self.reply(interaction, head + "\n" + ("\n".join(lines) or "No entries."))

    @blocklist.command(name="builtin", description="Switch the built-in list of NSFW terms on or off")
    @app_commands.describe(enabled="On to refuse common NSFW terms as well")
    async def blocklist_builtin(self, interaction: discord.Interaction, enabled: bool) -> None:
        guild_id, actor = self.ids(interaction)
        await self.mod.update_policy(guild_id, actor, "built-in blocklist", builtin_blocklist=enabled)
        await self.reply(interaction, f"✅ Built-in list {'on' if enabled else 'off'}.")

    # ------------------------------------------------------------------ bans and purge

    @palette.command(name="ban", description="Stop a member from generating images here")
    @app_commands.describe(
        user="The member", duration="e.g. 30m, 2h, 7d; empty = until lifted", reason="Shown to the member"
    )
    async def ban(
        self,
        interaction: discord.Interaction,
        user: discord.User,
        duration: str | None = None,
        reason: app_commands.Range[str, 1, 300] | None = None,
    ) -> None:
        guild_id, actor = self.ids(interaction)
        ban = await self.mod.ban(guild_id, user.id, actor_id=actor, duration=duration, reason=reason)
        until = "until lifted" if ban.expires_at is None else f"until <t:{int(ban.expires_at)}:f>"
        await self.reply(interaction, f"⛔ {user.mention} can't generate here {until}.")

    @palette.command(name="unban", description="Let a banned member generate again")
    @app_commands.describe(user="The member")
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        guild_id, actor = self.ids(interaction)
        lifted = await self.mod.unban(guild_id, user.id, actor_id=actor)
        await self.reply(interaction, f"✅ {user.mention} may generate again." if lifted else "Not banned.")

    @palette.command(name="purge", description="Delete every image Palette made for a member in this server")
    @app_commands.describe(user="The member whose generated messages are deleted")
    async def purge(self, interaction: discord.Interaction, user: discord.User) -> None:
        guild_id, actor = self.ids(interaction)
        posted = await self.mod.result_messages(guild_id, user.id)
        if not posted:
            await self.reply(interaction, f"Palette has no messages for {user.mention} here.")
            return

        async def confirmed(click: discord.Interaction) -> None:
            await click.response.edit_message(content=f"Deleting {len(posted)} message(s)…", view=None)
            deleted = failed = 0
            for item in posted:
                if await delete_message(self.bot, item.channel_id, item.message_id):
                    deleted += 1
                else:
                    failed += 1
            self.mod.emit(modlog.purge(guild_id, user.id, actor_id=actor, deleted=deleted, failed=failed))
            await click.edit_original_response(
                content=f"🧹 Deleted {deleted} message(s) of {user.mention}"
                + (f"; {failed} were already gone or could not be deleted." if failed else ".")
            )

        view = ConfirmView(owner_id=actor, on_confirm=confirmed, confirm_label="Delete them", name="purge")
        await interaction.response.send_message(
            f"Delete {len(posted)} message(s) with images made for {user.mention}? This can't be undone.",
            view=view,
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


def describe_workers(workers: list[Any], now: float, limit: int = 10) -> str:
    """One line per process of the deployment (role, host, pid, last heartbeat)."""
    if not workers:
        return "none registered"
    lines = [
        f"{w.role} on {w.host} (pid {w.pid}) · seen {max(0, int(now - w.heartbeat_at))} s ago"
        for w in sorted(workers, key=lambda w: (w.role, w.host, w.pid))[:limit]
    ]
    if len(workers) > limit:
        lines.append(f"… and {len(workers) - limit} more")
    return "\n".join(lines)


def fmt(value: int | None) -> str:
    if value is None:
        return "unchanged"
    return "unlimited" if value == 0 else str(value)
