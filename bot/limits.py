"""Who may generate how much: the one place that turns settings (and later, server policy) into limits."""

from __future__ import annotations

from collections.abc import Sequence

from bot.config import Settings
from bot.storage import Limits


class LimitPolicy:
    """Per-user limits. Settings give the defaults; per-server policies (admin commands) refine them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def limits_for(self, user_id: int, guild_id: int | None, role_ids: Sequence[int] = ()) -> Limits:
        return Limits.from_settings(self.settings)
