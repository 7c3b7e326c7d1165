"""reserve_job: the atomic quota operation, and usage()."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from sqlalchemy import text

from bot.config import Settings
from bot.errors import ValidationError
from bot.storage import Database, JobRecord, Limits, QuotaExceeded, open_database
from bot.storage.records import UsageSnapshot

from .factories import DAY, HOUR, NOW, claim_job, new_job, reference


async def fill(db: Database, count: int, at: float, user_id: int = 1, **kw: Any) -> list[JobRecord]:
    """``count`` one-image jobs created at ``at`` and finished as delivered (so they count but are not in
    flight)."""
    jobs = []
    for _ in range(count):
        job = await db.jobs.reserve_job(new_job(user_id=user_id, **kw), Limits(), at)
        await db.jobs.finish_job(job.id, job.count, now=at + 1)
        jobs.append(job)
    return jobs


async def test_reserve_creates_a_queued_job_with_its_reservation(db: Database) -> None:
    request = new_job(
        count=3, params={"seed": 42, "aspect_ratio": "16:9", "extra": [1, "ü"]}, interaction_token="tok",
        interaction_created_at=NOW - 1, references=(reference(),),
    )  # fmt: skip
    job = await db.jobs.reserve_job(request, Limits(daily=10, hourly=5, max_concurrent=1), NOW)
    assert job.id > 0
    assert job.status == "queued"
    assert (job.count, job.reserved, job.committed, job.refunded) == (3, 3, 0, 0)
    assert job.params_dict == {"seed": 42, "aspect_ratio": "16:9", "extra": [1, "ü"]}
    assert json.loads(job.params) == job.params_dict  # stored as JSON text
    assert job.created_at == NOW
    assert job.interaction_token == "tok"
    assert "tok" not in repr(job)
    assert await db.jobs.get_job(job.id) == job
    ledger = await db.fetchall("SELECT job_id, user_id, guild_id, entry, amount, created_at FROM ledger")
    assert [tuple(r) for r in ledger] == [(job.id, 1, 100, "reserve", 3, NOW)]
    assert len(await db.jobs.get_references(job.id)) == 1


async def test_params_may_be_given_as_json_text(db: Database) -> None:
    text = json.dumps({"seed": None, "resolution": "2K", "upload_limit": 10_000_000})
    job = await db.jobs.reserve_job(new_job(params=text), Limits(), NOW)
    assert json.loads(job.params) == {"seed": None, "resolution": "2K", "upload_limit": 10_000_000}
    with pytest.raises(ValueError):
        new_job(params="[1, 2]")
    with pytest.raises(ValueError):
        new_job(params="{not json")


async def test_limits_from_settings_treat_zero_as_unlimited(settings_factory: Any) -> None:
    settings: Settings = settings_factory(user_daily_limit=25, user_hourly_limit=0, user_max_concurrent=2)
    assert Limits.from_settings(settings) == Limits(daily=25, hourly=None, max_concurrent=2)
    assert Limits(daily=0, hourly=0, max_concurrent=0, guild_daily_pool=0) == Limits()
    with pytest.raises(ValueError):
        Limits(daily=-1)


async def test_daily_limit_alone(db: Database) -> None:
    limits = Limits(daily=3)
    await fill(db, 2, NOW - 20 * HOUR)
    await fill(db, 1, NOW - 3 * HOUR)
    await fill(db, 5, NOW - DAY - 1)  # outside the window
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(), limits, NOW)
    err = info.value
    assert (err.scope, err.limit, err.used, err.requested) == ("daily", 3, 3, 1)
    assert err.resets_at == pytest.approx(NOW - 20 * HOUR + DAY)
    assert isinstance(err, ValidationError)
    assert err.message.startswith("You've used 3 of your 3 images for today.")
    assert "Try again in 4 h" in err.message
    # Another user is unaffected; the hourly/concurrency limits are unset.
    for _ in range(3):
        await db.jobs.reserve_job(new_job(user_id=2), limits, NOW)
    # Once the oldest jobs leave the window, there is room again.
    job = await db.jobs.reserve_job(new_job(), limits, err.resets_at)
    assert job.status == "queued"


async def test_hourly_limit_alone(db: Database) -> None:
    limits = Limits(hourly=2)
    await fill(db, 40, NOW - 5 * HOUR)  # plenty today, nothing this hour: no daily limit
    await fill(db, 1, NOW - 50 * 60)
    await fill(db, 1, NOW - 10 * 60)
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(), limits, NOW)
    err = info.value
    assert (err.scope, err.limit, err.used) == ("hourly", 2, 2)
    assert err.resets_at == pytest.approx(NOW - 50 * 60 + HOUR)
    assert err.message.startswith("You've used 2 of your 2 images this hour.")
    await db.jobs.reserve_job(new_job(), limits, NOW + 10 * 60 + 1)


async def test_concurrent_limit_alone(db: Database) -> None:
    limits = Limits(max_concurrent=2)
    await fill(db, 100, NOW - 10)  # finished jobs do not count
    first = await db.jobs.reserve_job(new_job(), limits, NOW)
    second = await db.jobs.reserve_job(new_job(count=4), limits, NOW)
    await claim_job(db, second.id, NOW)
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(), limits, NOW)
    err = info.value
    assert (err.scope, err.limit, err.used, err.resets_at) == ("concurrent", 2, 2, None)
    assert "2 of your 2 jobs in progress" in err.message
    await db.jobs.finish_job(first.id, 1, now=NOW + 1)
    await db.jobs.reserve_job(new_job(), limits, NOW + 2)


async def test_old_stuck_jobs_still_count_as_in_flight(db: Database) -> None:
    await db.jobs.reserve_job(new_job(), Limits(), NOW - 3 * DAY)
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(), Limits(max_concurrent=1), NOW)
    assert info.value.scope == "concurrent"


@pytest.mark.parametrize("unlimited", [None, 0])
async def test_unset_limits_mean_unlimited(db: Database, unlimited: int | None) -> None:
    limits = Limits(daily=unlimited, hourly=unlimited, max_concurrent=unlimited, guild_daily_pool=unlimited)
    for _ in range(60):
        await db.jobs.reserve_job(new_job(count=4), limits, NOW)
    usage = await db.jobs.usage(1, NOW)
    assert (usage.daily_used, usage.hourly_used, usage.in_flight) == (240, 240, 60)


async def test_multi_image_request_must_fit_entirely(db: Database) -> None:
    limits = Limits(daily=25)
    await fill(db, 23, NOW - HOUR)
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(count=4), limits, NOW)
    err = info.value
    assert (err.used, err.requested) == (23, 4)
    assert "This request needs 4." in err.message
    await db.jobs.reserve_job(new_job(count=2), limits, NOW)


async def test_resets_at_waits_until_enough_images_expire(db: Database) -> None:
    """4 of 4 used by jobs of 1, 1 and 2 images (oldest first): a 1-image request fits when the first
    expires, a 2-image request when the second does, a 3-image request only when the third does."""
    limits = Limits(daily=4)
    a = await db.jobs.reserve_job(new_job(), Limits(), NOW - 10 * HOUR)
    b = await db.jobs.reserve_job(new_job(), Limits(), NOW - 8 * HOUR)
    c = await db.jobs.reserve_job(new_job(count=2), Limits(), NOW - 6 * HOUR)
    for job in (a, b, c):
        await db.jobs.finish_job(job.id, job.count, now=NOW - HOUR)
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(count=2), limits, NOW)
    assert info.value.resets_at == pytest.approx(b.created_at + DAY)
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(count=3), limits, NOW)
    assert info.value.resets_at == pytest.approx(c.created_at + DAY)
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(count=1), limits, NOW)
    assert info.value.resets_at == pytest.approx(a.created_at + DAY)
    # Just before b expires a 2-image request still does not fit; at that instant it does.
    with pytest.raises(QuotaExceeded):
        await db.jobs.reserve_job(new_job(count=2), limits, b.created_at + DAY - 0.001)
    await db.jobs.reserve_job(new_job(count=2), limits, b.created_at + DAY)


async def test_request_larger_than_the_limit_never_fits(db: Database) -> None:
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(count=5), Limits(daily=4), NOW)
    assert info.value.resets_at is None
    assert info.value.message == "This request needs 5 images but your daily limit is 4."


async def test_window_edge_a_job_exactly_24h_old_no_longer_counts(db: Database) -> None:
    await fill(db, 1, NOW - DAY)
    await fill(db, 1, NOW - DAY + 0.5)
    usage = await db.jobs.usage(1, NOW)
    assert usage.daily_used == 1
    assert usage.daily_resets_at == pytest.approx(NOW + 0.5)


async def test_refunds_free_quota(db: Database) -> None:
    limits = Limits(daily=5, hourly=5)
    job = await db.jobs.reserve_job(new_job(count=4), limits, NOW)
    with pytest.raises(QuotaExceeded):
        await db.jobs.reserve_job(new_job(count=2), limits, NOW)
    await db.jobs.finish_job(job.id, 1, now=NOW + 1)  # 3 refunded
    usage = await db.jobs.usage(1, NOW + 2)
    assert (usage.daily_used, usage.hourly_used, usage.in_flight) == (1, 1, 0)
    await db.jobs.reserve_job(new_job(count=4), limits, NOW + 2)
    failed = await db.jobs.reserve_job(new_job(), Limits(), NOW + 3)
    await db.jobs.finish_job(failed.id, 0, status="failed", error="provider down", now=NOW + 4)
    assert (await db.jobs.usage(1, NOW + 5)).daily_used == 5


async def test_usage_snapshot(db: Database) -> None:
    await fill(db, 2, NOW - 5 * HOUR)
    await fill(db, 1, NOW - 30 * 60)
    await db.jobs.reserve_job(new_job(count=2), Limits(), NOW - 60)
    await db.jobs.reserve_job(new_job(user_id=9), Limits(), NOW - 60)  # same guild, another user
    await db.jobs.reserve_job(new_job(user_id=9, guild_id=None), Limits(), NOW)  # a DM
    usage = await db.jobs.usage(1, NOW, guild_id=100)
    assert usage == UsageSnapshot(
        daily_used=5,
        hourly_used=3,
        in_flight=1,
        daily_resets_at=NOW - 5 * HOUR + DAY,
        hourly_resets_at=NOW - 30 * 60 + HOUR,
        guild_pool_used=6,
        guild_pool_resets_at=NOW - 5 * HOUR + DAY,
    )
    assert usage.remaining(Limits(daily=25, hourly=10)) == 7
    assert usage.remaining(Limits(daily=25, hourly=10, guild_daily_pool=8)) == 2
    assert usage.remaining(Limits()) is None
    empty = await db.jobs.usage(12345, NOW)
    assert (empty.daily_used, empty.in_flight, empty.daily_resets_at, empty.guild_pool_used) == (
        0,
        0,
        None,
        None,
    )


async def test_guild_daily_pool(db: Database) -> None:
    limits = Limits(guild_daily_pool=3)
    await db.jobs.reserve_job(new_job(user_id=1, count=2), limits, NOW - 2 * HOUR)
    await db.jobs.reserve_job(new_job(user_id=2), limits, NOW - HOUR)
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(user_id=3), limits, NOW)
    err = info.value
    assert (err.scope, err.limit, err.used) == ("pool", 3, 3)
    assert err.resets_at == pytest.approx(NOW - 2 * HOUR + DAY)
    assert err.message.startswith("This server has used 3 of its 3 shared images for today.")
    # Other guilds and DMs are not in this pool.
    await db.jobs.reserve_job(new_job(user_id=3, guild_id=101), limits, NOW)
    await db.jobs.reserve_job(new_job(user_id=3, guild_id=None), limits, NOW)


async def test_daily_is_reported_before_concurrency(db: Database) -> None:
    await db.jobs.reserve_job(new_job(count=3), Limits(), NOW)
    with pytest.raises(QuotaExceeded) as info:
        await db.jobs.reserve_job(new_job(), Limits(daily=3, hourly=3, max_concurrent=1), NOW)
    assert info.value.scope == "daily"


async def test_1000_concurrent_reservations_grant_exactly_the_limit(db: Database) -> None:
    limits = Limits(daily=50, hourly=None, max_concurrent=None)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(db.jobs.reserve_job(new_job(user_id=77), limits, NOW) for _ in range(1000)), return_exceptions=True
    )
    elapsed = time.perf_counter() - started
    granted = [r for r in results if isinstance(r, JobRecord)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(granted) == 50
    assert len(refused) == 950, [r for r in results if not isinstance(r, JobRecord | QuotaExceeded)][:3]
    assert len({job.id for job in granted}) == 50
    assert all(err.scope == "daily" and err.used == 50 for err in refused)
    assert await db.fetchval("SELECT COUNT(*) FROM jobs WHERE user_id = 77") == 50
    assert await db.fetchval("SELECT SUM(amount) FROM ledger WHERE user_id = 77 AND entry = 'reserve'") == 50
    assert (await db.jobs.ledger_balance()).balanced
    # Generous bound (the benchmark has the target): catches a pathological regression, not a slow machine.
    assert elapsed < 30


async def test_concurrent_limit_under_concurrency(db: Database) -> None:
    limits = Limits(max_concurrent=3)
    results = await asyncio.gather(
        *(db.jobs.reserve_job(new_job(user_id=5), limits, NOW) for _ in range(200)), return_exceptions=True
    )
    assert sum(isinstance(r, JobRecord) for r in results) == 3
    assert len(await db.jobs.unfinished_jobs()) == 3


async def test_failure_after_insert_rolls_the_reservation_back(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.storage.jobs as jobs_module

    # The reference rows cannot be written (as if the disk failed right after the job row).
    monkeypatch.setattr(jobs_module, "_INSERT_REFERENCE", text("INSERT INTO no_such_table VALUES (:job_id)"))
    with pytest.raises(Exception, match="no_such_table"):
        await db.jobs.reserve_job(new_job(references=(reference(),)), Limits(daily=5), NOW)
    for table in ("jobs", "ledger", "job_references", "reference_blobs"):
        assert await db.fetchval(f"SELECT COUNT(*) FROM {table}") == 0, table
    monkeypatch.undo()
    await db.jobs.reserve_job(new_job(references=(reference(),)), Limits(daily=5), NOW)


async def test_two_processes_never_both_pass_the_check(database_url: str) -> None:
    """Two databases objects on one database (two processes: separate engines and connections), racing for
    one user's quota: exactly the limit is granted. SQLite: BEGIN IMMEDIATE; PostgreSQL: advisory locks
    (without them, READ COMMITTED lets both see the same usage and both insert)."""
    first = await open_database(database_url)
    second = await open_database(database_url)
    try:
        limits = Limits(daily=30, guild_daily_pool=45)

        async def burst(db: Database, user_id: int) -> list[Any]:
            return await asyncio.gather(
                *(db.jobs.reserve_job(new_job(user_id=user_id), limits, NOW) for _ in range(40)),
                return_exceptions=True,
            )

        results = await asyncio.gather(burst(first, 1), burst(second, 1), burst(first, 2), burst(second, 2))
        outcomes = [r for batch in results for r in batch]
        unexpected = [r for r in outcomes if not isinstance(r, JobRecord | QuotaExceeded)]
        assert not unexpected, unexpected[:3]
        granted = [
            sum(isinstance(r, JobRecord) for b in pair for r in b) for pair in (results[:2], results[2:])
        ]
        # Each user is held to 30, and the guild pool to 45 across both users.
        assert granted[0] <= 30 and granted[1] <= 30
        assert sum(granted) == 45
        assert await first.fetchval("SELECT COUNT(*) FROM jobs") == 45
        assert (await first.jobs.ledger_balance()).balanced
    finally:
        await first.close()
        await second.close()


async def test_quota_queries_use_indexes(sqlite_db: Database) -> None:
    from bot.storage.jobs import _USAGE_SQL

    plan = await sqlite_db.fetchall(
        "EXPLAIN QUERY PLAN " + _USAGE_SQL, {"user_id": 1, "guild_id": 2, "day_start": 0, "hour_start": 0}
    )
    details = [row.detail for row in plan]
    assert not [d for d in details if d.startswith("SCAN jobs")], details
    assert any("jobs_user_created" in d for d in details)
