from __future__ import annotations

from typing import TYPE_CHECKING

from cogs.compare.cog import CompareCog

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot


async def setup(bot: PaletteBot) -> None:
    await bot.add_cog(CompareCog(bot))
