"""Provider health: a circuit breaker per provider and the recent figures `/palette status` shows.

The bot shares this state between its processes through the database
(:class:`bot.storage.queue.HealthRepository`); :class:`LocalHealth` is the same contract in memory, for
the command line.

Closed: calls go through. After ``failure_threshold`` consecutive provider faults the breaker opens and
the provider is skipped (jobs fail over to the next route) for ``cooldown`` seconds; then it is
half-open and exactly one call probes it: success closes it, failure opens it again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from statistics import median

from bot.storage.queue import ProviderHealthRow


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.cooldown = cooldown
        self.clock = clock
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self.opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go to this provider now (claims the probe slot when half-open)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self._probing or self.consecutive_failures >= self.failure_threshold:
            self.opened_at = self.clock()
        self._probing = False

    def release(self) -> None:
        """A claimed probe ended without a verdict (e.g. the user's request was invalid)."""
        self._probing = False


@dataclass(frozen=True)
class HealthSnapshot:
    provider: str
    state: BreakerState
    calls: int
    error_rate: float
    median_latency_s: float | None
    consecutive_failures: int


class ProviderHealth:
    """Breaker plus a window of recent outcomes for one provider."""

    def __init__(self, provider: str, breaker: CircuitBreaker, window: int = 50) -> None:
        self.provider = provider
        self.breaker = breaker
        self._recent: deque[tuple[bool, float]] = deque(maxlen=window)

    def success(self, latency_s: float) -> None:
        self.breaker.record_success()
        self._recent.append((True, latency_s))

    def failure(self, latency_s: float) -> None:
        self.breaker.record_failure()
        self._recent.append((False, latency_s))

    def snapshot(self) -> HealthSnapshot:
        calls = len(self._recent)
        errors = sum(1 for ok, _ in self._recent if not ok)
        latencies = [lat for ok, lat in self._recent if ok]
        return HealthSnapshot(
            provider=self.provider,
            state=self.breaker.state,
            calls=calls,
            error_rate=errors / calls if calls else 0.0,
            median_latency_s=median(latencies) if latencies else None,
            consecutive_failures=self.breaker.consecutive_failures,
        )


class LocalHealth:
    """:class:`bot.storage.queue.HealthRepository` in memory, for one process without a shared database
    (the ``generate`` command, unit tests). The bot itself shares its breakers through the database.

    Breakers are made on first use with the thresholds of that call; ``now`` is not needed here (the
    breakers keep their own monotonic clock) and a probe cannot outlive its process.
    """

    def __init__(self, *, window: int = 50, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._health: dict[str, ProviderHealth] = {}
        self._cooldown: float = 60.0
        self._threshold: int = 5

    def _get(self, provider: str) -> ProviderHealth:
        health = self._health.get(provider)
        if health is None:
            breaker = CircuitBreaker(
                failure_threshold=self._threshold, cooldown=self._cooldown, clock=self.clock
            )
            health = self._health[provider] = ProviderHealth(provider, breaker, self.window)
        return health

    async def allow(self, provider: str, now: float, *, cooldown: float, probe_timeout: float) -> bool:
        self._cooldown = cooldown
        health = self._get(provider)
        health.breaker.cooldown = cooldown
        return health.breaker.allow()

    async def record(
        self, provider: str, ok: bool, latency_s: float, now: float, *, failure_threshold: int
    ) -> None:
        self._threshold = max(1, failure_threshold)
        health = self._get(provider)
        health.breaker.failure_threshold = self._threshold
        if ok:
            health.success(latency_s)
        else:
            health.failure(latency_s)

    async def release_probe(self, provider: str) -> None:
        if provider in self._health:
            self._health[provider].breaker.release()

    async def snapshot(self, now: float, *, cooldown: float, window: int = 50) -> list[ProviderHealthRow]:
        rows = []
        for name in sorted(self._health):
            snap = self._health[name].snapshot()
            rows.append(
                ProviderHealthRow(
                    provider=snap.provider,
                    state=str(snap.state),
                    consecutive_failures=snap.consecutive_failures,
                    calls=snap.calls,
                    error_rate=snap.error_rate,
                    median_latency_s=snap.median_latency_s,
                )
            )
        return rows
