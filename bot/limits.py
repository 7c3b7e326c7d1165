"""Who may generate how much: the one place that turns settings (and later, server policy) into limits."""

from __future__ import annotations

from collections.abc import Sequence

from bot.config import Settings
from bot.storage import Limits


def _limit(value: int) -> int | None:
    return value if value > 0 else None


class LimitPolicy:
    """Per-user limits. Settings give the defaults; per-server policies (admin commands) refine them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def limits_for(self, user_id: int, guild_id: int | None, role_ids: Sequence[int] = ()) -> Limits:
        return Limits(
            daily=_limit(self.settings.user_daily_limit),
            hourly=_limit(self.settings.user_hourly_limit),
            max_concurrent=_limit(self.settings.user_max_concurrent),
        )
