"""Interaction flows shared by the cogs and the result buttons.

Order matters for Discord's 3-second deadline: cheap validation first (answered ephemerally, costs
nothing), then the interaction is deferred before any I/O (downloads, database), then references are
checked, quota is reserved and the job is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import discord

from bot.catalog import get_model
from bot.errors import (
    InvalidImage,
    PaletteError,
    ResultDownloadError,
    UnsupportedOption,
    ValidationError,
)
from bot.generation import GenerationSpec, load_references
from bot.i18n import Joined, Number, Size, Text, msg, t
from bot.jobs.service import JobOrigin
from bot.moderation import modlog
from bot.presentation import embeds, moderation
from bot.presentation.locales import server_locale, user_locale
from bot.presentation.views import PromptModal, status_view
from bot.providers.base import Reference
from bot.storage import JobRecord

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".heic", ".heif")

#: Image URLs from messages (hosts their authors chose) that one user may have downloading at once;
#: also the most taken from one message.
URL_FETCHES_PER_USER = 4


class Restarting(PaletteError):
    def __init__(self) -> None:
        super().__init__("Palette is restarting; please try again in a minute.")


class Flows:
    def __init__(self, bot: PaletteBot) -> None:
        self.bot = bot
        #: Image URLs being downloaded per user (see :meth:`url_fetches`).
        self._url_fetches: Counter[int] = Counter()

    # ------------------------------------------------------------------ helpers

    def origin(self, interaction: discord.Interaction) -> JobOrigin:
        user = interaction.user
        roles = tuple(r.id for r in user.roles) if isinstance(user, discord.Member) else ()
        channel = interaction.channel
        nsfw = bool(getattr(channel, "nsfw", False))
        return JobOrigin(
            user_id=user.id,
            channel_id=interaction.channel_id,
            guild_id=interaction.guild_id,
            interaction_token=interaction.token,
            interaction_created_at=interaction.created_at.timestamp(),
            upload_limit=upload_limit(interaction),
            role_ids=roles,
            nsfw_channel=nsfw,
            status_message_id=interaction.extras.get("status_message_id"),
            locale=interaction.extras.get("locale"),
        )

    def check_attachments(self, attachments: Sequence[discord.Attachment]) -> None:
        """Cheap checks from Discord's metadata, before deferring (the real type is sniffed later)."""
        cap = self.bot.settings.max_reference_bytes
        for att in attachments:
            if att.size > cap:
                raise InvalidImage(
                    "`{filename}` is {size}; images up to {limit} are accepted.",
                    filename=att.filename,
                    size=t_size(att.size),
                    limit=Size(cap, whole=True),
                )

    async def download(
        self, attachments: Sequence[discord.Attachment], urls: Sequence[str] = ()
    ) -> list[tuple[bytes, str | None]]:
        """Fetch reference bytes (Discord attachments through discord.py, other URLs with the SSRF guard)."""

        async def one_attachment(att: discord.Attachment) -> tuple[bytes, str | None]:
            try:
                return await att.read(), att.url
            except discord.HTTPException as exc:
                raise InvalidImage(
                    "`{filename}` could not be downloaded from Discord.", filename=att.filename
                ) from exc

        async def one_url(url: str) -> tuple[bytes, str | None]:
            # The reference downloader: its own small pool, the reference size cap and an overall deadline.
            try:
                data, _ = await self.bot.downloader.fetch(url)
            except PaletteError as exc:
                if exc.message == ResultDownloadError.default_message:
                    raise InvalidImage("An image in that message could not be downloaded.") from exc
                raise InvalidImage(
                    "An image in that message could not be downloaded. {reason}", reason=exc.text
                ) from exc
            return data, url

        return list(
            await asyncio.gather(*(one_attachment(a) for a in attachments), *(one_url(u) for u in urls))
        )

    @contextlib.contextmanager
    def url_fetches(self, user_id: int, count: int) -> Iterator[None]:
        """Hold ``count`` of the user's URL-download slots, or refuse (before anything is deferred or
        reserved) when the user already has :data:`URL_FETCHES_PER_USER` in flight."""
        if count <= 0:
            yield
            return
        if self._url_fetches[user_id] + count > URL_FETCHES_PER_USER:
            raise ValidationError(
                "Palette is still downloading images from messages for you. "
                "Wait until those are done, then try again."
            )
        self._url_fetches[user_id] += count
        try:
            yield
        finally:
            self._url_fetches[user_id] -= count
            if self._url_fetches[user_id] <= 0:
                del self._url_fetches[user_id]

    async def defer(self, interaction: discord.Interaction) -> None:
        if not interaction.response.is_done():
            callback = await interaction.response.defer(thinking=True)
            # Discord names the "thinking" message it created: the job's status message from the start.
            if callback is not None and callback.message_id is not None:
                interaction.extras["status_message_id"] = callback.message_id
            # The error handler replaces a public "thinking" message with an ephemeral error.
            interaction.extras["public_defer"] = True

    # ------------------------------------------------------------------ starting a job

    async def start_job(
        self,
        interaction: discord.Interaction,
        spec: GenerationSpec,
        *,
        kind: str = "imagine",
        attachments: Sequence[discord.Attachment] = (),
        urls: Sequence[str] = (),
        blobs: Sequence[tuple[bytes, str | None]] = (),
        parent_job_id: int | None = None,
    ) -> JobRecord | None:
        jobs = self.bot.jobs
        if not jobs.accepting:
            raise Restarting()
        check_bot_permissions(interaction)
        # Server policy (issue 4): ban, DMs, channel, default model, strict safety outside NSFW channels.
        n_refs = len(attachments) + len(urls) + len(blobs)
        gate, spec = await moderation.admit(
            self.bot, interaction, spec, kind=kind, parent_job_id=parent_job_id, references=n_refs
        )
        # The job's public messages (status, result, buttons) speak the server's language.
        interaction.extras["locale"] = server_locale(interaction, gate.policy)
        # Validate options with placeholder references, so a wrong ratio is answered before we defer.
        placeholder = tuple(Reference(mime_type="image/png", url="about:blank") for _ in range(n_refs))
        plan = jobs.plan(replace(spec, references=placeholder), await jobs.access_for(interaction.guild_id))
        # Model, resolution and count allowed here; then the prompt filter (logged, counts to auto-ban).
        await moderation.check_planned(self.bot, gate, plan, spec.prompt)
        self.check_attachments(attachments)
        await self.defer(interaction)
        settings = self.bot.settings
        if n_refs:
            fetched = list(blobs) + await self.download(attachments, urls)
            references = await load_references(
                fetched, max_bytes=settings.max_reference_bytes, max_pixels=settings.max_reference_pixels
            )
            spec = replace(spec, references=references)
        job = await jobs.submit(spec, self.origin(interaction), kind=kind, parent_job_id=parent_job_id)
        try:
            await self.show_queued(interaction, job)
        finally:
            # Only now can a worker claim it: "queued" can never land after a worker's stages.
            await jobs.hand_over(job)
        return job

    async def show_queued(self, interaction: discord.Interaction, job: JobRecord) -> None:
        """Say "queued" (with the place in line) on the status message, and store the message's id with
        the job when the deferral did not name it."""
        locale = embeds.job_locale(job)
        text = embeds.queued_text(job, await self.bot.jobs.position(job.id), locale)
        message: discord.Message | None = None
        try:
            message = await interaction.edit_original_response(content=text, view=status_view(job.id, locale))
        except discord.HTTPException as exc:  # progress is best effort
            log.warning("job %s: could not show the queued status (%s)", job.id, exc)
            if job.status_message_id is None:
                with contextlib.suppress(discord.HTTPException):
                    # The "thinking" message still exists: remember it so the result replaces it.
                    message = await interaction.original_response()
        if job.status_message_id is None and message is not None:
            await self.bot.db.jobs.set_status_message(job.id, message.id)

    # ------------------------------------------------------------------ cancel

    async def cancel_action(self, interaction: discord.Interaction, job_id: int) -> None:
        """The Cancel button of a status message: the requester or a moderator takes the request back.

        The id in the button is checked like a result button's (the job must belong to this server and
        the clicked message must be its status message), so a forged id cancels nothing."""
        try:
            job = await self.bot.db.jobs.get_job(job_id)
            if job is None:
                raise ValidationError(embeds.CANCEL_TEXT["unknown"])
            message = interaction.message
            if (
                message is None
                or job.guild_id != interaction.guild_id
                or job.status_message_id is None
                or message.id != job.status_message_id
            ):
                raise NotThisResult()
            user = interaction.user
            if user.id != job.user_id:
                policy = await self.bot.moderation.policy(interaction.guild_id)
                if not moderation.is_moderator(interaction, policy):
                    raise ValidationError(embeds.CANCEL_TEXT["not_allowed"])
            if job.group_id is not None:  # /compare: the models not posted yet
                from bot.presentation.compare import cancel_group  # compare builds on this module

                await cancel_group(self.bot, interaction, job)
                return
            if job.finished:
                key = "already_cancelled" if job.status == "cancelled" else "already_done"
                raise ValidationError(embeds.CANCEL_TEXT[key])
            if not await self.bot.jobs.cancel(job.id, user.id):
                current = await self.bot.db.jobs.get_job(job.id)
                if current is not None and current.status == "cancelled":
                    raise ValidationError(embeds.CANCEL_TEXT["already_cancelled"])
                posted = current is not None and current.delivery is not None
                raise ValidationError(embeds.CANCEL_TEXT["posted" if posted else "already_done"])
            text = embeds.cancelled_text(user.id, images=job.reserved, locale=embeds.job_locale(job))
            await interaction.response.edit_message(content=text, embed=None, attachments=[], view=None)
        except Exception as exc:
            await self.bot.report_error(interaction, exc)

    # ------------------------------------------------------------------ result buttons

    async def result_action(self, interaction: discord.Interaction, action: str, job_id: int) -> None:
        try:
            job = await self.bot.db.jobs.get_job(job_id)
            if job is None:
                raise ValidationError("That generation is no longer in Palette's records.")
            await self.check_clicked_result(interaction, job)
            if action == "delete":
                await self.delete_result(interaction, job)
            elif action == "report":
                await moderation.report_result(self.bot, interaction, job)
            elif action == "reroll":
                await self.reroll(interaction, job)
            elif action == "edit":
                await self.open_edit_modal(interaction, job)
            elif action == "upscale":
                await self.upscale(interaction, job)
        except Exception as exc:
            await self.bot.report_error(interaction, exc)

    async def check_clicked_result(self, interaction: discord.Interaction, job: JobRecord) -> None:
        """Defence in depth before a result button acts: its job must belong to the server (or DM) of
        the click, and the clicked message must be one of the job's result messages.

        The job id comes from the button's ``custom_id``; discord.py already ignores a click whose
        ``custom_id`` is not on the clicked message, and this refuses a button that is on a message but
        names another job (another server's prompt, another message to delete)."""
        message = interaction.message
        if message is None:
            raise NotThisResult()
        # Message ids are unique across Discord: a match means this is the job's own message.
        is_result = message.id in (job.status_message_id, job.result_message_id)
        if not is_result:
            is_result = any(
                r.message_id == message.id for r in await self.bot.db.history.results_for_job(job.id)
            )
        if job.guild_id != interaction.guild_id:
            # A server's result can have been delivered to its author's DMs (the channel was closed to us).
            in_authors_dm = interaction.guild_id is None and interaction.user.id == job.user_id
            if not (in_authors_dm and is_result):
                raise NotThisResult()
        if not is_result:
            if not job.finished:  # posted a moment ago: its message id is written right after
                raise ValidationError("That result is still being saved; try again in a moment.")
            raise NotThisResult()

    def spec_from_job(self, job: JobRecord, **changes: object) -> GenerationSpec:
        params = embeds.job_params(job)
        spec = GenerationSpec(
            model=job.model,
            prompt=job.prompt,
            aspect_ratio=params.get("aspect_ratio"),  # type: ignore[arg-type]
            resolution=params.get("resolution"),
            count=job.count,
            seed=None,  # type: ignore[arg-type]
        )
        return replace(spec, **changes)  # type: ignore[arg-type]

    @staticmethod
    def job_images(interaction: discord.Interaction, job: JobRecord) -> list[discord.Attachment]:
        """The clicked message's images of ``job`` (a /compare message carries every model's image)."""
        message = interaction.message
        images = [a for a in (message.attachments if message else []) if is_image_attachment(a)]
        if job.group_id is not None:
            images = [a for a in images if a.filename.startswith(f"palette-{job.id}-")]
        return images

    async def reroll(self, interaction: discord.Interaction, job: JobRecord) -> None:
        """Same prompt and options, a fresh roll; charged to whoever clicked."""
        await self.start_job(interaction, self.spec_from_job(job), kind="reroll", parent_job_id=job.id)

    async def open_edit_modal(self, interaction: discord.Interaction, job: JobRecord) -> None:
        images = self.job_images(interaction, job)
        if not images:
            raise ValidationError("This message has no image left to edit.")
        model = get_model(job.model)
        if model is None or not model.supports_edit:
            raise UnsupportedOption("This model cannot edit images.")

        async def submitted(modal_interaction: discord.Interaction, prompt: str, index: int) -> None:
            if not 1 <= index <= len(images):
                raise ValidationError("Pick an image number from 1 to {count}.", count=len(images))
            spec = self.spec_from_job(job, prompt=prompt, count=1)
            await self.start_job(
                modal_interaction, spec, kind="edit", attachments=[images[index - 1]], parent_job_id=job.id
            )

        await interaction.response.send_modal(
            PromptModal(
                title=t(user_locale(interaction), "Edit this image"),
                on_submit_prompt=submitted,
                max_length=self.bot.settings.max_prompt_length,
                image_count=len(images),
                locale=user_locale(interaction),
            )
        )

    async def upscale(self, interaction: discord.Interaction, job: JobRecord) -> None:
        """Re-render the first image at 4K with itself as the reference, where the model allows it."""
        model = get_model(job.model)
        if model is None or "4K" not in model.resolutions or not model.supports_edit:
            raise UnsupportedOption("{model} cannot upscale to 4K.", model=embeds.model_label(job.model))
        images = self.job_images(interaction, job)
        if not images:
            raise ValidationError("This message has no image left to upscale.")
        prompt = (
            f"Upscale this image to 4K. Keep every detail, composition and colour exactly. ({job.prompt})"
        )
        spec = self.spec_from_job(
            job, prompt=prompt[: self.bot.settings.max_prompt_length], resolution="4K", count=1
        )
        await self.start_job(interaction, spec, kind="upscale", attachments=[images[0]], parent_job_id=job.id)

    async def delete_result(self, interaction: discord.Interaction, job: JobRecord) -> None:
        user = interaction.user
        policy = await self.bot.moderation.policy(interaction.guild_id)
        by_moderator = user.id != job.user_id and moderation.is_moderator(interaction, policy)
        allowed = user.id == job.user_id or by_moderator
        if not allowed:
            raise ValidationError("Only the person who asked for this image (or a moderator) can delete it.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.message is not None:
            await interaction.message.delete()
        # Gone from Palette's records and the web gallery too.
        await moderation.forget_job(self.bot, job, self.bot.moderation.clock())
        if by_moderator and job.guild_id is not None:
            self.bot.moderation.emit(
                modlog.deleted_result(job.guild_id, job_id=job.id, user_id=job.user_id, actor_id=user.id)
            )
        await interaction.followup.send(t(user_locale(interaction), "Deleted."), ephemeral=True)

    # ------------------------------------------------------------------ quota

    async def provider_balances(self, locale: str = "en-US") -> list[str]:
        """One line per provider that publishes a balance (the operator's business: see
        :meth:`is_operator`)."""
        lines = []
        for name, provider in self.bot.generator.providers.items():
            try:
                balance = await provider.balance()
            except PaletteError as exc:
                lines.append(t(locale, "{provider}: unavailable ({reason})", provider=name, reason=exc.text))
                continue
            if balance is None:
                continue
            free = ", ".join(f"{k} {v}" for k, v in balance.free_usages.items())
            credits = "?" if balance.credits is None else f"{balance.credits:g}"
            if free:
                lines.append(
                    t(
                        locale,
                        "{provider}: {credits} credits; free uses: {free}",
                        provider=name,
                        credits=credits,
                        free=free,
                    )
                )
            else:
                lines.append(t(locale, "{provider}: {credits} credits", provider=name, credits=credits))
        return lines

    async def is_operator(self, user: discord.abc.User) -> bool:
        """Whether ``user`` runs this bot: the application's owner, or an admin or developer of the team
        that owns it (``commands.Bot.is_owner``, which asks Discord once and remembers). Provider
        balances and provider health are shown to them only, never to a server's managers."""
        try:
            return await self.bot.is_owner(user)
        except discord.HTTPException as exc:
            log.warning("could not read the application's owner (%s)", exc)
            return False

    # ------------------------------------------------------------------ context menu

    async def edit_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        attachments = [a for a in message.attachments if is_image_attachment(a)]
        # A link preview often names one picture as both image and thumbnail: fetch it once.
        urls = list(
            dict.fromkeys(
                url
                for e in message.embeds
                for url in ((e.image.url if e.image else None), (e.thumbnail.url if e.thumbnail else None))
                if url
            )
        )
        if not attachments and not urls:
            raise ValidationError("That message has no images to edit.")
        model_key = self.bot.default_edit_model(len(attachments) + len(urls))
        model = get_model(model_key)
        max_refs = model.max_references if model else 1
        attachments = attachments[:max_refs]
        urls = urls[: min(URL_FETCHES_PER_USER, max(0, max_refs - len(attachments)))]
        self.check_attachments(attachments)

        async def submitted(modal_interaction: discord.Interaction, prompt: str, _index: int) -> None:
            spec = GenerationSpec(model=model_key, prompt=prompt)
            # The URLs' hosts are the message author's choice: bound how many one user downloads at once.
            with self.url_fetches(modal_interaction.user.id, len(urls)):
                await self.start_job(modal_interaction, spec, kind="edit", attachments=attachments, urls=urls)

        await interaction.response.send_modal(
            PromptModal(
                title=t(user_locale(interaction), "Edit with Palette"),
                on_submit_prompt=submitted,
                max_length=self.bot.settings.max_prompt_length,
                locale=user_locale(interaction),
            )
        )


#: What posting a result needs in a server channel (the channel fallback sends a normal message).
RESULT_PERMISSIONS = ("view_channel", "send_messages", "attach_files", "embed_links")


def check_bot_permissions(interaction: discord.Interaction) -> None:
    """Refuse up front, naming the permission, when the bot could not post the result here."""
    if interaction.guild_id is None:
        return
    perms = interaction.app_permissions
    missing = [name for name in RESULT_PERMISSIONS if not getattr(perms, name)]
    if missing:
        raise MissingBotPermissions(
            "I can't post images in this channel: I'm missing the {permissions} permission. "
            "Ask a server admin to grant it, or use another channel.",
            permissions=PermissionNames(tuple(missing)),
        )


def t_size(size: int) -> Text:
    """An attachment's size as Discord shows it: MB with one decimal (``30.0 MB``)."""
    return msg("{size} MB", size=Number(size / 1_048_576, 1))


class MissingBotPermissions(PaletteError):
    pass


class PermissionNames(Joined):
    """Permission names (``attach_files``), shown as Discord's client names them in the reader's
    language."""

    def render(self, locale: str) -> str:
        from bot.presentation.client import permission_names

        return permission_names(locale, list(self.items)).render(locale)


class NotThisResult(ValidationError):
    def __init__(self) -> None:
        super().__init__("That button doesn't belong to this result; nothing was done.")


def is_image_attachment(att: discord.Attachment) -> bool:
    if att.content_type:
        return att.content_type.startswith("image/")
    return att.filename.lower().endswith(IMAGE_EXTENSIONS)


def upload_limit(interaction: discord.Interaction) -> int:
    """The interaction's attachment_size_limit, else the guild's filesize_limit, else 10 MiB."""
    limit = getattr(interaction, "filesize_limit", None)
    if isinstance(limit, int) and limit > 0:
        return limit
    if interaction.guild is not None:
        return interaction.guild.filesize_limit
    return 10 * 1024 * 1024
