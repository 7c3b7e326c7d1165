"""Who may generate how much: the one place that turns settings and server policy into limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.storage import Limits

if TYPE_CHECKING:
    from bot.storage.repository import ModerationRepository


class LimitPolicy:
    """Per-user limits. The operator's settings (``USER_DAILY_LIMIT``, ``USER_HOURLY_LIMIT``; 0 =
    unlimited) are the defaults and the ceilings; a server's policy (``/palette limits``,
    ``/palette role-limit``) may lower them, never raise them: the effective limit is
    ``min(operator, server or role)`` — see :func:`bot.moderation.policy.resolve_limits`.

    The policy is read from the database on every call (two indexed lookups), so a change made with an
    admin command applies to the very next request; there is no cache to invalidate."""

    def __init__(self, settings: Settings, moderation: ModerationRepository | None = None) -> None:
        self.settings = settings
        self.moderation = moderation

    async def limits_for(self, user_id: int, guild_id: int | None, role_ids: Sequence[int] = ()) -> Limits:
        if guild_id is None or self.moderation is None:
            return Limits.from_settings(self.settings)
        from bot.moderation.policy import resolve_limits

        policy = await self.moderation.get_policy(guild_id)
        roles = await self.moderation.role_limits(guild_id) if role_ids else []
        return resolve_limits(self.settings, policy, roles, role_ids)
