"""Moderation in Discord: request checks for the job flow, the mod-log sender, reports and moderator buttons.

Decisions are made by :class:`bot.moderation.service.ModerationService`; this module only reads ids off
interactions and turns mod-log entries into messages.

The mod log is best effort and off the critical path: :meth:`ModLogSender.submit` schedules a task and
returns; a failure (no channel, missing permission, Discord down) is logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import ValidationError
from bot.generation import GenerationOutcome, Plan
from bot.i18n import N_, SOURCE_LOCALE, render, t
from bot.moderation import bans, modlog
from bot.moderation.modlog import ModLogEntry
from bot.moderation.policy import RequestContext
from bot.presentation import embeds
from bot.presentation.locales import guild_locale, user_locale
from bot.storage import GuildPolicy, JobRecord

if TYPE_CHECKING:
    from bot.jobs.service import Delivery, JobPresenter
    from bot.presentation.client import PaletteBot

log = logging.getLogger(__name__)

#: Ban applied by the "Ban user" button on a report.
REPORT_BAN_SECONDS = 7 * 86400


# ------------------------------------------------------------------ request checks (used by Flows.start_job)


def request_context(interaction: discord.Interaction) -> RequestContext:
    user = interaction.user
    roles = tuple(r.id for r in user.roles) if isinstance(user, discord.Member) else ()
    channel = interaction.channel
    parent = getattr(channel, "parent_id", None)
    return RequestContext(
        user_id=user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        role_ids=roles,
        nsfw_channel=bool(getattr(channel, "nsfw", False)),
        parent_channel_id=parent if isinstance(parent, int) else None,
    )


@dataclass
class Gate:
    """What :func:`admit` learnt, for :func:`check_planned`."""

    ctx: RequestContext
    policy: GuildPolicy | None


async def admit(
    bot: PaletteBot,
    interaction: discord.Interaction,
    spec: Any,
    *,
    kind: str,
    parent_job_id: int | None,
    references: int = 0,
) -> tuple[Gate, Any]:
    """Ban, DMs, channel; the server's default model and strict safety applied to ``spec``."""
    ctx = request_context(interaction)
    policy = await bot.moderation.admit(ctx)
    chosen = bool(interaction.extras.get("model_chosen", False)) or parent_job_id is not None
    spec = bot.moderation.adjust(policy, ctx, spec, model_chosen=chosen, references=references)
    return Gate(ctx, policy), spec


async def check_planned(bot: PaletteBot, gate: Gate, plan: Plan, prompt: str) -> None:
    """Model, resolution, count, then the prompt filter (a blocked prompt is recorded and logged)."""
    bot.moderation.check_plan(gate.policy, model=plan.model.key, resolution=plan.resolution, count=plan.count)
    await bot.moderation.screen_prompt(gate.policy, gate.ctx, prompt)


def with_spec(spec: Any, **changes: Any) -> Any:
    return replace(spec, **changes)


def is_moderator(interaction: discord.Interaction, policy: GuildPolicy | None) -> bool:
    """Manage Messages in this channel, Manage Server, or the server's moderator role.

    Channel-scoped: enough for acting on the clicked message in its own channel. Anything that reaches
    further (the mod-log buttons) needs :func:`is_server_moderator`."""
    user = interaction.user
    if not isinstance(user, discord.Member):
        return False
    perms = interaction.permissions
    if perms.manage_messages or perms.manage_guild or perms.administrator:
        return True
    return has_mod_role(user, policy)


def is_server_moderator(interaction: discord.Interaction, policy: GuildPolicy | None) -> bool:
    """Manage Messages (or Manage Server) for the whole server, or the server's moderator role.

    Server-wide means from the member's roles (``Member.guild_permissions``): ``interaction.permissions``
    is resolved for the clicked message's channel, so a Manage Messages overwrite on the mod-log channel
    alone would otherwise pass for deleting results anywhere and banning."""
    user = interaction.user
    if not isinstance(user, discord.Member) or user.guild.id != interaction.guild_id:
        return False
    perms = user.guild_permissions
    if perms.manage_messages or perms.manage_guild or perms.administrator:
        return True
    return has_mod_role(user, policy)


def has_mod_role(member: discord.Member, policy: GuildPolicy | None) -> bool:
    return (
        policy is not None
        and policy.mod_role_id is not None
        and member.get_role(policy.mod_role_id) is not None
    )


# ------------------------------------------------------------------ the mod log


class ModLogSender:
    """Posts mod-log entries to each server's mod-log channel, in the background."""

    def __init__(self, bot: PaletteBot) -> None:
        self.bot = bot
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    def submit(self, entry: ModLogEntry) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._send(entry))
        except RuntimeError:  # no loop (CLI use): nothing to send to
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 10) -> None:
        """Wait for pending entries (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def _send(self, entry: ModLogEntry) -> None:
        try:
            policy = await self.bot.moderation.policy(entry.guild_id)
            assert policy is not None
        except Exception as exc:
            self.failed += 1
            log.warning("mod log for guild %s: could not read the policy (%s)", entry.guild_id, exc)
            return
        targets = dict.fromkeys(c for c in (policy.modlog_channel_id, *entry.also_to) if c is not None)
        # The mod log is the server's: its language, whoever caused the entry.
        locale = guild_locale(self.bot.get_guild(entry.guild_id), policy, entry.locale)
        for channel_id in targets:
            try:
                await self._post(channel_id, entry, locale)
                self.sent += 1
            except Exception as exc:
                self.failed += 1
                log.warning(
                    "mod log for guild %s: could not post a %s entry in %s (%s)",
                    entry.guild_id,
                    entry.kind,
                    channel_id,
                    exc,
                )

    async def _post(self, channel_id: int, entry: ModLogEntry, locale: str = SOURCE_LOCALE) -> None:
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            channel = await self.bot.fetch_channel(channel_id)
        if not isinstance(channel, discord.abc.Messageable):
            raise TypeError(f"channel {channel_id} cannot receive messages")
        # Never post one server's moderation data in another server's channel.
        if getattr(getattr(channel, "guild", None), "id", entry.guild_id) != entry.guild_id:
            raise PermissionError(f"channel {channel_id} is not in guild {entry.guild_id}")
        view = (
            report_view(entry.report_job_id, locale)
            if entry.report_job_id is not None
            else discord.utils.MISSING
        )
        await channel.send(
            embed=entry_embed(entry, locale), view=view, allowed_mentions=discord.AllowedMentions.none()
        )


def entry_embed(entry: ModLogEntry, locale: str = SOURCE_LOCALE) -> discord.Embed:
    """A mod-log entry in ``locale``: field names are message ids, values messages or plain text."""
    embed = discord.Embed(title=render(locale, entry.title)[:256], colour=entry.colour, url=entry.url)
    for name, value in entry.fields[:25]:
        embed.add_field(
            name=t(locale, name)[:256],
            value=render(locale, value)[:1024] or "—",
            inline=name not in ("Prompt", "Before", "After"),
        )
    if entry.image_url:
        embed.set_thumbnail(url=entry.image_url)
    embed.timestamp = discord.utils.utcnow()
    return embed


class ModLoggingPresenter:
    """Wraps the job presenter: after a result is posted, a generation entry goes to the mod log."""

    def __init__(self, inner: JobPresenter, bot: PaletteBot) -> None:
        self._inner = inner
        self._bot = bot

    async def started(self, job: JobRecord) -> None:
        await self._inner.started(job)

    async def failed(self, job: JobRecord, error: Any) -> None:
        await self._inner.failed(job, error)

    async def notice(self, job: JobRecord, note: Any) -> None:
        await self._inner.notice(job, note)

    async def deliver(self, job: JobRecord, outcome: GenerationOutcome, images: Sequence[Any]) -> Delivery:
        delivery = await self._inner.deliver(job, outcome, images)
        if job.guild_id is not None:
            try:
                url = embeds.jump_url(job.guild_id, delivery.channel_id, delivery.message_id)
                entry = modlog.generation(
                    job.guild_id,
                    user_id=job.user_id,
                    prompt=job.prompt,
                    model=embeds.model_label(job.model),
                    kind=job.kind,
                    job_id=job.id,
                    url=url,
                )
                self._bot.moderation.emit(replace(entry, locale=embeds.job_locale(job)))
            except Exception:
                log.exception("job %s: could not queue the mod-log entry", job.id)
        return delivery


# ------------------------------------------------------------------ reports and moderator buttons

MOD_ACTIONS: dict[str, tuple[str, str, discord.ButtonStyle]] = {
    "delete": (N_("Delete result"), "🗑️", discord.ButtonStyle.danger),
    "ban": (N_("Ban author (7 days)"), "⛔", discord.ButtonStyle.danger),
}


class ModActionButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"palette:mod:(?P<action>delete|ban):(?P<job_id>[0-9]{1,19})",
):
    """A moderator's button on a report in the mod log (persistent across restarts)."""

    def __init__(self, action: str, job_id: int, locale: str = SOURCE_LOCALE) -> None:
        label, emoji, style = MOD_ACTIONS[action]
        super().__init__(
            discord.ui.Button(
                label=t(locale, label), emoji=emoji, style=style, custom_id=f"palette:mod:{action}:{job_id}"
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> ModActionButton:
        return cls(match["action"], int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: PaletteBot = interaction.client  # type: ignore[assignment]
        try:
            await moderator_action(bot, interaction, self.action, self.job_id)
        except Exception as exc:
            await bot.report_error(interaction, exc)


def report_view(job_id: int, locale: str = SOURCE_LOCALE) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in MOD_ACTIONS:
        view.add_item(ModActionButton(action, job_id, locale))
    return view


async def report_result(bot: PaletteBot, interaction: discord.Interaction, job: JobRecord) -> None:
    """The Report button: record it, tell the mod log, thank the reporter privately."""
    if interaction.guild_id is None:
        raise ValidationError("Reports are for results posted in servers.")
    if interaction.user.id == job.user_id:
        raise ValidationError("That's your own image; use Delete instead.")
    recorded = await bot.moderation.report(
        interaction.guild_id, job_id=job.id, reporter_id=interaction.user.id, reported_id=job.user_id
    )
    if recorded is None:  # one report per member per result: no second row, no second mod-log post
        raise ValidationError("You already reported this image; the moderators have been told.")
    message_id = interaction.message.id if interaction.message else job.result_message_id
    bot.moderation.emit(
        modlog.report(
            interaction.guild_id,
            reporter_id=interaction.user.id,
            user_id=job.user_id,
            job_id=job.id,
            prompt=job.prompt,
            model=embeds.model_label(job.model),
            url=embeds.jump_url(interaction.guild_id, interaction.channel_id, message_id),
        )
    )
    await interaction.response.send_message(
        t(user_locale(interaction), "Thanks — the moderators have been told about this image."),
        ephemeral=True,
    )


async def moderator_action(
    bot: PaletteBot, interaction: discord.Interaction, action: str, job_id: int
) -> None:
    if interaction.guild_id is None:
        raise ValidationError("That only works in a server.")
    policy = await bot.moderation.policy(interaction.guild_id)
    # These buttons act server-wide (a result in any channel, a ban): channel permissions are not enough.
    if not is_server_moderator(interaction, policy):
        raise ValidationError(
            "Only moderators can do that (Manage Messages for the whole server, or the moderator role)."
        )
    job = await bot.db.jobs.get_job(job_id)
    if job is None or job.guild_id != interaction.guild_id:
        raise ValidationError("That generation is no longer in Palette's records.")
    await interaction.response.defer(ephemeral=True, thinking=True)
    now = bot.moderation.clock()
    if action == "delete":
        deleted = await delete_job_messages(bot, job)
        await bot.db.moderation.resolve_reports(job.id, "deleted", now)
        await forget_job(bot, job, now)
        bot.moderation.emit(
            modlog.deleted_result(
                job.guild_id, job_id=job.id, user_id=job.user_id, actor_id=interaction.user.id
            )
        )
        locale = user_locale(interaction)
        text = t(locale, "Deleted the result.") if deleted else t(locale, "The result was already gone.")
    else:
        ban = await bot.moderation.ban(
            job.guild_id,
            job.user_id,
            actor_id=interaction.user.id,
            duration=float(REPORT_BAN_SECONDS),
            reason=bans.report_reason(job.id),
        )
        await bot.db.moderation.resolve_reports(job.id, "banned", now)
        text = t(
            user_locale(interaction),
            "{user} can't generate here until {until}.",
            user=f"<@{job.user_id}>",
            until=f"<t:{int(ban.expires_at or 0)}:f>",
        )
    await interaction.followup.send(text, ephemeral=True)


async def delete_job_messages(bot: PaletteBot, job: JobRecord) -> int:
    """Delete the messages carrying a job's results; returns how many were deleted."""
    targets: set[tuple[int, int]] = set()
    if job.channel_id and job.result_message_id:
        targets.add((job.channel_id, job.result_message_id))
    for result in await bot.db.history.results_for_job(job.id):
        if result.channel_id and result.message_id:
            targets.add((result.channel_id, result.message_id))
    deleted = 0
    for channel_id, message_id in targets:
        if await delete_message(bot, channel_id, message_id):
            deleted += 1
    return deleted


async def forget_job(bot: Any, job: JobRecord, now: float) -> None:
    """A removed result leaves Palette's records and the web gallery's image store."""
    await bot.db.web.forget_job(job.id, now)
    store = getattr(bot, "image_store", None)
    if store is not None:
        await store.delete_job(job.user_id, job.id)


async def delete_message(bot: PaletteBot, channel_id: int, message_id: int) -> bool:
    try:
        await bot.http.delete_message(channel_id, message_id, reason="Palette moderation")
        return True
    except discord.NotFound:
        return False
    except discord.HTTPException as exc:
        log.warning("could not delete message %s in %s (%s)", message_id, channel_id, exc)
        return False


class ConfirmView(discord.ui.View):
    """Confirm / Cancel, for the person who asked only."""

    def __init__(
        self, *, owner_id: int, on_confirm: Any, confirm_label: str, name: str, locale: str = SOURCE_LOCALE
    ) -> None:
        super().__init__(timeout=120)
        self.owner_id = owner_id
        self._on_confirm = on_confirm
        self.locale = locale
        self.confirm.label = confirm_label
        self.cancel.label = t(locale, "Cancel")
        self.confirm.custom_id = f"palette:{name}:confirm"
        self.cancel.custom_id = f"palette:{name}:cancel"

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.owner_id

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[ConfirmView]) -> None:
        self.stop()
        await self._on_confirm(interaction)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[ConfirmView]) -> None:
        self.stop()
        await interaction.response.edit_message(
            content=t(self.locale, "Cancelled; nothing was deleted."), view=None
        )
