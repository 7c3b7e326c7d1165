"""SqlHealthRepository on SQLite and PostgreSQL: one circuit breaker per provider for every worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage import schema
from bot.storage.queue import HealthRepository
from bot.storage.queue_sql import CALLS_MAX_AGE, SqlHealthRepository
from tests.storage.sql_support import T0, engine, engines, sql_url  # noqa: F401

COOLDOWN = 60.0
PROBE = 30.0
THRESHOLD = 3


@pytest.fixture
def health(engine: AsyncEngine) -> SqlHealthRepository:  # noqa: F811
    return SqlHealthRepository(engine)


async def fail(health: SqlHealthRepository, now: float, provider: str = "p", latency: float = 1.0) -> None:
    await health.record(provider, False, latency, now, failure_threshold=THRESHOLD)


async def succeed(health: SqlHealthRepository, now: float, provider: str = "p", latency: float = 1.0) -> None:
    await health.record(provider, True, latency, now, failure_threshold=THRESHOLD)


async def allow(health: SqlHealthRepository, now: float, provider: str = "p") -> bool:
    return await health.allow(provider, now, cooldown=COOLDOWN, probe_timeout=PROBE)


async def state(health: SqlHealthRepository, now: float, provider: str = "p") -> tuple[str, int]:
    rows = {row.provider: row for row in await health.snapshot(now, cooldown=COOLDOWN)}
    return rows[provider].state, rows[provider].consecutive_failures


def test_implements_the_protocol(health: SqlHealthRepository) -> None:
    assert isinstance(health, HealthRepository)


async def test_breaker_opens_after_consecutive_failures_and_a_probe_closes_it(
    health: SqlHealthRepository,
) -> None:
    assert await allow(health, T0) is True  # never seen: closed
    await fail(health, T0)
    await fail(health, T0 + 1)
    await succeed(health, T0 + 2)  # a success resets the count
    await fail(health, T0 + 3)
    await fail(health, T0 + 4)
    assert await state(health, T0 + 4) == ("closed", 2)
    assert await allow(health, T0 + 4) is True
    await fail(health, T0 + 5)  # the third in a row
    assert await state(health, T0 + 5) == ("open", 3)
    assert await allow(health, T0 + 5) is False
    assert await allow(health, T0 + 5 + COOLDOWN - 1) is False

    half_open = T0 + 5 + COOLDOWN
    assert await state(health, half_open) == ("half-open", 3)
    assert await allow(health, half_open) is True  # the probe
    assert await allow(health, half_open + 1) is False  # only one
    await succeed(health, half_open + 2)
    assert await state(health, half_open + 2) == ("closed", 0)
    assert await allow(health, half_open + 2) is True
    assert await allow(health, half_open + 2) is True


async def test_failed_probe_opens_the_breaker_again(health: SqlHealthRepository) -> None:
    for n in range(THRESHOLD):
        await fail(health, T0 + n)
    half_open = T0 + THRESHOLD + COOLDOWN
    assert await allow(health, half_open) is True
    await fail(health, half_open + 1)
    assert await state(health, half_open + 1) == ("open", THRESHOLD + 1)
    assert await allow(health, half_open + 2) is False
    assert await allow(health, half_open + 1 + COOLDOWN) is True  # the next probe, a cooldown later


async def test_probe_is_given_again_after_its_timeout_or_release(health: SqlHealthRepository) -> None:
    for n in range(THRESHOLD):
        await fail(health, T0 + n)
    half_open = T0 + THRESHOLD + COOLDOWN
    assert await allow(health, half_open) is True
    assert await allow(health, half_open + PROBE - 1) is False
    assert await allow(health, half_open + PROBE + 1) is True  # the first prober never answered
    await health.release_probe("p")  # that one ended without a verdict
    assert await allow(health, half_open + PROBE + 2) is True
    assert await state(health, half_open + PROBE + 2) == ("half-open", THRESHOLD)


async def test_exactly_one_probe_across_engines(engines: Callable[[], AsyncEngine]) -> None:  # noqa: F811
    repos = [SqlHealthRepository(engines()) for _ in range(4)]
    for round_ in range(5):
        opened = T0 + round_ * 1000
        for n in range(THRESHOLD):
            await fail(repos[0], opened + n / 10)
        half_open = opened + 1 + COOLDOWN
        answers = await asyncio.gather(*(allow(repo, half_open) for repo in repos for _ in range(3)))
        assert sorted(answers) == [False] * 11 + [True]
        await succeed(repos[1], half_open + 1)
        assert all(await asyncio.gather(*(allow(repo, half_open + 1) for repo in repos)))


async def test_a_failure_seen_by_one_worker_is_skipped_by_all(
    engines: Callable[[], AsyncEngine],  # noqa: F811
) -> None:
    one, other = SqlHealthRepository(engines()), SqlHealthRepository(engines())
    for n in range(THRESHOLD):
        await fail(one, T0 + n, provider="q")
    assert await allow(other, T0 + 10, "q") is False
    assert await allow(other, T0 + 10, "p") is True


async def test_snapshot_figures(health: SqlHealthRepository) -> None:
    await succeed(health, T0, latency=2.0)
    await succeed(health, T0 + 1, latency=4.0)
    await fail(health, T0 + 2, latency=30.0)  # failures count for the error rate, not the latency
    await succeed(health, T0 + 3, latency=3.0)
    await succeed(health, T0 + 4, provider="q", latency=0.5)
    rows = await health.snapshot(T0 + 5, cooldown=COOLDOWN)
    assert [(r.provider, r.state, r.consecutive_failures, r.calls) for r in rows] == [
        ("p", "closed", 0, 4),
        ("q", "closed", 0, 1),
    ]
    p = rows[0]
    assert p.error_rate == pytest.approx(0.25)
    assert p.median_latency_s == pytest.approx(3.0)
    assert rows[1].median_latency_s == pytest.approx(0.5)

    recent = {r.provider: r for r in await health.snapshot(T0 + 5, cooldown=COOLDOWN, window=2)}
    assert recent["p"].calls == 2  # the newest two: the failure and the 3.0 s success
    assert recent["p"].error_rate == pytest.approx(0.5)
    assert recent["p"].median_latency_s == pytest.approx(3.0)

    for n in range(THRESHOLD):
        await fail(health, T0 + 10 + n, provider="r")
    only_failures = {r.provider: r for r in await health.snapshot(T0 + 20, cooldown=COOLDOWN)}["r"]
    assert (only_failures.state, only_failures.error_rate, only_failures.median_latency_s) == (
        "open",
        1.0,
        None,
    )


async def test_old_calls_are_pruned(health: SqlHealthRepository, engine: AsyncEngine) -> None:  # noqa: F811
    await succeed(health, T0)
    await succeed(health, T0 + 1, provider="q")
    later = T0 + CALLS_MAX_AGE + 10
    await succeed(health, later)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(schema.provider_calls.c.provider, func.count()).group_by(
                    schema.provider_calls.c.provider
                )
            )
        ).all()
    assert sorted(rows) == [("p", 1), ("q", 1)]  # p's old call went; q's waits for q's next record
    rows_now = {r.provider: r.calls for r in await health.snapshot(later, cooldown=COOLDOWN)}
    assert rows_now == {"p": 1, "q": 0}


async def test_calls_beyond_the_kept_number_are_pruned(engine: AsyncEngine) -> None:  # noqa: F811
    health = SqlHealthRepository(engine, keep_calls=3, prune_every=1)
    for n in range(6):
        await succeed(health, T0 + n, latency=float(n))
    await succeed(health, T0 + 6, provider="q")
    rows = {r.provider: r for r in await health.snapshot(T0 + 7, cooldown=COOLDOWN, window=50)}
    assert (rows["p"].calls, rows["p"].median_latency_s) == (3, 4.0)  # the newest three: 3, 4, 5
    assert rows["q"].calls == 1


async def test_quiet_successes_are_written_together(engine: AsyncEngine) -> None:  # noqa: F811
    """Successes at a closed breaker without failures change only the figures: kept, then written in one
    go (by the timer, a failure or a snapshot); a failure is written at once, after them."""
    health = SqlHealthRepository(engine, flush_after=30.0)

    async def calls() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(schema.provider_calls))).scalar())

    assert await allow(health, T0) is True
    for n in range(5):
        await succeed(health, T0 + n)
    assert await calls() == 0  # waiting in memory
    rows = {r.provider: r for r in await health.snapshot(T0 + 5, cooldown=COOLDOWN)}
    assert (rows["p"].calls, rows["p"].error_rate) == (5, 0.0)  # a snapshot writes them first
    for n in range(2):
        await succeed(health, T0 + 6 + n)
    await fail(health, T0 + 8)  # written at once, with the two successes before it
    assert await calls() == 8
    assert await state(health, T0 + 8) == ("closed", 1)
    assert await allow(health, T0 + 9) is True
    await succeed(health, T0 + 9)  # after a failure: resets the count at once
    assert await calls() == 9 and await state(health, T0 + 9) == ("closed", 0)

    timed = SqlHealthRepository(engine, flush_after=0.05)
    assert await allow(timed, T0 + 10) is True
    await succeed(timed, T0 + 10)
    assert await calls() == 9
    for _ in range(100):
        await asyncio.sleep(0.02)
        if await calls() == 10:
            break
    assert await calls() == 10  # the timer wrote it
    await timed.aclose()
