"""/imagine, /edit and the "Edit with Palette" message command."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.catalog import MODELS, get_model
from bot.generation import SEED_MAX, GenerationSpec
from bot.presentation.choices import model_choices
from bot.presentation.locales import user_locale
from bot.presentation.styles import apply_style, style_choices

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

RESOLUTION_CHOICES = [
    app_commands.Choice(name=locale_str("1K (fastest)"), value="1K"),
    app_commands.Choice(name=locale_str("2K"), value="2K"),
    app_commands.Choice(name=locale_str("4K (slowest, largest)"), value="4K"),
]
MAX_PROMPT = 4000


class ImagineCog(commands.Cog):
    def __init__(self, bot: PaletteBot) -> None:
        self.bot = bot
        self.edit_menu = app_commands.ContextMenu(
            name=locale_str("Edit with Palette"), callback=self.edit_message
        )
        self.edit_menu.error(self._menu_error)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.edit_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.edit_menu.name, type=self.edit_menu.type)

    async def _menu_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await self.bot.report_error(interaction, error)

    # ------------------------------------------------------------------ autocomplete

    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        # Autocomplete is shown to the one typing: in their language.
        return model_choices(self.bot.generator.models(), user_locale(interaction), current)

    async def ratio_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        chosen = getattr(interaction.namespace, "model", None) or self.bot.default_model()
        model = get_model(chosen) or get_model(self.bot.default_model())
        ratios = model.aspect_ratios if model else MODELS[0].aspect_ratios
        return [app_commands.Choice(name=r, value=r) for r in ratios if current in r][:25]

    async def style_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await style_choices(self.bot, interaction, current)

    # ------------------------------------------------------------------ commands

    @app_commands.command(name="imagine", description=locale_str("Generate images from a text prompt"))
    @app_commands.describe(
        prompt=locale_str("Describe the image you want"),
        model=locale_str("Which model draws it (default: Nano Banana Pro)"),
        aspect_ratio=locale_str("Shape of the image, e.g. 1:1, 16:9, 9:16"),
        resolution=locale_str("Output size; larger takes longer"),
        count=locale_str("How many images (1-4); each counts against your quota"),
        seed=locale_str("Same seed + same prompt gives similar results (some models only)"),
        style=locale_str("A saved style (yours or the server's) that wraps your prompt"),
    )
    @app_commands.autocomplete(
        model=model_autocomplete, aspect_ratio=ratio_autocomplete, style=style_autocomplete
    )
    @app_commands.choices(resolution=RESOLUTION_CHOICES)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT],
        model: str | None = None,
        aspect_ratio: str | None = None,
        resolution: app_commands.Choice[str] | None = None,
        count: app_commands.Range[int, 1, 4] = 1,
        seed: app_commands.Range[int, 0, SEED_MAX] | None = None,
        style: str | None = None,
    ) -> None:
        styled = await apply_style(
            self.bot, interaction, style, prompt=prompt, model=model, aspect_ratio=aspect_ratio
        )
        # A model chosen here or by the style; else the server's default applies.
        interaction.extras["model_chosen"] = styled.model is not None
        spec = GenerationSpec(
            model=styled.model or self.bot.default_model(),
            prompt=styled.prompt,
            aspect_ratio=styled.aspect_ratio,
            resolution=resolution.value if resolution else None,
            count=count,
            seed=seed,
        )
        await self.bot.flows.start_job(interaction, spec, kind="imagine", blobs=styled.blobs)

    @app_commands.command(name="edit", description=locale_str("Edit or combine images with a prompt"))
    @app_commands.describe(
        prompt=locale_str("What to change, or how to combine the images"),
        image=locale_str("The image to edit"),
        image2=locale_str("Another reference image (optional)"),
        image3=locale_str("Another reference image (optional)"),
        image4=locale_str("Another reference image (optional)"),
        model=locale_str("Which model edits it (default: Nano Banana Pro)"),
        aspect_ratio=locale_str("Shape of the result, e.g. 1:1, 16:9"),
        resolution=locale_str("Output size; larger takes longer"),
        style=locale_str("A saved style (yours or the server's) that wraps your prompt"),
    )
    @app_commands.autocomplete(
        model=model_autocomplete, aspect_ratio=ratio_autocomplete, style=style_autocomplete
    )
    @app_commands.choices(resolution=RESOLUTION_CHOICES)
    async def edit(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT],
        image: discord.Attachment,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        model: str | None = None,
        aspect_ratio: str | None = None,
        resolution: app_commands.Choice[str] | None = None,
        style: str | None = None,
    ) -> None:
        attachments = [a for a in (image, image2, image3, image4) if a is not None]
        styled = await apply_style(
            self.bot, interaction, style, prompt=prompt, model=model, aspect_ratio=aspect_ratio
        )
        # A model chosen here or by the style; else the server's default applies.
        interaction.extras["model_chosen"] = styled.model is not None
        spec = GenerationSpec(
            model=styled.model or self.bot.default_edit_model(len(attachments) + len(styled.blobs)),
            prompt=styled.prompt,
            aspect_ratio=styled.aspect_ratio,
            resolution=resolution.value if resolution else None,
        )
        await self.bot.flows.start_job(
            interaction, spec, kind="edit", attachments=attachments, blobs=styled.blobs
        )

    async def edit_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.bot.flows.edit_from_message(interaction, message)
