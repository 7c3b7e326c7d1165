"""Per-server policy and how it resolves into limits and request checks (no I/O, no Discord).

Resolution of the per-user limits, field by field (daily, hourly):

1. the operator's value from the settings (``USER_DAILY_LIMIT`` ...) is the default *and the ceiling*;
2. the server's value (``/palette limits``) replaces the default when the server set one;
3. the most generous override among the member's roles (``/palette role-limit``, @everyone included)
   replaces that, when any role has one (``0`` = unlimited beats any number; a larger number beats a
   smaller one). Roles without an override for that field do not count, so an override can also
   *lower* a limit below the server's;
4. the result is capped by the operator's ceiling (:func:`within_ceiling`): servers and roles may lower
   the operator's limits, never raise them. An operator value of ``0`` means unlimited, so no ceiling.
   A server or role asking for ``0`` (unlimited) therefore gets the ceiling.

Otherwise anyone who invites a public bot to their own server could give themselves unlimited images
on the operator's provider accounts. The server-wide daily pool applies to everyone on top of that;
concurrency stays global.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot.catalog import RESOLUTIONS
from bot.config import Settings
from bot.errors import ValidationError
from bot.i18n import nmsg
from bot.storage.moderation import GuildPolicy, RoleLimit
from bot.storage.records import Limits

__all__ = [
    "ChannelNotAllowed",
    "DmsDisabled",
    "GuildPolicy",
    "ModelNotAllowed",
    "PolicyViolation",
    "RequestContext",
    "RoleLimit",
    "check_request",
    "exceeds_ceiling",
    "most_generous",
    "resolve_limits",
    "within_ceiling",
]


class PolicyViolation(ValidationError):
    """A request the server's policy does not allow (answered privately, costs nothing)."""


class ChannelNotAllowed(PolicyViolation):
    pass


class DmsDisabled(PolicyViolation):
    pass


class ModelNotAllowed(PolicyViolation):
    pass


@dataclass(frozen=True)
class RequestContext:
    """Who asks for what, where (plain ids)."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    role_ids: tuple[int, ...] = ()
    nsfw_channel: bool = False
    #: The parent channel of a thread: allowing a channel allows its threads.
    parent_channel_id: int | None = None


def most_generous(values: Iterable[int | None]) -> int | None:
    """The most generous of several limits (``0`` = unlimited wins); ``None`` when none is set."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if 0 in present:
        return 0
    return max(present)


def within_ceiling(ceiling: int | None, value: int | None) -> int | None:
    """A server's or role's limit under the operator's ``ceiling``; ``0``/``None`` = unlimited on both
    sides (``None`` is returned for unlimited). ``min(ceiling, value)`` with unlimited as infinity."""
    ceiling = ceiling or None
    value = value or None
    if ceiling is None:
        return value
    return ceiling if value is None else min(ceiling, value)


def exceeds_ceiling(ceiling: int | None, value: int | None) -> bool:
    """Whether a limit a server or role asked for is more than the operator allows (so it is capped)."""
    if not ceiling or value is None:
        return False
    return value == 0 or value > ceiling


def resolve_limits(
    settings: Settings,
    policy: GuildPolicy | None,
    role_limits: Sequence[RoleLimit] = (),
    role_ids: Sequence[int] = (),
) -> Limits:
    daily: int | None = settings.user_daily_limit
    hourly: int | None = settings.user_hourly_limit
    pool = None
    if policy is not None:
        if policy.daily_limit is not None:
            daily = policy.daily_limit
        if policy.hourly_limit is not None:
            hourly = policy.hourly_limit
        pool = policy.daily_pool
        mine = [r for r in role_limits if r.role_id in set(role_ids)]
        role_daily = most_generous(r.daily_limit for r in mine)
        role_hourly = most_generous(r.hourly_limit for r in mine)
        if role_daily is not None:
            daily = role_daily
        if role_hourly is not None:
            hourly = role_hourly
    return Limits(
        daily=within_ceiling(settings.user_daily_limit, daily),
        hourly=within_ceiling(settings.user_hourly_limit, hourly),
        max_concurrent=settings.user_max_concurrent,
        guild_daily_pool=pool,
    )


def resolution_rank(resolution: str | None) -> int:
    return RESOLUTIONS.index(resolution) if resolution in RESOLUTIONS else -1


def check_where(settings: Settings, policy: GuildPolicy | None, ctx: RequestContext) -> None:
    """Channel and DM rules. Raises :class:`PolicyViolation`."""
    if ctx.guild_id is None:
        if not settings.allow_dms:
            raise DmsDisabled("Palette can't be used in direct messages. Use it in a server instead.")
        return
    if policy is None:
        return
    here = {ctx.channel_id, ctx.parent_channel_id} - {None}
    if here & set(policy.denied_channels):
        raise ChannelNotAllowed("Palette is switched off in this channel. Try another one.")
    if not policy.allowed_channels:
        return
    allowed = set(policy.allowed_channels)
    if ctx.channel_id in allowed or (ctx.parent_channel_id is not None and ctx.parent_channel_id in allowed):
        return
    channels = ", ".join(f"<#{c}>" for c in sorted(allowed)[:10])
    raise ChannelNotAllowed("Palette isn't enabled in this channel. Try {channels}.", channels=channels)


def check_request(policy: GuildPolicy | None, *, model: str, resolution: str | None, count: int) -> None:
    """Model, resolution and count against the server's policy. Raises :class:`PolicyViolation`."""
    if policy is None:
        return
    if policy.allowed_models and model not in policy.allowed_models:
        names = ", ".join(f"`{m}`" for m in policy.allowed_models)
        raise ModelNotAllowed(
            "This server doesn't allow the model `{model}`. Allowed: {names}.", model=model, names=names
        )
    if policy.max_resolution and resolution_rank(resolution) > resolution_rank(policy.max_resolution):
        raise PolicyViolation(
            "This server allows images up to {max}; you asked for {resolution}.",
            max=policy.max_resolution,
            resolution=resolution,
        )
    if policy.max_images and count > policy.max_images:
        raise PolicyViolation(
            nmsg(
                "This server allows at most {n} image per request; you asked for {count}.",
                "This server allows at most {n} images per request; you asked for {count}.",
                policy.max_images,
                count=count,
            )
        )


def strict_safety_for(policy: GuildPolicy | None, ctx: RequestContext) -> bool:
    """Strictest provider safety outside NSFW channels, and inside them unless the server relaxed them."""
    if ctx.guild_id is None:
        return True
    return not (ctx.nsfw_channel and policy is not None and policy.nsfw_mode == "relaxed")


def nsfw_terms_apply(policy: GuildPolicy | None, ctx: RequestContext) -> bool:
    """Whether the NSFW term list (scope ``sfw`` and the built-in list) applies to this request."""
    return strict_safety_for(policy, ctx)


def describe_limit(value: int | None, default: int | None = None) -> str:
    if value is None:
        return f"default ({describe_limit(default)})" if default is not None else "default"
    return "unlimited" if value == 0 else str(value)
