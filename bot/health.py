"""Provider health: a circuit breaker per provider and the recent figures `/palette status` shows.

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
