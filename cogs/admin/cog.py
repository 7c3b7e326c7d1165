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
from discord.app_commands import locale_str
from discord.ext import commands

from bot.catalog import MODELS
from bot.errors import ValidationError
from bot.i18n import Joined, Text, babel_locale, msg, nmsg, render, shipped_locales, t
from bot.moderation import modlog
from bot.moderation.bans import describe_duration, parse_duration
from bot.moderation.service import capped_note, describe_channels, describe_role_limit, summarize
from bot.presentation import embeds
from bot.presentation.locales import user_locale
from bot.presentation.moderation import ConfirmView, ModActionButton, delete_message

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

RESOLUTION_CHOICES = [app_commands.Choice(name=r, value=r) for r in ("1K", "2K", "4K")]

#: ``/palette settings locale``: every shipped language by its own name, or back to Discord's.
CLEAR_LOCALE = "default"
LOCALE_CHOICES = [
    app_commands.Choice(name=locale_str("The server's Discord language"), value=CLEAR_LOCALE),
    *(
        app_commands.Choice(
            name=f"{babel_locale(code).get_display_name(babel_locale(code))} ({code})", value=code
        )
        for code in shipped_locales()
    ),
]
MAX_LIST_LINES = 40


class AdminCog(commands.Cog):
    palette = app_commands.Group(
        name="palette",
        description=locale_str("Server settings for Palette (Manage Server)"),
        default_permissions=discord.Permissions(manage_guild=True),
        guild_only=True,
    )
    blocklist = app_commands.Group(
        name="blocklist", description=locale_str("Words and patterns refused in prompts"), parent=palette
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
    async def reply(interaction: discord.Interaction, text: Text | str) -> None:
        """An ephemeral answer, in the language of the admin who asked."""
        await interaction.response.send_message(
            render(user_locale(interaction), text),
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    # ------------------------------------------------------------------ limits

    @palette.command(
        name="limits", description=locale_str("Per-user limits, the server pool, max size and images")
    )
    @app_commands.describe(
        daily=locale_str("Images per member per 24 hours, up to the bot's limit (0 = the bot's limit)"),
        hourly=locale_str("Images per member per hour, up to the bot's limit (0 = the bot's limit)"),
        pool=locale_str("Images for the whole server per 24 hours (0 = no pool)"),
        max_resolution=locale_str("Largest output size members may ask for"),
        max_images=locale_str("Most images in one request (0 = the model's maximum)"),
        reset=locale_str("Back to the bot's defaults for everything above"),
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
        await self.mod.update_policy(guild_id, actor, msg("limits"), **changes)
        text = msg("✅ Limits updated. {limits}", limits=await self.limits_line(guild_id))
        note = capped_note(self.bot.settings, daily_limit=daily, hourly_limit=hourly)
        await self.reply(interaction, Joined((text, note), "\n") if note else text)

    async def limits_line(self, guild_id: int) -> Joined:
        policy = await self.bot.db.moderation.get_policy(guild_id)
        rows = dict(summarize(policy, [], 0, self.bot.settings))
        return Joined(
            tuple(
                msg("{label}: {value}", label=msg(k), value=rows[k])
                for k in ("Limits per user", "Server daily pool", "Max resolution", "Max images per request")
            ),
            " · ",
        )

    @palette.command(
        name="role-limit", description=locale_str("Give a role its own per-user limits (most generous wins)")
    )
    @app_commands.describe(
        role=locale_str("The role"),
        daily=locale_str(
            "Images per member per 24 hours for this role, up to the bot's limit (0 = the bot's limit)"
        ),
        hourly=locale_str(
            "Images per member per hour for this role, up to the bot's limit (0 = the bot's limit)"
        ),
        clear=locale_str("Remove this role's override"),
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
                msg("✅ {role} has no override now.", role=role.mention)
                if cleared
                else msg("{role} had no override.", role=role.mention)
            )
            await self.reply(interaction, text)
            return
        if daily is None and hourly is None:
            raise ValidationError("Give `daily` and/or `hourly` (or `clear`).")
        limit = await self.mod.set_role_limit(guild_id, actor, role.id, daily=daily, hourly=hourly)
        text = msg(
            "✅ {role}: {limits}.", role=role.mention, limits=describe_role_limit(limit, self.bot.settings)
        )
        note = capped_note(self.bot.settings, daily_limit=daily, hourly_limit=hourly)
        await self.reply(interaction, Joined((text, note), "\n") if note else text)

    # ------------------------------------------------------------------ where and what

    @palette.command(name="channels", description=locale_str("Choose the channels where Palette may be used"))
    @app_commands.describe(
        action=locale_str("allow / deny a channel, reset to all channels, or list"),
        channel=locale_str("The channel to allow or deny"),
    )
    @app_commands.choices(
        action=[
            app_commands.Choice(name=locale_str("allow"), value="allow"),
            app_commands.Choice(name=locale_str("deny"), value="deny"),
            app_commands.Choice(name=locale_str("reset (all channels)"), value="reset"),
            app_commands.Choice(name=locale_str("list"), value="list"),
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
            await self.reply(
                interaction, msg("Palette may be used in: {channels}.", channels=describe_channels(policy))
            )
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
            guild_id, actor, msg("channels"), allowed_channels=tuple(allowed), denied_channels=tuple(denied)
        )
        await self.reply(
            interaction, msg("✅ Palette may be used in: {channels}.", channels=describe_channels(after))
        )

    @palette.command(
        name="models", description=locale_str("Which models members may use, and the server's default")
    )
    @app_commands.describe(
        allowed=locale_str("Comma-separated model keys, or `all`"),
        default=locale_str("The model used when a member doesn't pick one"),
    )
    async def models(
        self, interaction: discord.Interaction, allowed: str | None = None, default: str | None = None
    ) -> None:
        guild_id, actor = self.ids(interaction)
        if allowed is None and default is None:
            keys = ", ".join(f"`{m.key}`" for m in MODELS)
            raise ValidationError("Give `allowed` and/or `default`. Models: {keys}.", keys=keys)
        changes: dict[str, Any] = {}
        if allowed is not None:
            raw = [k.strip() for k in allowed.split(",") if k.strip()]
            changes["allowed_models"] = () if raw in ([], ["all"]) else tuple(dict.fromkeys(raw))
        if default is not None:
            changes["default_model"] = None if default.strip() in ("", "none", "default") else default.strip()
        after = await self.mod.update_policy(guild_id, actor, msg("models"), **changes)
        allowed_text = ", ".join(f"`{m}`" for m in after.allowed_models) or msg("all models")
        default_text = after.default_model or msg("Palette default")
        await self.reply(
            interaction,
            msg("✅ Allowed: {allowed}. Default: `{default}`.", allowed=allowed_text, default=default_text),
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

    @palette.command(name="modrole", description=locale_str("The moderator role (besides Manage Messages)"))
    @app_commands.describe(
        role=locale_str("Members with this role can delete results and act on reports; empty = none")
    )
    async def modrole(self, interaction: discord.Interaction, role: discord.Role | None = None) -> None:
        guild_id, actor = self.ids(interaction)
        await self.mod.update_policy(
            guild_id, actor, msg("moderator role"), mod_role_id=role.id if role else None
        )
        await self.reply(
            interaction, msg("✅ Moderator role: {role}.", role=role.mention if role else msg("none"))
        )

    @palette.command(
        name="modlog", description=locale_str("The channel where Palette logs generations and moderation")
    )
    @app_commands.describe(channel=locale_str("The mod-log channel; empty = no mod log"))
    async def modlog(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        guild_id, actor = self.ids(interaction)
        await self.mod.update_policy(
            guild_id, actor, msg("mod-log channel"), modlog_channel_id=channel.id if channel else None
        )
        await self.reply(
            interaction, msg("✅ Mod log: {channel}.", channel=channel.mention if channel else msg("off"))
        )

    @palette.command(name="nsfw", description=locale_str("What NSFW-marked channels allow"))
    @app_commands.describe(
        mode=locale_str(
            "same: the same rules as everywhere; relaxed: no NSFW term list and normal provider safety"
        )
    )
    @app_commands.choices(
        mode=[
            app_commands.Choice(name=locale_str("same as other channels"), value="same"),
            app_commands.Choice(name=locale_str("relaxed"), value="relaxed"),
        ]
    )
    async def nsfw(self, interaction: discord.Interaction, mode: app_commands.Choice[str]) -> None:
        guild_id, actor = self.ids(interaction)
        await self.mod.update_policy(guild_id, actor, msg("NSFW channels"), nsfw_mode=mode.value)
        shown = msg("relaxed") if mode.value == "relaxed" else msg("same as other channels")
        await self.reply(interaction, msg("✅ NSFW channels: {mode}.", mode=shown))

    @palette.command(
        name="autoban", description=locale_str("Ban members automatically after repeated blocked prompts")
    )
    @app_commands.describe(
        hits=locale_str("Blocked prompts that trigger a ban (0 = off)"),
        window=locale_str("Within this time, e.g. 10m"),
        duration=locale_str("Ban length, e.g. 1h, 1d"),
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
        after = await self.mod.update_policy(guild_id, actor, msg("auto-ban"), **changes)
        text = (
            msg("off")
            if after.autoban_hits == 0
            else nmsg(
                "{n} blocked prompt within {window} → {duration} ban",
                "{n} blocked prompts within {window} → {duration} ban",
                after.autoban_hits,
                window=describe_duration(after.autoban_window),
                duration=describe_duration(after.autoban_duration),
            )
        )
        await self.reply(interaction, msg("✅ Auto-ban: {text}.", text=text))

    @palette.command(
        name="status",
        description=locale_str(
            "Queue depth, this server's usage today, and provider health for the bot's owner"
        ),
    )
    async def status(self, interaction: discord.Interaction) -> None:
        guild_id, user_id = self.ids(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        snapshots = None
        workers = None
        shards: list[Any] = []
        # Provider health and the deployment's processes are the operator's business: the bot's owner
        # sees them, server managers do not.
        if await self.bot.flows.is_operator(interaction.user):
            snapshots = await self.bot.generator.health_snapshot()
            workers = await self.bot.queue.workers()
            shards = await self.bot.shard_repo.shards(fresher_than=time.time() - SHARD_STALE_SECONDS)
        usage = await self.bot.db.jobs.usage(user_id, time.time(), guild_id=guild_id)
        depth = await self.bot.queue.depth()  # the whole deployment, every gateway and worker
        locale = user_locale(interaction)
        embed = embeds.status_embed(
            snapshots,
            queued=depth.queued,
            running=depth.running,
            server_images_today=usage.guild_pool_used,
            locale=locale,
        )
        if workers is not None:
            embed.add_field(
                name=t(locale, "Processes"),
                value=describe_workers(workers, time.time(), locale),
                inline=False,
            )
            embed.add_field(
                name=t(locale, "Gateway shards"), value=describe_shards(shards, locale), inline=False
            )
            slots = " · ".join(
                f"{name} {used}/{total}" for name, (used, total) in sorted(depth.slots.items())
            )
            embed.add_field(
                name=t(locale, "Provider slots in use"), value=slots or t(locale, "none"), inline=False
            )
        await interaction.followup.send(embed=embed, ephemeral=True)

    @palette.command(
        name="settings",
        description=locale_str("Show the whole Palette policy of this server, or set its language"),
    )
    @app_commands.describe(
        locale=locale_str(
            "The language of Palette's public posts here (default: the server's Discord language)"
        )
    )
    @app_commands.choices(locale=LOCALE_CHOICES)
    async def settings(
        self, interaction: discord.Interaction, locale: app_commands.Choice[str] | None = None
    ) -> None:
        guild_id, actor = self.ids(interaction)
        if locale is not None:
            # Public posts (status, results, buttons, mod log) use it from the next one on.
            value = None if locale.value == CLEAR_LOCALE else locale.value
            await self.mod.update_policy(guild_id, actor, msg("language"), locale=value)
        repo = self.bot.db.moderation
        policy = await repo.get_policy(guild_id)
        d = self.bot.settings
        rows = summarize(policy, await repo.role_limits(guild_id), len(await repo.blocklist(guild_id)), d)
        shown = user_locale(interaction)
        embed = discord.Embed(title=t(shown, "Palette settings"), colour=embeds.BRAND)
        dms = t(shown, "allowed") if d.allow_dms else t(shown, "off")
        embed.description = t(
            shown,
            "Bot limits per member: {daily} a day, {hourly} an hour, {concurrent} at a time (this server and "
            "its roles can lower them, not raise them; the limits below are the ones that apply). DMs {dms}.",
            daily=fmt(d.user_daily_limit),
            hourly=fmt(d.user_hourly_limit),
            concurrent=fmt(d.user_max_concurrent),
            dms=dms,
        )
        for name, value in rows:
            embed.add_field(
                name=t(shown, name), value=embeds.truncate(render(shown, value), 1024), inline=False
            )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    # ------------------------------------------------------------------ blocklist

    @blocklist.command(
        name="add", description=locale_str("Refuse prompts containing a word or matching a pattern")
    )
    @app_commands.describe(
        pattern=locale_str(
            "A word or phrase (end with * to block words starting with it) or a regular expression"
        ),
        kind=locale_str("word (obfuscation-proof, whole words) or regex"),
        scope=locale_str("Everywhere, or only as an NSFW term (not in relaxed NSFW channels)"),
    )
    @app_commands.choices(
        kind=[
            app_commands.Choice(name=locale_str("word"), value="word"),
            app_commands.Choice(name=locale_str("regex"), value="regex"),
        ],
        scope=[
            app_commands.Choice(name=locale_str("everywhere"), value="all"),
            app_commands.Choice(name=locale_str("NSFW term"), value="sfw"),
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
        await self.reply(interaction, msg("✅ Blocked `{pattern}`.", pattern=stored))

    @blocklist.command(name="remove", description=locale_str("Remove a word or pattern from the blocklist"))
    @app_commands.describe(pattern=locale_str("The word or pattern, as listed"))
    async def blocklist_remove(self, interaction: discord.Interaction, pattern: str) -> None:
        guild_id, actor = self.ids(interaction)
        removed = await self.mod.remove_block(guild_id, actor, pattern)
        await self.reply(
            interaction,
            msg("✅ Removed `{pattern}`.", pattern=pattern)
            if removed
            else msg("`{pattern}` isn't listed.", pattern=pattern),
        )

    @blocklist.command(name="list", description=locale_str("Show the blocklist"))
    async def blocklist_list(self, interaction: discord.Interaction) -> None:
        guild_id, _ = self.ids(interaction)
        entries = await self.bot.db.moderation.blocklist(guild_id)
        policy = await self.bot.db.moderation.get_policy(guild_id)
        lines: list[Text | str] = [
            msg("`{pattern}` · {kind} · NSFW term", pattern=e.pattern, kind=e.kind)
            if e.scope == "sfw"
            else f"`{e.pattern}` · {e.kind}"
            for e in entries[:MAX_LIST_LINES]
        ]
        if len(entries) > MAX_LIST_LINES:
            lines.append(msg("… and {count} more", count=len(entries) - MAX_LIST_LINES))
        head = msg("Built-in list: on.") if policy.builtin_blocklist else msg("Built-in list: off.")
        body = Joined(tuple(lines), "\n") if lines else msg("No entries.")
        await self.reply(interaction, Joined((head, body), "\n"))

    @blocklist.command(
        name="builtin", description=locale_str("Switch the built-in list of NSFW terms on or off")
    )
    @app_commands.describe(enabled=locale_str("On to refuse common NSFW terms as well"))
    async def blocklist_builtin(self, interaction: discord.Interaction, enabled: bool) -> None:
        guild_id, actor = self.ids(interaction)
        await self.mod.update_policy(guild_id, actor, msg("built-in blocklist"), builtin_blocklist=enabled)
        await self.reply(
            interaction, msg("✅ Built-in list on.") if enabled else msg("✅ Built-in list off.")
        )

    # ------------------------------------------------------------------ bans and purge

    @palette.command(name="ban", description=locale_str("Stop a member from generating images here"))
    @app_commands.describe(
        user=locale_str("The member"),
        duration=locale_str("e.g. 30m, 2h, 7d; empty = until lifted"),
        reason=locale_str("Shown to the member"),
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
        if ban.expires_at is None:
            await self.reply(
                interaction, msg("⛔ {user} can't generate here until lifted.", user=user.mention)
            )
        else:
            until = f"<t:{int(ban.expires_at)}:f>"
            await self.reply(
                interaction,
                msg("⛔ {user} can't generate here until {until}.", user=user.mention, until=until),
            )

    @palette.command(name="unban", description=locale_str("Let a banned member generate again"))
    @app_commands.describe(user=locale_str("The member"))
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        guild_id, actor = self.ids(interaction)
        lifted = await self.mod.unban(guild_id, user.id, actor_id=actor)
        await self.reply(
            interaction,
            msg("✅ {user} may generate again.", user=user.mention) if lifted else msg("Not banned."),
        )

    @palette.command(
        name="purge", description=locale_str("Delete every image Palette made for a member in this server")
    )
    @app_commands.describe(user=locale_str("The member whose generated messages are deleted"))
    async def purge(self, interaction: discord.Interaction, user: discord.User) -> None:
        guild_id, actor = self.ids(interaction)
        posted = await self.mod.result_messages(guild_id, user.id)
        if not posted:
            await self.reply(interaction, msg("Palette has no messages for {user} here.", user=user.mention))
            return
        locale = user_locale(interaction)

        async def confirmed(click: discord.Interaction) -> None:
            await click.response.edit_message(
                content=t(locale, "Deleting {count} message(s)…", count=len(posted)), view=None
            )
            deleted = failed = 0
            for item in posted:
                if await delete_message(self.bot, item.channel_id, item.message_id):
                    deleted += 1
                else:
                    failed += 1
            self.mod.emit(modlog.purge(guild_id, user.id, actor_id=actor, deleted=deleted, failed=failed))
            if failed:
                done = t(
                    locale,
                    "🧹 Deleted {deleted} message(s) of {user}; "
                    "{failed} were already gone or could not be deleted.",
                    deleted=deleted,
                    user=user.mention,
                    failed=failed,
                )
            else:
                done = t(
                    locale, "🧹 Deleted {deleted} message(s) of {user}.", deleted=deleted, user=user.mention
                )
            await click.edit_original_response(content=done)

        view = ConfirmView(
            owner_id=actor,
            on_confirm=confirmed,
            confirm_label=t(locale, "Delete them"),
            name="purge",
            locale=locale,
        )
        await interaction.response.send_message(
            t(
                locale,
                "Delete {count} message(s) with images made for {user}? This can't be undone.",
                count=len(posted),
                user=user.mention,
            ),
            view=view,
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


def describe_workers(workers: list[Any], now: float, locale: str = "en-US", limit: int = 10) -> str:
    """One line per process of the deployment (role, host, pid, last heartbeat)."""
    if not workers:
        return t(locale, "none registered")
    lines = [
        t(
            locale,
            "{role} on {host} (pid {pid}) · seen {seconds} s ago",
            role=w.role,
            host=w.host,
            pid=w.pid,
            seconds=max(0, int(now - w.heartbeat_at)),
        )
        for w in sorted(workers, key=lambda w: (w.role, w.host, w.pid))[:limit]
    ]
    if len(workers) > limit:
        lines.append(t(locale, "… and {count} more", count=len(workers) - limit))
    return "\n".join(lines)


#: Shard rows whose heartbeat is older than this belong to a process that is gone.
SHARD_STALE_SECONDS = 30.0


def describe_shards(shards: list[Any], locale: str = "en-US", limit: int = 20) -> str:
    """One line per gateway shard: its latency and the process running it."""
    if not shards:
        return t(locale, "none registered")
    lines = []
    for s in shards[:limit]:
        if s.latency_s is None:
            line = t(
                locale,
                "shard {shard}/{count} · latency n/a · {host} (pid {pid})",
                shard=s.shard_id,
                count=s.shard_count,
                host=s.host,
                pid=s.pid,
            )
        else:
            line = t(
                locale,
                "shard {shard}/{count} · {latency} ms · {host} (pid {pid})",
                shard=s.shard_id,
                count=s.shard_count,
                latency=round(s.latency_s * 1000),
                host=s.host,
                pid=s.pid,
            )
        lines.append(line)
    if len(shards) > limit:
        lines.append(t(locale, "… and {count} more", count=len(shards) - limit))
    return "\n".join(lines)


def fmt(value: int | None) -> Text | str:
    if value is None:
        return msg("unchanged")
    return msg("unlimited") if value == 0 else str(value)
