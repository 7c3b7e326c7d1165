"""/compare (issue 12): the same prompt on two to four models at once, posted together.

A compare request is a *group* of ordinary jobs, one per model (``jobs.group_id``): each is reserved,
queued, claimed, generated and settled like any other job (one image each, charged when posted,
refunded on its own when its model fails), by whichever worker claims it. They share one message, the
request's status message: each worker adds its part to it when its job is done (its image, labelled by
model, with Re-roll / Edit / Upscale buttons for that image), and a failed model's part says it failed.

Correct with several workers: a worker edits the shared message only while holding the group's lock
(:class:`bot.storage.groups.SqlGroupRepository`, a short lease in the database), and every edit is
rebuilt from the truth: which images the message already has (its attachments, kept by id) and which
jobs failed or were cancelled (the database). Two edits therefore never drop each other's image.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot.catalog import get_model
from bot.errors import PaletteError, ValidationError
from bot.generation import GenerationSpec
from bot.i18n import N_, Joined, t
from bot.i18n import render as render_text
from bot.presentation import embeds, moderation
from bot.presentation.flows import Restarting, check_bot_permissions
from bot.presentation.locales import server_locale, user_locale
from bot.presentation.views import CancelButton, ResultButton, status_view
from bot.storage import JobRecord
from bot.storage.groups import GroupMember, SqlGroupRepository

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

log = logging.getLogger(__name__)

MIN_MODELS, MAX_MODELS = 2, 4
#: The pair compared when no models are named (the first two of these this bot offers).
PREFERRED_MODELS = ("nano-banana-pro", "gpt-image-2", "nano-banana-2", "nano-banana", "nano-banana-lite")
#: How long one worker may hold a group's message (an upload); an expired lock is taken over.
LOCK_SECONDS = 120.0
LOCK_POLL = 0.05
LOCK_WAIT = 150.0
PART_BUTTONS = ("reroll", "edit", "upscale")
_FILENAME = re.compile(r"palette-(?P<job>[0-9]+)-[0-9]+\.[a-z0-9]+")

#: Every user-facing text of /compare: message ids (:func:`bot.i18n.N_`), rendered where they are shown
#: (refusals and the Cancel answer in the user's language, the shared message in the server's).
COMPARE_TEXT: dict[str, str] = {
    "too_few": N_("Name {min} to {max} different models to compare, separated by commas."),
    "too_many": N_("At most {max} models can be compared at once."),
    "unknown": N_("Unknown model `{model}`. Available: {available}."),
    "not_enough_models": N_(
        "This bot offers fewer than two models right now, so there is nothing to compare."
    ),
    "queued": N_("⏳ Queued: comparing {models}."),
    "progress": N_("🆚 **{prompt}**\n{done} of {total} done."),
    "progress_failed": N_("🆚 **{prompt}**\n{done} of {total} done · {failed} failed (not charged)."),
    "failed_part": N_("❌ {error} Not charged."),
    "generation_failed": N_("The generation failed."),
    "cancelled_part": N_("✖️ Cancelled; not charged."),
    "cancelled": N_("✖️ Cancelled by {user}; what was not made yet was refunded."),
}


def text(locale: str, key: str, **details: Any) -> str:
    """``COMPARE_TEXT[key]`` in ``locale`` with its values."""
    return t(locale, COMPARE_TEXT[key], **details)


# ---------------------------------------------------------------------------------------------- choosing


def choose_models(raw: str | None, available: Sequence[str]) -> list[str]:
    """The models a /compare names (a comma list; catalog keys or labels), or the default pair.
    Raises :class:`ValidationError` before anything is reserved."""
    if len(available) < MIN_MODELS:
        raise ValidationError(COMPARE_TEXT["not_enough_models"])
    if not raw or not raw.strip():
        chosen = [key for key in PREFERRED_MODELS if key in available]
        chosen += [key for key in available if key not in chosen]
        return chosen[:MIN_MODELS]
    labels = {}
    for key in available:
        model = get_model(key)
        if model is not None:
            labels[model.label.lower()] = key
    chosen = []
    for part in raw.split(","):
        name = part.strip().lower()
        if not name:
            continue
        key = name if name in available else labels.get(name)
        if key is None:
            shown = embeds.escape(part.strip())[:40]
            raise ValidationError(COMPARE_TEXT["unknown"], model=shown, available=Joined(tuple(available)))
        if key not in chosen:
            chosen.append(key)
    if len(chosen) > MAX_MODELS:
        raise ValidationError(COMPARE_TEXT["too_many"], max=MAX_MODELS)
    if len(chosen) < MIN_MODELS:
        raise ValidationError(COMPARE_TEXT["too_few"], min=MIN_MODELS, max=MAX_MODELS)
    return chosen


async def start_compare(
    bot: PaletteBot,
    interaction: discord.Interaction,
    *,
    prompt: str,
    models: str | None,
    aspect_ratio: str | None,
    resolution: str | None,
) -> list[JobRecord]:
    """Validate every model's request (all answered before anything is charged), reserve one job per
    model in a new group, show "queued" with a Cancel button, hand the jobs to the queue."""
    jobs = bot.jobs
    if not jobs.accepting:
        raise Restarting()
    check_bot_permissions(interaction)
    keys = choose_models(models, [m.key for m in bot.generator.models()])
    interaction.extras["model_chosen"] = True  # the models are the request
    specs = [
        GenerationSpec(model=key, prompt=prompt, aspect_ratio=aspect_ratio, resolution=resolution, count=1)
        for key in keys
    ]
    gate, first = await moderation.admit(bot, interaction, specs[0], kind="compare", parent_job_id=None)
    # The shared message (status, images, buttons) speaks the server's language, as a single job's does.
    locale = server_locale(interaction, gate.policy)
    interaction.extras["locale"] = locale
    specs = [first] + [
        bot.moderation.adjust(gate.policy, gate.ctx, spec, model_chosen=True, references=0)
        for spec in specs[1:]
    ]
    # A ratio one of the models lacks is refused here, on the routes this server may use (its own keys).
    access = await jobs.access_for(interaction.guild_id)
    plans = [jobs.plan(spec, access) for spec in specs]
    for plan in plans:  # the server's models, sizes, and images per request (the whole comparison)
        check = bot.moderation.check_plan
        check(gate.policy, model=plan.model.key, resolution=plan.resolution, count=len(plans))
    await bot.moderation.screen_prompt(gate.policy, gate.ctx, plans[0].prompt)
    await bot.flows.defer(interaction)
    origin = bot.flows.origin(interaction)
    await jobs.check_room(origin, len(specs))  # the whole comparison fits, or nothing is reserved
    group_id = await bot.db.groups.create(origin.user_id, origin.guild_id, len(specs), jobs.clock())
    reserved: list[JobRecord] = []
    try:
        for i, spec in enumerate(specs):
            reserved.append(
                await jobs.submit(spec, origin, kind="compare", group_id=group_id, check_concurrency=i == 0)
            )
    except BaseException:
        for job in reserved:  # all or nothing: what was reserved is refunded at once
            await jobs.cancel(job.id, origin.user_id)
        raise
    try:
        labels = ", ".join(f"**{embeds.model_label(j.model)}**" for j in reserved)
        message: discord.Message | None = None
        try:
            message = await interaction.edit_original_response(
                content=text(locale, "queued", models=labels), view=status_view(reserved[0].id, locale)
            )
        except discord.HTTPException as exc:
            log.warning("compare group %s: could not show the queued status (%s)", group_id, exc)
        if origin.status_message_id is None and message is not None:
            for job in reserved:
                await bot.db.jobs.set_status_message(job.id, message.id)
    finally:
        for job in reserved:
            await jobs.hand_over(job)
    return reserved


# ---------------------------------------------------------------------------------------------- the message


@dataclass
class NewPart:
    """The part a worker is adding: its files (already fitted) and where they came from."""

    job_id: int
    files: list[discord.File]
    filenames: list[str]
    sizes: list[tuple[int, int]]
    provider: str | None = None
    provider_model: str | None = None


class GroupMessageUnavailable(Exception):
    """The shared message can be neither read nor edited (token expired and no channel access, deleted)."""


class GroupMessages:
    """Reads and rewrites a compare group's shared message under the group's lock."""

    def __init__(self, client: discord.Client, groups: SqlGroupRepository, *, clock: Any = None) -> None:
        self.client = client
        self.groups = groups
        self.clock = clock or time.time
        self.owner = f"group-editor-{uuid.uuid4().hex[:12]}"

    async def _lock(self, group_id: int) -> str:
        owner = f"{self.owner}-{uuid.uuid4().hex[:6]}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT
        while not await self.groups.lock(group_id, owner, self.clock(), LOCK_SECONDS):
            if loop.time() > deadline:
                raise GroupMessageUnavailable(f"group {group_id}: its message stayed locked")
            await asyncio.sleep(LOCK_POLL)
        return owner

    def _webhook(self, job: JobRecord) -> discord.Webhook | None:
        from bot.presentation.presenter import TOKEN_LIFETIME

        if not job.interaction_token or self.client.application_id is None:
            return None
        if self.clock() - (job.interaction_created_at or 0) > TOKEN_LIFETIME - 30:
            return None
        return discord.Webhook.partial(self.client.application_id, job.interaction_token, client=self.client)

    async def _fetch(self, job: JobRecord) -> tuple[discord.Message, discord.Webhook | None]:
        webhook = self._webhook(job)
        if webhook is not None:
            try:
                ref: Any = job.status_message_id if job.status_message_id is not None else "@original"
                return await webhook.fetch_message(ref), webhook
            except discord.HTTPException as exc:
                log.info("job %s: group message not readable through the webhook (%s)", job.id, exc.status)
        if job.channel_id is None or job.status_message_id is None:
            raise GroupMessageUnavailable(f"job {job.id}: no group message to edit")
        try:
            channel: Any = self.client.get_channel(job.channel_id) or await self.client.fetch_channel(
                job.channel_id
            )
            return await channel.fetch_message(job.status_message_id), None
        except (discord.HTTPException, AttributeError) as exc:
            raise GroupMessageUnavailable(f"job {job.id}: group message unavailable") from exc

    async def update(
        self,
        job: JobRecord,
        new: NewPart | None = None,
        *,
        failure: PaletteError | None = None,
        before: Callable[[set[int]], Awaitable[None]] | None = None,
    ) -> discord.Message:
        """Rewrite the group's message from the truth, adding ``new`` (this job's image) if given;
        ``failure``: why this job failed (its part says so in the server's language).
        ``before`` runs under the lock with the ids of the jobs whose images the message has (cancelling
        the others then cannot race a part being posted). Returns the edited message. Raises
        :class:`GroupMessageUnavailable`."""
        assert job.group_id is not None
        owner = await self._lock(job.group_id)
        try:
            message, webhook = await self._fetch(job)
            if before is not None:
                await before({j for a in message.attachments if (j := _job_of(a.filename)) is not None})
            members = await self.groups.members(job.group_id)
            # Every other part's image is kept by id. This job's own, if a worker that died before recording
            # its delivery had already posted it, is replaced (the job is charged once, for this one).
            kept = [
                a
                for a in message.attachments
                if _job_of(a.filename) is not None and (new is None or _job_of(a.filename) != new.job_id)
            ]
            # A part that failed earlier keeps the words it was given then (from the error itself).
            said = {e.title: e.description for e in message.embeds if e.title and e.description}
            content, embed_list, view = render(job, members, kept, new, failure=failure, said=said)
            attachments: list[Any] = [*kept, *(new.files if new else [])]
            try:
                if webhook is not None:
                    return await webhook.edit_message(
                        message.id, content=content, embeds=embed_list, attachments=attachments, view=view
                    )
                return await message.edit(
                    content=content, embeds=embed_list, attachments=attachments, view=view
                )
            except discord.HTTPException as exc:
                if exc.code == 40005:  # too large: the caller re-encodes
                    raise
                raise GroupMessageUnavailable(f"job {job.id}: group message not editable") from exc
        finally:
            try:
                await self.groups.unlock(job.group_id, owner)
            except Exception as exc:  # it expires by itself
                log.warning("group %s: could not unlock its message (%s)", job.group_id, type(exc).__name__)


def _job_of(filename: str) -> int | None:
    match = _FILENAME.fullmatch(filename)
    return int(match["job"]) if match else None


def render(
    job: JobRecord,
    members: Sequence[GroupMember],
    kept: Sequence[discord.Attachment],
    new: NewPart | None,
    *,
    failure: PaletteError | None = None,
    said: Mapping[str, str] | None = None,
) -> tuple[str, list[discord.Embed], discord.ui.View]:
    """The shared message: a line with the prompt and progress, one embed per model (its image, or why it
    failed), a row of buttons per posted image, and Cancel while something is still on its way. All of it
    in the server's language (the job's locale), like a single job's result.

    ``failure`` is why ``job`` failed; ``said``: the descriptions the message shows now, by model label (a
    part that failed before keeps its words; the database has only their English)."""
    locale = embeds.job_locale(job)
    said = said or {}
    files: dict[int, list[tuple[str, int | None, int | None]]] = {}
    for att in kept:
        owner = _job_of(att.filename)
        if owner is not None:
            files.setdefault(owner, []).append((att.filename, att.width, att.height))
    if new is not None:
        files[new.job_id] = [(name, w, h) for name, (w, h) in zip(new.filenames, new.sizes, strict=True)]
    embed_list: list[discord.Embed] = []
    view = discord.ui.View(timeout=None)
    done = failed = 0
    pending: list[int] = []
    row = 0
    for member in members:
        label = embeds.model_label(member.model)
        if member.job_id in files:
            done += 1
            for name, width, height in files[member.job_id][:1]:
                embed = discord.Embed(title=label, colour=embeds.BRAND)
                embed.set_image(url=f"attachment://{name}")
                if width and height:
                    embed.add_field(name=t(locale, "Size"), value=f"{width}×{height}", inline=True)
                if new is not None and new.job_id == member.job_id and new.provider:
                    footer = t(
                        locale,
                        "Palette · job {job} · {provider_model} via {provider}",
                        job=member.job_id,
                        provider_model=new.provider_model,
                        provider=new.provider,
                    )
                else:
                    footer = t(locale, "Palette · job {job}", job=member.job_id)
                embed.set_footer(text=footer)
                embed_list.append(embed)
            for action in PART_BUTTONS:
                button = ResultButton(action, member.job_id, locale)
                button.item.label = embeds.truncate(f"{button.item.label} · {label}", 80)
                button.item.row = row
                view.add_item(button)
            row += 1
        elif member.status in ("failed", "cancelled"):
            failed += 1
            if member.status == "cancelled":
                reason = text(locale, "cancelled_part")
            elif failure is not None and member.job_id == job.id:
                reason = text(locale, "failed_part", error=render_text(locale, failure.text))
            elif label in said and not said[label].startswith("⏳"):
                reason = said[label]
            else:  # its words are lost (the message was out of reach): the stored English reason
                error = member.error or t(locale, COMPARE_TEXT["generation_failed"])
                reason = text(locale, "failed_part", error=error)
            embed_list.append(discord.Embed(title=label, description=reason, colour=embeds.ERROR))
        else:
            pending.append(member.job_id)
            embed_list.append(discord.Embed(title=label, description="⏳ …", colour=embeds.BRAND))
    if pending:
        cancel = CancelButton(pending[0], locale)
        cancel.item.row = min(row, 4)
        view.add_item(cancel)
    content = text(
        locale,
        "progress_failed" if failed else "progress",
        prompt=embeds.truncate(embeds.escape(job.prompt.replace("\n", " ")), 300),
        done=done,
        total=len(members),
        failed=failed,
    )
    return content, embed_list[:10], view


async def cancel_group(bot: PaletteBot, interaction: discord.Interaction, job: JobRecord) -> int:
    """Cancel every job of ``job``'s group that is not posted yet; rewrite the message. Returns how many
    images were refunded."""
    group_id = job.group_id
    assert group_id is not None
    await interaction.response.defer()
    refunded = 0
    ran = False

    async def cancel_unposted(posted: set[int]) -> None:
        nonlocal refunded, ran
        ran = True
        for member in await bot.db.groups.members(group_id):
            unfinished = member.status in ("queued", "running") and not member.delivered
            wanted = unfinished and member.job_id not in posted
            if wanted and await bot.jobs.cancel(member.job_id, interaction.user.id):
                refunded += 1

    try:
        await GroupMessages(bot, bot.db.groups).update(job, before=cancel_unposted)
    except (GroupMessageUnavailable, PaletteError, discord.HTTPException) as exc:
        log.info("group %s: could not rewrite its message after cancelling (%s)", group_id, exc)
        if not ran:  # the message is out of reach: cancel without it
            await cancel_unposted(set())
    answer = text(user_locale(interaction), "cancelled", user=interaction.user.mention)
    await interaction.followup.send(answer, ephemeral=True)
    return refunded
