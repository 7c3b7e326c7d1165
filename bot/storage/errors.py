"""Errors raised by the storage layer."""

from __future__ import annotations

import math
from typing import Literal

from bot.errors import ValidationError
from bot.i18n import Joined, Number, Text, msg, nmsg

QuotaScope = Literal["daily", "hourly", "concurrent", "pool"]


def _wait_text(seconds: float) -> Text:
    """``"3 h 12 min"``, ``"40 min"``, ``"1 min"``: a short, rounded-up duration."""
    minutes = max(1, math.ceil(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    if hours and minutes:
        return msg("{hours} h {minutes} min", hours=hours, minutes=minutes)
    if hours:
        return msg("{hours} h", hours=hours)
    return msg("{minutes} min", minutes=minutes)


class QuotaExceeded(ValidationError):
    """A reservation would exceed a limit; nothing was reserved.

    ``scope`` is which limit; ``limit`` its value; ``used`` what is already counted against it (images, or
    jobs in flight for ``concurrent``); ``requested`` what the refused job asked for; ``resets_at`` the unix
    time at which enough capacity frees up for this request (``None`` for ``concurrent``, and when the
    request can never fit because it is larger than the limit).
    """

    def __init__(
        self,
        scope: QuotaScope,
        *,
        limit: int,
        used: int,
        requested: int = 1,
        resets_at: float | None = None,
        now: float | None = None,
        message: str | Text | None = None,
    ) -> None:
        self.scope: QuotaScope = scope
        self.limit = limit
        self.used = used
        self.requested = requested
        self.resets_at = resets_at
        super().__init__(message or self._default_message(now))

    def _default_message(self, now: float | None) -> Text:
        """The refusal as a message (one per scope and case; added sentences joined, never fragments)."""
        limit, used, requested = self.limit, self.used, self.requested
        if self.scope == "concurrent":
            return nmsg(
                "You already have {used} of your {n} job in progress; wait for one to finish and try again.",
                "You already have {used} of your {n} jobs in progress; wait for one to finish and try again.",
                limit,
                used=used,
            )
        if requested > limit:
            if self.scope == "pool":
                return msg(
                    "This request needs {requested} images but this server's shared daily limit is {limit}.",
                    requested=requested,
                    limit=limit,
                )
            if self.scope == "daily":
                return msg(
                    "This request needs {requested} images but your daily limit is {limit}.",
                    requested=requested,
                    limit=limit,
                )
            return msg(
                "This request needs {requested} images but your hourly limit is {limit}.",
                requested=requested,
                limit=limit,
            )
        if self.scope == "pool":
            first = nmsg(
                "This server has used {used} of its {n} shared image for today.",
                "This server has used {used} of its {n} shared images for today.",
                limit,
                used=used,
            )
        elif self.scope == "daily":
            first = nmsg(
                "You've used {used} of your {n} image for today.",
                "You've used {used} of your {n} images for today.",
                limit,
                used=used,
            )
        else:
            first = nmsg(
                "You've used {used} of your {n} image this hour.",
                "You've used {used} of your {n} images this hour.",
                limit,
                used=used,
            )
        sentences: list[Text] = [first]
        if used < limit:
            sentences.append(msg("This request needs {requested}.", requested=requested))
        if self.resets_at is not None and now is not None and self.resets_at > now:
            sentences.append(msg("Try again in {wait}.", wait=_wait_text(self.resets_at - now)))
        if len(sentences) == 1:
            return first
        return msg("{sentences}", sentences=Joined(tuple(sentences), " "))

    def __repr__(self) -> str:
        return (
            f"QuotaExceeded(scope={self.scope!r}, limit={self.limit}, used={self.used}, "
            f"requested={self.requested}, resets_at={self.resets_at!r})"
        )


class ReferencesTooLarge(ValidationError):
    """A job's reference images add up to more than the database stores for one job; nothing was stored
    and nothing was charged."""

    def __init__(self, total_bytes: int, limit_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.limit_bytes = limit_bytes
        super().__init__(
            "These reference images add up to {total}; one request can carry at most {limit}. "
            "Use fewer or smaller images.",
            total=_mib(total_bytes),
            limit=_mib(limit_bytes),
        )


def _mib(size: int) -> Text:
    return msg("{size} MiB", size=Number(size / (1024 * 1024), 1))


class JobNotFound(LookupError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id
