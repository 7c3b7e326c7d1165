"""/style save, /style list and /style delete (issue 12); the work is bot.presentation.styles'."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.catalog import MODELS, get_model
from bot.presentation import styles
from bot.presentation.choices import model_choices
from bot.presentation.locales import user_locale
from bot.styles import NAME_MAX, TEMPLATE_MAX

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

SCOPE_CHOICES = [
    app_commands.Choice(name=locale_str("Personal (only you)"), value="personal"),
    app_commands.Choice(name=locale_str("Server (every member; moderators only)"), value="server"),
]


class StylesCog(commands.Cog):
    style = app_commands.Group(
        name="style", description=locale_str("Saved prompt styles for /imagine and /edit")
    )

    def __init__(self, bot: PaletteBot) -> None:
        self.bot = bot

    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        # Autocomplete is shown to the one typing: in their language.
        return model_choices(self.bot.generator.models(), user_locale(interaction), current)

    async def ratio_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        chosen = get_model(getattr(interaction.namespace, "model", None) or "")
        ratios = (
            chosen.aspect_ratios
            if chosen
            else tuple(dict.fromkeys(r for m in MODELS for r in m.aspect_ratios))
        )
        return [app_commands.Choice(name=r, value=r) for r in ratios if current in r][:25]

    async def style_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await styles.style_choices(self.bot, interaction, current)

    @style.command(
        name="save", description=locale_str("Save a prompt template as a style (replaces one of that name)")
    )
    @app_commands.describe(
        name=locale_str("The style's name, e.g. watercolor"),
        template=locale_str(
            "The prompt with {prompt} where your words go, e.g. '{prompt}, soft watercolor, pastel'"
        ),
        scope=locale_str("Personal (yours only) or for the whole server (moderators)"),
        image=locale_str("A reference image that comes with the style (optional)"),
        model=locale_str("The model the style uses unless one is chosen (optional)"),
        aspect_ratio=locale_str("The shape the style uses unless one is chosen (optional)"),
    )
    @app_commands.choices(scope=SCOPE_CHOICES)
    @app_commands.autocomplete(model=model_autocomplete, aspect_ratio=ratio_autocomplete)
    async def save(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, NAME_MAX],
        template: app_commands.Range[str, 1, TEMPLATE_MAX],
        scope: app_commands.Choice[str] | None = None,
        image: discord.Attachment | None = None,
        model: str | None = None,
        aspect_ratio: str | None = None,
    ) -> None:
        await styles.save(
            self.bot,
            interaction,
            name=name,
            template=template,
            scope="server" if scope is not None and scope.value == "server" else "personal",
            images=[image] if image is not None else [],
            model=model,
            aspect_ratio=aspect_ratio,
        )

    @style.command(name="list", description=locale_str("Show your styles and this server's"))
    async def list_(self, interaction: discord.Interaction) -> None:
        await styles.list_styles(self.bot, interaction)

    @style.command(
        name="delete", description=locale_str("Delete one of your styles (or a server style, as a moderator)")
    )
    @app_commands.describe(name=locale_str("The style to delete"))
    @app_commands.autocomplete(name=style_autocomplete)
    async def delete(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 64]) -> None:
        await styles.delete(self.bot, interaction, name)
