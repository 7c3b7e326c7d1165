"""Generation bans: durations, expiry, reasons, and the automatic ban after repeated blocked prompts.

A reason that Palette writes itself (an auto-ban, a ban from a report) is stored as a code and its
values (:class:`SystemReason`), beside its English text for readers that know no code;
:func:`ban_reason` turns a ban into what its reason shows, in whatever language it is rendered. A reason
typed by a moderator is stored and shown as it was typed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.errors import ValidationError
from bot.i18n import Duration, Text, msg, nmsg
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


# ------------------------------------------------------------------ reasons

#: ``bans.reason_code`` of the reasons Palette writes itself.
AUTO_BAN = "auto_ban"
REPORT = "report"
DASHBOARD_REPORT = "dashboard_report"


@dataclass(frozen=True, slots=True)
class SystemReason:
    """A ban reason written by Palette: its code and values (numbers, stored as JSON with the ban)."""

    code: str
    values: Mapping[str, Any]

    def text(self) -> Text | None:
        """The reason as a message, ``None`` for a code this version does not know (a later version
        wrote it) or values it cannot read."""
        v = self.values
        try:
            if self.code == AUTO_BAN:
                return nmsg(
                    "{n} blocked prompt within {window}",
                    "{n} blocked prompts within {window}",
                    int(v["count"]),
                    window=describe_duration(float(v["window"])),
                )
            if self.code == REPORT:
                return msg("reported result (job {job})", job=int(v["job"]))
            if self.code == DASHBOARD_REPORT:
                return msg("reported result (job {job}), from the dashboard", job=int(v["job"]))
        except (KeyError, TypeError, ValueError):
            return None
        return None


def auto_ban_reason(recent: int, window: float) -> SystemReason:
    """``recent`` blocked prompts within ``window`` seconds led to the ban."""
    return SystemReason(AUTO_BAN, {"count": recent, "window": window})


def report_reason(job_id: int) -> SystemReason:
    """Banned by a moderator from the mod log's report of job ``job_id``."""
    return SystemReason(REPORT, {"job": job_id})


def dashboard_report_reason(job_id: int) -> SystemReason:
    """Banned by a moderator from a report of job ``job_id`` on the web dashboard."""
    return SystemReason(DASHBOARD_REPORT, {"job": job_id})


def ban_reason(ban: Ban) -> Text | str | None:
    """What a ban shows as its reason: Palette's own reasons as a message (rendered in the reader's
    language), otherwise the stored text as it is (a moderator's words; the English of a ban stored
    before reasons had codes), ``None`` without a reason."""
    if ban.reason_code is not None and ban.reason_values is not None:
        text = SystemReason(ban.reason_code, ban.reason_values).text()
        if text is not None:
            return text
    return ban.reason or None


def make_ban(
    guild_id: int,
    user_id: int,
    *,
    duration: float | None,
    reason: str | SystemReason | None,
    banned_by: int | None,
    now: float,
    automatic: bool = False,
) -> Ban:
    """A ban from ``now``; a :class:`SystemReason` is stored as its code and values, and as English."""
    code: str | None = None
    values: dict[str, Any] | None = None
    if isinstance(reason, SystemReason):
        code, values = reason.code, dict(reason.values)
        text = reason.text()
        reason = None if text is None else str(text)
    return Ban(
        guild_id=guild_id,
        user_id=user_id,
        expires_at=None if duration is None else now + duration,
        reason=reason,
        banned_by=banned_by,
        automatic=automatic,
        created_at=now,
        reason_code=code,
        reason_values=values,
    )


def should_auto_ban(policy: GuildPolicy, recent_hits: int) -> bool:
    """``recent_hits`` blocked prompts within the policy's window reach its threshold (0 = off)."""
    return policy.autoban_hits > 0 and recent_hits >= policy.autoban_hits


def banned_message(ban: Ban) -> Text:
    reason = ban_reason(ban)
    if ban.expires_at is None:
        if reason:
            return msg(
                "⛔ You're banned from generating images in this server until a moderator lifts it. "
                "Reason: {reason}",
                reason=reason,
            )
        return msg("⛔ You're banned from generating images in this server until a moderator lifts it.")
    until = f"<t:{int(ban.expires_at)}:f>"
    if reason:
        return msg(
            "⛔ You're banned from generating images in this server until {until}. Reason: {reason}",
            until=until,
            reason=reason,
        )
    return msg("⛔ You're banned from generating images in this server until {until}.", until=until)
