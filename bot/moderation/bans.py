"""Generation bans: durations, expiry, and the automatic ban after repeated blocked prompts."""

from __future__ import annotations

import re

from bot.errors import ValidationError
from bot.i18n import Duration, Text, msg
from bot.storage.moderation import Ban, GuildPolicy

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)\s*([smhdw])")
PERMANENT_WORDS = ("", "permanent", "forever", "never", "indefinite")
MAX_BAN = 365 * 86400


def parse_duration(text: str | None) -> float | None:
    """``"30m"``, ``"2h"``, ``"1d12h"``, ``"1w"`` -> seconds; empty/``permanent`` -> ``None`` (until lifted).
    A bare number means minutes. Raises :class:`ValidationError`."""
    raw = (text or "").strip().lower()
    if raw in PERMANENT_WORDS:
        return None
    if raw.isdigit():
        seconds = int(raw) * 60
    else:
        compact = raw.replace(" ", "")
        parts = _PART.findall(compact)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != compact:
            raise ValidationError(
                "`{text}` is not a duration. Use e.g. `30m`, `2h`, `1d`, `1w`, or `permanent`.", text=text
            )
        seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValidationError("A ban must last at least a second (or be permanent).")
    if seconds > MAX_BAN:
        raise ValidationError("Temporary bans last at most a year; use `permanent` for longer.")
    return float(seconds)


def describe_duration(seconds: float | None) -> Text | Duration:
    """A ban's or window's length for people: its two largest units (``1d12h`` in English)."""
    if seconds is None:
        return msg("until lifted")
    return Duration(seconds)


def make_ban(
    guild_id: int,
    user_id: int,
    *,
    duration: float | None,
    reason: str | None,
    banned_by: int | None,
    now: float,
    automatic: bool = False,
) -> Ban:
    return Ban(
        guild_id=guild_id,
        user_id=user_id,
        expires_at=None if duration is None else now + duration,
        reason=reason,
        banned_by=banned_by,
        automatic=automatic,
        created_at=now,
    )


def should_auto_ban(policy: GuildPolicy, recent_hits: int) -> bool:
    """``recent_hits`` blocked prompts within the policy's window reach its threshold (0 = off)."""
    return policy.autoban_hits > 0 and recent_hits >= policy.autoban_hits


def banned_message(ban: Ban) -> Text:
    if ban.expires_at is None:
        if ban.reason:
            return msg(
                "⛔ You're banned from generating images in this server until a moderator lifts it. "
                "Reason: {reason}",
                reason=ban.reason,
            )
        return msg("⛔ You're banned from generating images in this server until a moderator lifts it.")
    until = f"<t:{int(ban.expires_at)}:f>"
    if ban.reason:
        return msg(
            "⛔ You're banned from generating images in this server until {until}. Reason: {reason}",
            until=until,
            reason=ban.reason,
        )
    return msg("⛔ You're banned from generating images in this server until {until}.", until=until)
