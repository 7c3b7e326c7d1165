"""Errors raised by the storage layer."""

from __future__ import annotations

import math
from typing import Literal

from bot.errors import ValidationError

QuotaScope = Literal["daily", "hourly", "concurrent", "pool"]


def _wait_text(seconds: float) -> str:
    """``"3 h 12 min"``, ``"40 min"``, ``"1 min"``: a short, rounded-up duration."""
    minutes = max(1, math.ceil(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    if hours and minutes:
        return f"{hours} h {minutes} min"
    if hours:
        return f"{hours} h"
    return f"{minutes} min"


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
        message: str | None = None,
    ) -> None:
        self.scope: QuotaScope = scope
        self.limit = limit
        self.used = used
        self.requested = requested
        self.resets_at = resets_at
        super().__init__(message or self._default_message(now))

    def _default_message(self, now: float | None) -> str:
        limit, used, requested = self.limit, self.used, self.requested
        noun = "image" if limit == 1 else "images"
        if self.scope == "concurrent":
            jobs = "job" if limit == 1 else "jobs"
            return (
                f"You already have {used} of your {limit} {jobs} in progress; "
                "wait for one to finish and try again."
            )
        period = {"daily": "today", "hourly": "this hour", "pool": "today"}[self.scope]
        if requested > limit:
            window = "daily" if self.scope in ("daily", "pool") else "hourly"
            whose = "this server's shared" if self.scope == "pool" else "your"
            return f"This request needs {requested} images but {whose} {window} limit is {limit}."
        if self.scope == "pool":
            text = f"This server has used {used} of its {limit} shared {noun} for {period}."
        else:
            text = f"You've used {used} of your {limit} {noun} {'for ' if period == 'today' else ''}{period}."
        if used < limit:
            text += f" This request needs {requested}."
        if self.resets_at is not None and now is not None and self.resets_at > now:
            text += f" Try again in {_wait_text(self.resets_at - now)}."
        return text

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
            f"These reference images add up to {_mib(total_bytes)}; one request can carry at most "
            f"{_mib(limit_bytes)}. Use fewer or smaller images."
        )


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


class JobNotFound(LookupError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id
