"""Buttons and modals.

Result buttons are persistent: their custom ids carry the job id (``palette:<action>:<job>``) and the
class is registered at start-up as a :class:`discord.ui.DynamicItem`, so buttons on messages from before
a restart keep working. Their callbacks only forward to :mod:`bot.presentation.flows`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import ValidationError
from bot.i18n import N_, SOURCE_LOCALE, t

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

RESULT_ACTIONS: dict[str, tuple[str, str, discord.ButtonStyle]] = {
    # action: (label, emoji, style); the label is a message id
    "reroll": (N_("Re-roll"), "🎲", discord.ButtonStyle.secondary),
    "edit": (N_("Edit"), "✏️", discord.ButtonStyle.secondary),
    "upscale": (N_("Upscale"), "🔍", discord.ButtonStyle.secondary),
    "delete": (N_("Delete"), "🗑️", discord.ButtonStyle.danger),
    "report": (N_("Report"), "🚩", discord.ButtonStyle.secondary),
}
CANCEL_LABEL = N_("Cancel")


class ResultButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"palette:(?P<action>reroll|edit|upscale|delete|report):(?P<job_id>[0-9]{1,19})",
):
    def __init__(self, action: str, job_id: int, locale: str = SOURCE_LOCALE) -> None:
        label, emoji, style = RESULT_ACTIONS[action]
        super().__init__(
            discord.ui.Button(
                label=t(locale, label), emoji=emoji, style=style, custom_id=f"palette:{action}:{job_id}"
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> ResultButton:
        return cls(match["action"], int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: PaletteBot = interaction.client  # type: ignore[assignment]
        await bot.flows.result_action(interaction, self.action, self.job_id)


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"palette:cancel:(?P<job_id>[0-9]{1,19})",
):
    """Cancel on the status message of a queued or running job (persistent like the result buttons)."""

    def __init__(self, job_id: int, locale: str = SOURCE_LOCALE) -> None:
        super().__init__(
            discord.ui.Button(
                label=t(locale, CANCEL_LABEL),
                emoji="✖️",
                style=discord.ButtonStyle.secondary,
                custom_id=f"palette:cancel:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> CancelButton:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: PaletteBot = interaction.client  # type: ignore[assignment]
        await bot.flows.cancel_action(interaction, self.job_id)


def status_view(job_id: int, locale: str = SOURCE_LOCALE) -> discord.ui.View:
    """The buttons of a job's status message while it is queued or running, labelled in ``locale`` (the
    server's language: the message is public)."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id, locale))
    return view


def result_view(job_id: int, locale: str = SOURCE_LOCALE) -> discord.ui.View:
    """The result's buttons, labelled in ``locale`` (the server's language: the message is public)."""
    view = discord.ui.View(timeout=None)
    for action in RESULT_ACTIONS:
        view.add_item(ResultButton(action, job_id, locale))
    return view


class PromptModal(discord.ui.Modal):
    """Asks for a prompt (and optionally which image), then hands it to ``on_submit_prompt``."""

    def __init__(
        self,
        *,
        title: str,
        on_submit_prompt: Callable[[discord.Interaction, str, int], Awaitable[None]],
        max_length: int,
        image_count: int = 1,
        default: str | None = None,
        locale: str = SOURCE_LOCALE,
    ) -> None:
        super().__init__(title=title, timeout=600)
        self._on_submit_prompt = on_submit_prompt
        self.prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
            label=t(locale, "What should change?"),
            style=discord.TextStyle.paragraph,
            placeholder=t(locale, "e.g. make it a watercolor painting at sunset"),
            max_length=min(max_length, 4000),
            default=default,
        )
        self.add_item(self.prompt)
        self.image_count = image_count
        self.which: discord.ui.TextInput[PromptModal] | None = None
        if image_count > 1:
            self.which = discord.ui.TextInput(
                label=t(locale, "Which image (1-{count})?", count=image_count),
                default="1",
                max_length=4,
                required=False,
            )
            self.add_item(self.which)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        index = parse_image_number(self.which.value, self.image_count) if self.which is not None else 1
        await self._on_submit_prompt(interaction, self.prompt.value, index)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        bot: PaletteBot = interaction.client  # type: ignore[assignment]
        await bot.report_error(interaction, error)


def parse_image_number(raw: str, count: int) -> int:
    """The "which image" field: empty means 1; otherwise ASCII digits only (``str.isdigit`` also accepts
    ``²`` and other scripts' digits, which ``int`` then rejects or reads differently), from 1 to ``count``.
    Raises :class:`ValidationError` with a message for the user."""
    text = raw.strip()
    if not text:
        return 1
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= count:
        raise ValidationError(
            "Which image? Type a number from 1 to {count} (digits 0-9). Nothing was charged.", count=count
        )
    return int(text)


class HistoryView(discord.ui.View):
    """Previous / next buttons over the requester's history (ephemeral, so not persistent)."""

    def __init__(
        self,
        *,
        owner_id: int,
        page: int,
        pages: int,
        render: Callable[[int], Awaitable[tuple[discord.Embed, int]]],
        locale: str = SOURCE_LOCALE,
    ) -> None:
        super().__init__(timeout=600)
        self.previous.label = t(locale, "Previous")
        self.next.label = t(locale, "Next")
        self.owner_id = owner_id
        self.page = page
        self.pages = pages
        self._render = render
        self._sync()

    def _sync(self) -> None:
        self.previous.disabled = self.page <= 0
        self.next.disabled = self.page >= self.pages - 1

    async def _show(self, interaction: discord.Interaction, page: int) -> None:
        embed, self.pages = await self._render(page)
        self.page = max(0, min(page, self.pages - 1))
        self._sync()
        await interaction.response.edit_message(embed=embed, view=self)

    @discord.ui.button(label="Previous", emoji="◀️", style=discord.ButtonStyle.secondary)
    async def previous(
        self, interaction: discord.Interaction, button: discord.ui.Button[HistoryView]
    ) -> None:
        await self._show(interaction, self.page - 1)

    @discord.ui.button(label="Next", emoji="▶️", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: discord.ui.Button[HistoryView]) -> None:
        await self._show(interaction, self.page + 1)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.owner_id
