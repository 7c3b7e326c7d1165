"""/compare: one prompt on two to four models, posted together (bot.presentation.compare does the work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.catalog import MODELS
from bot.i18n import t
from bot.presentation.compare import MAX_MODELS, choose_models, start_compare
from bot.presentation.locales import user_locale
from cogs.imagine.cog import MAX_PROMPT, RESOLUTION_CHOICES

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot


class CompareCog(commands.Cog):
    def __init__(self, bot: PaletteBot) -> None:
        self.bot = bot

    async def models_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """Completes the last name of the comma list (the ones before it are kept)."""
        done, _, typing = current.rpartition(",")
        picked = [p.strip() for p in done.split(",") if p.strip()]
        prefix = ", ".join([*picked, ""]) if picked else ""
        available = [m for m in self.bot.generator.models() if m.key not in picked]
        choices = [
            app_commands.Choice(name=f"{prefix}{m.key}"[:100], value=f"{prefix}{m.key}"[:100])
            for m in available
            if typing.strip().lower() in m.key or typing.strip().lower() in m.label.lower()
        ]
        keys = [m.key for m in self.bot.generator.models()]
        if not current.strip() and len(keys) >= 2:
            default = ", ".join(choose_models(None, keys))
            # Shown to the one typing, in their language.
            name = t(user_locale(interaction), "{models} (default)", models=default)
            choices.insert(0, app_commands.Choice(name=name[:100], value=default))
        return choices[:25] if len(picked) < MAX_MODELS else []

    async def ratio_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        ratios = dict.fromkeys(r for m in MODELS for r in m.aspect_ratios)
        return [app_commands.Choice(name=r, value=r) for r in ratios if current in r][:25]

    @app_commands.command(
        name="compare", description=locale_str("Draw one prompt with two to four models, side by side")
    )
    @app_commands.describe(
        prompt=locale_str("Describe the image you want"),
        models=locale_str("Models to compare, separated by commas (default: Nano Banana Pro, GPT Image 2)"),
        aspect_ratio=locale_str("Shape of the images, e.g. 1:1, 16:9 (every model must support it)"),
        resolution=locale_str("Output size; larger takes longer"),
    )
    @app_commands.autocomplete(models=models_autocomplete, aspect_ratio=ratio_autocomplete)
    @app_commands.choices(resolution=RESOLUTION_CHOICES)
    async def compare(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT],
        models: app_commands.Range[str, 1, 200] | None = None,
        aspect_ratio: str | None = None,
        resolution: app_commands.Choice[str] | None = None,
    ) -> None:
        await start_compare(
            self.bot,
            interaction,
            prompt=prompt,
            models=models,
            aspect_ratio=aspect_ratio,
            resolution=resolution.value if resolution else None,
        )
