"""/quota: what the user has left, and the providers' balances for the bot's operator only."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.presentation import embeds
from bot.presentation.locales import user_locale

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot


class QuotaCog(commands.Cog):
    def __init__(self, bot: PaletteBot) -> None:
        self.bot = bot

    @app_commands.command(name="quota", description=locale_str("Show how many images you can still generate"))
    async def quota(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        origin = self.bot.flows.origin(interaction)
        limits = await self.bot.policy.limits_for(origin.user_id, origin.guild_id, origin.role_ids)
        usage = await self.bot.db.jobs.usage(origin.user_id, time.time(), guild_id=origin.guild_id)
        balances: list[str] = []
        # The operator's business (what the API keys have left), not a server manager's.
        if await self.bot.flows.is_operator(interaction.user):
            balances = await self.bot.flows.provider_balances(user_locale(interaction))
        await interaction.followup.send(
            embed=embeds.quota_embed(usage, limits, balances=balances, locale=user_locale(interaction)),
            ephemeral=True,
        )
