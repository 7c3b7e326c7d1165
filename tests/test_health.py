from __future__ import annotations

from bot.health import BreakerState, CircuitBreaker, ProviderHealth


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=30, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 29.9
    assert not breaker.allow()
    clock.now = 30.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # no second caller while the probe runs
    breaker.record_failure()  # failed probe: open again for a full cool-down
    assert breaker.state is BreakerState.OPEN
    clock.now = 60.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.allow()


def test_released_probe_lets_the_next_caller_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1, clock=clock)
    breaker.record_failure()
    clock.now = 1
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_health_snapshot_reports_error_rate_and_latency() -> None:
    health = ProviderHealth("p", CircuitBreaker(failure_threshold=10))
    health.success(1.0)
    health.success(3.0)
    health.failure(0.5)
    snap = health.snapshot()
    assert snap.calls == 3 and abs(snap.error_rate - 1 / 3) < 1e-9
    assert snap.median_latency_s == 2.0 and snap.consecutive_failures == 1


async def test_local_health_keeps_the_health_repository_contract() -> None:
    """The command line's breakers: the same calls as the shared ones, kept in memory."""
    from bot.health import LocalHealth

    clock = Clock()
    health = LocalHealth(clock=clock)
    assert await health.allow("p", 0, cooldown=30, probe_timeout=60)
    for _ in range(2):
        await health.record("p", False, 0.5, 0, failure_threshold=2)
    assert not await health.allow("p", 0, cooldown=30, probe_timeout=60)
    clock.now = 30
    assert await health.allow("p", 0, cooldown=30, probe_timeout=60)  # the one probe
    assert not await health.allow("p", 0, cooldown=30, probe_timeout=60)
    await health.release_probe("p")  # it ended without a verdict: the next caller probes
    assert await health.allow("p", 0, cooldown=30, probe_timeout=60)
    await health.record("p", True, 1.5, 0, failure_threshold=2)
    (row,) = await health.snapshot(0, cooldown=30)
    assert (row.provider, row.state, row.calls, row.consecutive_failures) == ("p", "closed", 3, 0)
    assert abs(row.error_rate - 2 / 3) < 1e-9 and row.median_latency_s == 1.5
