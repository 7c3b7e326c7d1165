"""Shows a job's life in Discord: one status message edited in place, then the result on it.

The presenter is the worker's (:class:`bot.jobs.worker.Worker`): it needs only Discord's REST API (a
client that logged in; no gateway connection) and the job's row, so it runs in whichever process
claimed the job. The status message is the interaction's original response, edited through the
interaction webhook (the token stored with the job) while the token is valid; it is named by the id in
the job row (``@original`` when the command handler could not learn it). When the token has expired or
the message is gone, the result is posted in the channel with a mention instead, and in a DM when the
channel is closed to the bot.

Stages: the command handler shows "queued" before it hands the job over to the queue
(:meth:`bot.jobs.service.JobService.hand_over`); no worker can claim it earlier, so a worker's
"generating", result or failure can never be overwritten by the "queued" edit. Within the worker, edits
of one job are serialized and never go back to an earlier stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import discord

from bot.errors import PaletteError
from bot.generation import GenerationOutcome
from bot.i18n import render, t
from bot.jobs.service import DeliveredImage, Delivery
from bot.jobs.spool import EncoderPool, ImageSpool, SpooledImage, Upload, prepare_upload
from bot.presentation import embeds
from bot.presentation.compare import GroupMessages, GroupMessageUnavailable, NewPart
from bot.presentation.views import result_view, status_view
from bot.storage import JobRecord
from bot.storage.groups import SqlGroupRepository

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
TOKEN_LIFETIME = 15 * 60
MAX_FILES_PER_MESSAGE = 10
UPLOAD_OVERHEAD = 64 * 1024
MIN_IMAGE_BUDGET = 64 * 1024
UPLOAD_ATTEMPTS = 3
ENTITY_TOO_LARGE = 40005
#: The interaction's original response, for the webhook's message routes.
ORIGINAL = "@original"

STARTED, RESULT, FAILURE = 1, 2, 3
#: Finished jobs whose last stage is remembered (see DiscordPresenter._forget).
STAGES_KEPT = 4096


class DiscordPresenter:
    def __init__(
        self,
        client: discord.Client,
        *,
        spool: ImageSpool,
        encoders: EncoderPool | None = None,
        groups: SqlGroupRepository | None = None,
    ) -> None:
        self.client = client
        self.spool = spool
        self.encoders = encoders
        # /compare: a group's jobs add their parts to one shared message (see bot.presentation.compare).
        self.group_messages = GroupMessages(client, groups) if groups is not None else None
        # Which stage each job's status message shows, so a late edit never overwrites a later stage
        # (this worker's edits of one job run concurrently: "generating" is shown in the background).
        self._stage: dict[int, int] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    # ------------------------------------------------------------------ the job row

    def _webhook(self, job: JobRecord) -> discord.Webhook | None:
        if not job.interaction_token or self.client.application_id is None:
            return None
        created = job.interaction_created_at or 0
        if time.time() - created > TOKEN_LIFETIME - 30:
            return None
        return discord.Webhook.partial(self.client.application_id, job.interaction_token, client=self.client)

    @staticmethod
    def _status_ref(job: JobRecord) -> Any:
        return job.status_message_id if job.status_message_id is not None else ORIGINAL

    # ------------------------------------------------------------------ JobPresenter

    async def started(self, job: JobRecord) -> None:
        if job.group_id is not None:  # the shared message shows the whole group's progress
            return
        async with self._lock(job.id):
            if self._stage.get(job.id, 0) >= STARTED:
                return
            self._stage[job.id] = STARTED
            webhook = self._webhook(job)
            if webhook is None:
                return
            try:
                await webhook.edit_message(
                    self._status_ref(job),
                    content=embeds.started_text(job, time.time(), embeds.job_locale(job)),
                    view=status_view(job.id, embeds.job_locale(job)),
                )
            except discord.HTTPException as exc:  # progress is best effort
                log.info("job %s: could not show progress (%s)", job.id, exc)

    async def failed(self, job: JobRecord, error: PaletteError) -> None:
        text = embeds.failure_text(error, embeds.job_locale(job))
        if job.group_id is not None and self.group_messages is not None:
            # One model of a compare failed: its part of the shared message says so (it is settled).
            try:
                await self.group_messages.update(job, failure=error)
                return
            except (GroupMessageUnavailable, discord.HTTPException) as exc:
                log.info("job %s: could not show the failure on its group's message (%s)", job.id, exc)
                label = embeds.model_label(job.model)
                await self._channel_send(job, content=f"<@{job.user_id}> **{label}**: {text}")
                return
        try:
            async with self._lock(job.id):
                self._stage[job.id] = FAILURE
                webhook = self._webhook(job)
                if webhook is not None:
                    try:
                        await webhook.edit_message(self._status_ref(job), content=text, embed=None, view=None)
                        return
                    except discord.HTTPException as exc:
                        log.info("job %s: status edit failed (%s); posting in channel", job.id, exc.status)
                await self._channel_send(job, content=f"<@{job.user_id}> {text}")
        finally:
            self._forget(job.id)

    async def notice(self, job: JobRecord, note: PaletteError) -> None:
        """A line after the result (it stays on the status message): a followup, else in the channel."""
        text = "⚠️ " + render(embeds.job_locale(job), note.text)
        webhook = self._webhook(job)
        if webhook is not None:
            try:
                await webhook.send(content=text, wait=True)
                return
            except discord.HTTPException as exc:
                log.info("job %s: could not send a followup (%s); posting in channel", job.id, exc.status)
        await self._channel_send(job, content=f"<@{job.user_id}> {text}")

    async def deliver(
        self, job: JobRecord, outcome: GenerationOutcome, images: Sequence[SpooledImage]
    ) -> Delivery:
        if job.group_id is not None and self.group_messages is not None:
            try:
                return await self._deliver_part(job, outcome, images)
            except GroupMessageUnavailable as exc:  # posted on its own in the channel instead
                log.info("job %s: %s; posting it on its own", job.id, exc)
        limit = int(embeds.job_params(job).get("upload_limit") or DEFAULT_UPLOAD_LIMIT)  # type: ignore[call-overload]
        # Discord counts the whole request against the limit: share it between the images, keeping room
        # for the JSON payload and multipart framing.
        budget = max(MIN_IMAGE_BUDGET, (limit - UPLOAD_OVERHEAD) // max(1, len(images)))
        locale = embeds.job_locale(job)
        view = result_view(job.id, locale)
        message: discord.Message | None = None
        uploads: list[Upload] = []
        names: list[str] = []
        try:
            for attempt in range(UPLOAD_ATTEMPTS):
                await self.spool.discard(uploads)
                uploads = await self._prepare(images, budget)
                names = [f"palette-{job.id}-{i}.{u.fitted.extension}" for i, u in enumerate(uploads, 1)]
                embed = embeds.result_embed(
                    job,
                    provider=outcome.provider,
                    provider_model=outcome.provider_model,
                    sizes=[(u.fitted.width, u.fitted.height) for u in uploads],
                    seconds=outcome.latency_s,
                    failed=outcome.failed,
                    locale=locale,
                )
                try:
                    message = await self._post_result(
                        job, embed=embed, view=view, uploads=uploads, names=names
                    )
                    break
                except discord.HTTPException as exc:
                    # 40005: the estimate was wrong (a proxy, a smaller limit); re-encode smaller and retry.
                    if exc.code != ENTITY_TOO_LARGE or attempt == UPLOAD_ATTEMPTS - 1:
                        raise
                    log.info("job %s: upload too large at %d bytes/image; retrying smaller", job.id, budget)
                    budget = max(MIN_IMAGE_BUDGET, max(u.fitted.size_bytes for u in uploads) // 2)
            if message is None:
                raise PaletteError("The images were made but could not be posted in this channel.")
            return delivery_of(message, uploads, names)
        finally:
            await self.spool.discard(uploads)
            self._forget(job.id)

    async def _deliver_part(
        self, job: JobRecord, outcome: GenerationOutcome, images: Sequence[SpooledImage]
    ) -> Delivery:
        """Add this job's image to its compare group's shared message (under the group's lock)."""
        assert self.group_messages is not None
        limit = int(embeds.job_params(job).get("upload_limit") or DEFAULT_UPLOAD_LIMIT)  # type: ignore[call-overload]
        budget = max(MIN_IMAGE_BUDGET, (limit - UPLOAD_OVERHEAD) // max(1, len(images)))
        uploads: list[Upload] = []
        try:
            uploads = await self._prepare(images, budget)
            names = [f"palette-{job.id}-{i}.{u.fitted.extension}" for i, u in enumerate(uploads, 1)]
            files = [
                discord.File(io.BytesIO(u.data), filename=name)
                if u.data is not None
                else discord.File(str(u.path), filename=name)
                for u, name in zip(uploads, names, strict=True)
            ]
            part = NewPart(
                job.id,
                files,
                names,
                [(u.fitted.width, u.fitted.height) for u in uploads],
                provider=outcome.provider,
                provider_model=outcome.provider_model,
            )
            async with self._lock(job.id):
                self._stage[job.id] = RESULT
                message = await self.group_messages.update(job, part)
            return delivery_of(message, uploads, names)
        finally:
            await self.spool.discard(uploads)
            self._forget(job.id)

    async def _prepare(self, images: Sequence[SpooledImage], budget: int) -> list[Upload]:
        """Every image fitted into ``budget`` bytes (re-encoding in the encoder processes)."""
        results = await asyncio.gather(
            *(prepare_upload(self.spool, self.encoders, image, limit_bytes=budget) for image in images),
            return_exceptions=True,
        )
        uploads = [r for r in results if isinstance(r, Upload)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.spool.discard(uploads)
            raise errors[0]
        return uploads

    async def _post_result(
        self,
        job: JobRecord,
        *,
        embed: discord.Embed,
        view: discord.ui.View,
        uploads: list[Upload],
        names: list[str],
    ) -> discord.Message | None:
        """Put the result on the status message; if that is impossible, post it in the channel."""

        def attachments() -> list[discord.File]:
            # Spooled uploads are streamed from their files; the rest from memory.
            return [
                discord.File(io.BytesIO(u.data), filename=name)
                if u.data is not None
                else discord.File(str(u.path), filename=name)
                for u, name in zip(uploads, names, strict=True)
            ][:MAX_FILES_PER_MESSAGE]

        async with self._lock(job.id):
            self._stage[job.id] = RESULT
            # A compare job posting on its own must not overwrite its group's shared message.
            webhook = self._webhook(job) if job.group_id is None else None
            if webhook is not None:
                try:
                    return await webhook.edit_message(
                        self._status_ref(job), content=None, embed=embed, attachments=attachments(), view=view
                    )
                except discord.HTTPException as exc:
                    if exc.code == ENTITY_TOO_LARGE:
                        raise
                    # Expired token (50027), unknown webhook/message (10015/10008): use the channel.
                    log.info("job %s: status message not editable (%s); posting in channel", job.id, exc.code)
            return await self._channel_send(
                job, content=f"<@{job.user_id}>", embed=embed, make_files=attachments, view=view
            )

    # ------------------------------------------------------------------ helpers

    async def _channel_send(
        self, job: JobRecord, *, make_files: Callable[[], list[discord.File]] | None = None, **kwargs: Any
    ) -> discord.Message | None:
        """Post in the job's channel with a mention; in a DM when the channel is gone or closed to us.

        ``make_files`` makes the attachments afresh for each attempt (a sent file is closed)."""
        mentions = discord.AllowedMentions(users=[discord.Object(job.user_id)], everyone=False, roles=False)
        channel: Any = None
        if job.channel_id is not None:
            channel = self.client.get_channel(job.channel_id)
            if channel is None:
                with contextlib.suppress(discord.HTTPException):
                    channel = await self.client.fetch_channel(job.channel_id)
        if isinstance(channel, discord.abc.Messageable):
            try:
                if make_files is not None:
                    kwargs["files"] = make_files()
                return await channel.send(allowed_mentions=mentions, **kwargs)
            except discord.Forbidden as exc:
                log.info(
                    "job %s: cannot post in channel %s (%s); sending a DM", job.id, job.channel_id, exc.code
                )
                note = t(
                    embeds.job_locale(job),
                    "I couldn't post in that channel (missing permission: Send Messages, Attach Files or "
                    "Embed Links), so here it is.",
                )
                kwargs["content"] = f"{note}\n{kwargs.get('content') or ''}".strip()
        if make_files is not None:
            kwargs["files"] = make_files()
        user = await self.client.fetch_user(job.user_id)
        dm = await user.create_dm()
        return await dm.send(allowed_mentions=mentions, **kwargs)

    def _forget(self, job_id: int) -> None:
        """The job's last edit is done. Its stage is kept a while (a late "generating" edit still running
        in the background must see it); the rest goes."""
        self._locks.pop(job_id, None)
        while len(self._stage) > STAGES_KEPT:
            del self._stage[next(iter(self._stage))]


def delivery_of(message: discord.Message, uploads: Sequence[Upload], names: Sequence[str]) -> Delivery:
    """What was posted: each upload with the attachment id Discord gave it (matched by file name)."""
    by_name = {a.filename: a for a in message.attachments}
    delivered = [
        DeliveredImage(
            attachment_id=by_name[name].id if name in by_name else None,
            filename=name,
            sha256=u.fitted.sha256,
            width=u.fitted.width,
            height=u.fitted.height,
            mime_type=u.fitted.mime_type,
            size_bytes=u.fitted.size_bytes,
        )
        for u, name in zip(uploads, names, strict=True)
    ]
    return Delivery(message_id=message.id, channel_id=message.channel.id, images=delivered)
