"""Shows a job's life in Discord: one status message edited in place, then the result on it.

The status message is the interaction's original response, edited through the interaction webhook
(stored token), so it works for any job the bot knows about, including ones recovered after a restart
while the token is valid. When the token has expired or the message is gone, the result is posted in the
channel with a mention instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import PaletteError
from bot.generation import GenerationOutcome
from bot.images import EncodedImage, fit_for_upload_async, sha256_hex_async
from bot.jobs.service import DeliveredImage, Delivery
from bot.presentation import embeds
from bot.presentation.views import result_view
from bot.storage import JobRecord

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
TOKEN_LIFETIME = 15 * 60
MAX_FILES_PER_MESSAGE = 10
UPLOAD_OVERHEAD = 64 * 1024
MIN_IMAGE_BUDGET = 64 * 1024
UPLOAD_ATTEMPTS = 3
ENTITY_TOO_LARGE = 40005
# How long a finished job waits for the command handler to report its status message.
STATUS_WAIT = 5.0


class DiscordPresenter:
    def __init__(self, bot: PaletteBot) -> None:
        self.bot = bot
        # Which stage each job's status message shows (1 generating, 2 result, 3 failure), so a late
        # edit never overwrites a later stage (edits run concurrently).
        self._stage: dict[int, int] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        # A job can start (or even finish) before the command handler has shown "Queued" and learnt
        # the status message id: the id arrives through status_ready().
        self._status_ids: dict[int, int] = {}
        self._ready: dict[int, asyncio.Event] = {}
        self._started_shown: set[int] = set()
        self._encoders = asyncio.Semaphore(os.cpu_count() or 2)
        self._background: set[asyncio.Task[None]] = set()

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _webhook(self, job: JobRecord) -> discord.Webhook | None:
        if not job.interaction_token or self.bot.application_id is None:
            return None
        created = job.interaction_created_at or 0
        if time.time() - created > TOKEN_LIFETIME - 30:
            return None
        return discord.Webhook.partial(self.bot.application_id, job.interaction_token, client=self.bot)

    async def status_ready(self, job: JobRecord, message_id: int | None) -> None:
        """The command handler showed the status message (``None``: it could not)."""
        if message_id is not None:
            await self.bot.db.jobs.set_status_message(job.id, message_id)
        async with self._lock(job.id):
            if message_id is not None:
                self._status_ids[job.id] = message_id
            self._ready.setdefault(job.id, asyncio.Event()).set()
            if self._stage.get(job.id) == 1 and job.id not in self._started_shown:
                # It started before we knew where to say so: replace "Queued" now.
                await self._show_started(job)

    async def _show_started(self, job: JobRecord) -> None:
        webhook = self._webhook(job)
        message_id = self._status_ids.get(job.id) or job.status_message_id
        if webhook is None or message_id is None:
            return
        self._started_shown.add(job.id)
        try:
            await webhook.edit_message(message_id, content=embeds.started_text(job, time.time()))
        except discord.HTTPException as exc:  # progress is best effort
            log.info("job %s: could not show progress (%s)", job.id, exc)

    def show_queued(self, job: JobRecord, content: str) -> None:
        """Edit the status message to "queued" in the background, unless the job has moved on."""

        async def edit() -> None:
            async with self._lock(job.id):
                if self._stage.get(job.id, -1) != 0:  # started, finished (forgotten) or never queued
                    return
                webhook = self._webhook(job)
                if webhook is None or job.status_message_id is None:
                    return
                try:
                    await webhook.edit_message(job.status_message_id, content=content)
                except discord.HTTPException as exc:  # progress is best effort
                    log.info("job %s: could not show the queued status (%s)", job.id, exc)

        self._stage.setdefault(job.id, 0)
        task = asyncio.create_task(edit())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _status_message_id(self, job: JobRecord, *, wait: bool) -> int | None:
        """The status message to edit; with ``wait``, give the command handler a moment to report it."""
        known = job.status_message_id or self._status_ids.get(job.id)
        if known or not job.interaction_token:
            return known
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.setdefault(job.id, asyncio.Event()).wait(), STATUS_WAIT)
        return self._status_ids.get(job.id)

    # ------------------------------------------------------------------ JobPresenter

    async def started(self, job: JobRecord) -> None:
        async with self._lock(job.id):
            if self._stage.get(job.id, 0) >= 1:
                return
            self._stage[job.id] = 1
            await self._show_started(job)

    async def failed(self, job: JobRecord, error: PaletteError) -> None:
        text = embeds.failure_text(error)
        try:
            message_id = await self._status_message_id(job, wait=True)
            async with self._lock(job.id):
                self._stage[job.id] = 3
                webhook = self._webhook(job)
                if webhook is not None and message_id is not None:
                    try:
                        await webhook.edit_message(message_id, content=text, embed=None, view=None)
                        return
                    except discord.HTTPException as exc:
                        log.info("job %s: status edit failed (%s); posting in channel", job.id, exc.status)
                await self._channel_send(job, content=f"<@{job.user_id}> {text}")
        finally:
            self._forget(job.id)

    async def deliver(self, job: JobRecord, outcome: GenerationOutcome) -> Delivery:
        limit = int(embeds.job_params(job).get("upload_limit") or DEFAULT_UPLOAD_LIMIT)  # type: ignore[call-overload]
        # Discord counts the whole request against the limit: share it between the images, keeping room
        # for the JSON payload and multipart framing.
        budget = max(MIN_IMAGE_BUDGET, (limit - UPLOAD_OVERHEAD) // max(1, len(outcome.images)))
        view = result_view(job.id)
        message: discord.Message | None = None
        files: list[tuple[EncodedImage, str]] = []
        try:
            for attempt in range(UPLOAD_ATTEMPTS):
                fitted = await asyncio.gather(*(self._fit(image.data, budget) for image in outcome.images))
                names = [f"palette-{job.id}-{i}.{f.extension}" for i, f in enumerate(fitted, 1)]
                embed = embeds.result_embed(
                    job,
                    provider=outcome.provider,
                    provider_model=outcome.provider_model,
                    sizes=[(f.width, f.height) for f in fitted],
                    seconds=outcome.latency_s,
                    failed=outcome.failed,
                )
                files = list(zip(fitted, names, strict=True))
                try:
                    message = await self._post_result(job, embed=embed, view=view, files=files)
                    break
                except discord.HTTPException as exc:
                    # 40005: the estimate was wrong (a proxy, a smaller limit); re-encode smaller and retry.
                    if exc.code != ENTITY_TOO_LARGE or attempt == UPLOAD_ATTEMPTS - 1:
                        raise
                    log.info("job %s: upload too large at %d bytes/image; retrying smaller", job.id, budget)
                    budget = max(MIN_IMAGE_BUDGET, max(len(f.data) for f, _ in files) // 2)
        finally:
            self._forget(job.id)
        if message is None:
            raise PaletteError("The images were made but could not be posted in this channel.")
        hashes = await asyncio.gather(*(sha256_hex_async(f.data) for f, _ in files))
        by_name = {a.filename: a for a in message.attachments}
        delivered = [
            DeliveredImage(
                attachment_id=by_name[name].id if name in by_name else None,
                filename=name,
                sha256=digest,
                width=f.width,
                height=f.height,
                mime_type=f.mime_type,
                size_bytes=len(f.data),
            )
            for (f, name), digest in zip(files, hashes, strict=True)
        ]
        return Delivery(message_id=message.id, channel_id=message.channel.id, images=delivered)

    async def _fit(self, data: bytes, budget: int) -> EncodedImage:
        """Re-encoding decodes the whole image (50 MB of pixels at 4K): at most one per core at a time."""
        if len(data) <= budget:
            return await fit_for_upload_async(data, limit_bytes=budget)  # header only, no decoding
        async with self._encoders:
            return await fit_for_upload_async(data, limit_bytes=budget)

    async def _post_result(
        self,
        job: JobRecord,
        *,
        embed: discord.Embed,
        view: discord.ui.View,
        files: list[tuple[EncodedImage, str]],
    ) -> discord.Message | None:
        """Put the result on the status message; if that is impossible, post it in the channel."""

        def attachments() -> list[discord.File]:
            return [discord.File(io.BytesIO(f.data), filename=name) for f, name in files][
                :MAX_FILES_PER_MESSAGE
            ]

        message_id = await self._status_message_id(job, wait=True)
        async with self._lock(job.id):
            self._stage[job.id] = 2
            webhook = self._webhook(job)
            if webhook is not None and message_id is not None:
                try:
                    return await webhook.edit_message(
                        message_id, content=None, embed=embed, attachments=attachments(), view=view
                    )
                except discord.HTTPException as exc:
                    if exc.code == ENTITY_TOO_LARGE:
                        raise
                    # Expired token (50027), unknown webhook/message (10015/10008): use the channel.
                    log.info("job %s: status message not editable (%s); posting in channel", job.id, exc.code)
            return await self._channel_send(
                job, content=f"<@{job.user_id}>", embed=embed, files=attachments(), view=view
            )

    # ------------------------------------------------------------------ helpers

    async def _channel_send(self, job: JobRecord, **kwargs: Any) -> discord.Message | None:
        """Post in the job's channel with a mention; in a DM when the channel is gone or closed to us."""
        mentions = discord.AllowedMentions(users=[discord.Object(job.user_id)], everyone=False, roles=False)
        channel: Any = None
        if job.channel_id is not None:
            channel = self.bot.get_channel(job.channel_id)
            if channel is None:
                with contextlib.suppress(discord.HTTPException):
                    channel = await self.bot.fetch_channel(job.channel_id)
        if isinstance(channel, discord.abc.Messageable):
            try:
                return await channel.send(allowed_mentions=mentions, **kwargs)
            except discord.Forbidden as exc:
                log.info(
                    "job %s: cannot post in channel %s (%s); sending a DM", job.id, job.channel_id, exc.code
                )
                note = (
                    "I couldn't post in that channel (missing permission: Send Messages, Attach Files or "
                    "Embed Links), so here it is."
                )
                kwargs["content"] = f"{note}\n{kwargs.get('content') or ''}".strip()
        user = await self.bot.fetch_user(job.user_id)
        dm = await user.create_dm()
        return await dm.send(allowed_mentions=mentions, **kwargs)

    def _forget(self, job_id: int) -> None:
        for state in (self._stage, self._locks, self._status_ids, self._ready):
            state.pop(job_id, None)
        self._started_shown.discard(job_id)
