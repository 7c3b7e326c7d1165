from __future__ import annotations

from typing import TYPE_CHECKING

from cogs.styles.cog import StylesCog

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot


async def setup(bot: PaletteBot) -> None:
    await bot.add_cog(StylesCog(bot))
