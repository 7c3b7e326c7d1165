"""Who may generate how much: the one place that turns settings and server policy into limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.storage import Limits

if TYPE_CHECKING:
    from bot.storage.moderation import GuildPolicy, RoleLimit
    from bot.storage.repository import ModerationRepository

#: Where a server's policy and role limits come from when they are cached (the moderation service's
#: per-server state, invalidated on every change, in this process and, through the database's moderation
#: versions, in every other one).
PolicySource = Callable[[int], Awaitable[tuple["GuildPolicy", Sequence["RoleLimit"]]]]
#: Whether a server pays for its own generations (its own provider keys, no fallback to the operator's):
#: then the operator's per-user ceilings do not apply to it (see :mod:`bot.tenants`).
SelfFunded = Callable[[int], Awaitable[bool]]


class LimitPolicy:
    """Per-user limits. The operator's settings (``USER_DAILY_LIMIT``, ``USER_HOURLY_LIMIT``; 0 =
    unlimited) are the defaults and the ceilings; a server's policy (``/palette limits``,
    ``/palette role-limit``) may lower them, never raise them: the effective limit is
    ``min(operator, server or role)`` — see :func:`bot.moderation.policy.resolve_limits`.

    With a ``source`` (the bot passes the moderation service's cached server state) a command costs no
    database read for its limits; without one the policy is read from ``moderation`` on every call."""

    def __init__(
        self,
        settings: Settings,
        moderation: ModerationRepository | None = None,
        *,
        source: PolicySource | None = None,
        self_funded: SelfFunded | None = None,
    ) -> None:
        self.settings = settings
        self.moderation = moderation
        self.source = source
        self.self_funded = self_funded

    async def limits_for(self, user_id: int, guild_id: int | None, role_ids: Sequence[int] = ()) -> Limits:
        if guild_id is None or (self.moderation is None and self.source is None):
            return Limits.from_settings(self.settings)
        from bot.moderation.policy import resolve_limits

        if self.source is not None:
            policy, roles = await self.source(guild_id)
        else:
            assert self.moderation is not None
            policy = await self.moderation.get_policy(guild_id)
            roles = await self.moderation.role_limits(guild_id) if role_ids else []
        ceilings = not (self.self_funded is not None and await self.self_funded(guild_id))
        return resolve_limits(self.settings, policy, roles, role_ids, ceilings=ceilings)
