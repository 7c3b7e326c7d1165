"""/history: the user's recent generations, paginated."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.i18n import t, tn
from bot.presentation import embeds
from bot.presentation.locales import user_locale
from bot.presentation.moderation import ConfirmView
from bot.presentation.views import HistoryView

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

PAGE_SIZE = 5


class HistoryCog(commands.Cog):
    def __init__(self, bot: PaletteBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="history", description=locale_str("Your recent generations, with links to them")
    )
    async def history(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        user_id = interaction.user.id
        locale = user_locale(interaction)

        async def render(page: int) -> tuple[discord.Embed, int]:
            total = await self.bot.db.history.count_history(user_id)
            pages = max(1, -(-total // PAGE_SIZE))
            page = max(0, min(page, pages - 1))
            entries = await self.bot.db.history.history(user_id, limit=PAGE_SIZE, offset=page * PAGE_SIZE)
            return embeds.history_embed(entries, page, pages, total, locale), pages

        embed, pages = await render(0)
        view = HistoryView(owner_id=user_id, page=0, pages=pages, render=render, locale=locale)
        await interaction.followup.send(embed=embed, view=view, ephemeral=True)

    @app_commands.command(
        name="history-clear", description=locale_str("Delete your prompts and results from Palette")
    )
    async def history_clear(self, interaction: discord.Interaction) -> None:
        user_id = interaction.user.id
        locale = user_locale(interaction)

        async def confirmed(click: discord.Interaction) -> None:
            cleared = await self.bot.db.history.delete_user_data(user_id)
            await click.response.edit_message(
                content=tn(
                    user_locale(click),
                    "🧹 Cleared {n} generation from Palette's records. "
                    "The images already posted stay in their channels (use their Delete button).",
                    "🧹 Cleared {n} generations from Palette's records. "
                    "The images already posted stay in their channels (use their Delete button).",
                    cleared,
                ),
                view=None,
            )

        view = ConfirmView(
            owner_id=user_id,
            on_confirm=confirmed,
            confirm_label=t(locale, "Clear my history"),
            name="forget",
            locale=locale,
        )
        await interaction.response.send_message(
            t(
                locale,
                "Delete your prompts, options and result records from Palette? "
                "Usage counts stay (for quotas).",
            ),
            view=view,
            ephemeral=True,
        )
