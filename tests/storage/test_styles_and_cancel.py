"""Styles and cancelling in storage (issue 12), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from bot.storage import Database, Limits
from bot.storage.styles import StyleImage
from bot.styles import StyleProblem, StyleService
from tests.storage.factories import new_job

NOW = 1_700_000_000.0


async def test_styles_are_saved_replaced_listed_and_deleted(db: Database) -> None:
    service = StyleService(db.styles, clock=lambda: NOW)
    png = StyleImage(mime_type="image/png", data=b"\x89PNG fake bytes")
    saved = await service.save(
        "personal", user_id=1, guild_id=10, name=" Water  Color ", template="{prompt}, wet", images=[png]
    )
    assert saved.name == "water color" and saved.references == 1
    await service.save("server", user_id=2, guild_id=10, name="house", template="{prompt}, house")
    await service.save("server", user_id=2, guild_id=11, name="elsewhere", template="{prompt}")
    replaced = await service.save(
        "personal", user_id=1, guild_id=10, name="water color", template="wet {prompt}", model="gpt-image-2"
    )
    assert replaced.id == saved.id and replaced.references == 0 and replaced.model == "gpt-image-2"
    assert [(s.scope, s.name) for s in await service.usable(1, 10)] == [
        ("personal", "water color"),
        ("server", "house"),
    ]
    assert [s.name for s in await service.usable(1, None)] == ["water color"]
    found = await service.resolve("water color", user_id=1, guild_id=10)
    assert found.expand("rain", max_length=100) == "wet rain" and found.images == ()
    with pytest.raises(StyleProblem) as problem:
        await service.find("me:house", user_id=1, guild_id=10)
    assert problem.value.kind == "not_found"
    assert (await service.find("house", user_id=1, guild_id=10)).scope == "server"
    assert await service.delete(found.record)
    assert [s.name for s in await service.usable(1, 10)] == ["house"]


async def test_cancel_refunds_once_and_not_after_settling(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(count=3), Limits(), NOW)
    assert await db.jobs.cancel_job(job.id, 99, NOW + 1)
    assert not await db.jobs.cancel_job(job.id, 99, NOW + 2)
    assert not await db.jobs.finish_job(job.id, 3, now=NOW + 3)  # a late result changes nothing
    after = await db.jobs.get_job(job.id)
    assert after is not None and after.status == "cancelled" and after.refunded == 3 and after.committed == 0
    assert after.cancelled_by == 99 and await db.jobs.job_status(job.id) == "cancelled"
    done = await db.jobs.reserve_job(new_job(), Limits(), NOW)
    assert await db.jobs.finish_job(done.id, 1, now=NOW + 1)
    assert not await db.jobs.cancel_job(done.id, 99, NOW + 2)
    assert (await db.jobs.ledger_balance()).balanced


async def test_a_cancelled_job_is_never_claimed_in_a_batch(db: Database) -> None:
    """claim_many (perf's batched claims) passes over cancelled jobs: queued ones, and a running one whose
    lease ran out (which a claim would otherwise take over), and their slots go to the others."""
    from bot.storage.queue_sql import SqlQueueRepository

    queue = SqlQueueRepository(db.engine)
    try:
        await queue.sync_slots({"listenhub": 2})
        jobs = [await db.jobs.reserve_job(new_job(user_id=u), Limits(), NOW + u) for u in range(1, 5)]
        for job in jobs:
            assert await queue.set_queue_provider(job.id, "listenhub")
        first = await queue.claim("w1", NOW + 10, 30.0)
        assert first is not None and first.job.id == jobs[0].id
        assert await db.jobs.cancel_job(jobs[0].id, 1, NOW + 11)  # running, then cancelled
        assert await db.jobs.cancel_job(jobs[1].id, 2, NOW + 11)  # still queued
        # Long after the first job's lease ran out: only the two live jobs are taken, one slot each.
        claims = await queue.claim_many("w2", NOW + 100, 30.0, 4)
        assert sorted(c.job.id for c in claims) == [jobs[2].id, jobs[3].id]
        assert sorted(c.slot for c in claims) == [0, 1]
        assert await queue.claim_many("w3", NOW + 101, 30.0, 4) == []  # the live ones hold both slots
        assert not await queue.renew(jobs[0].id, "w1", NOW + 200)  # the first worker learns it
        assert await queue.position(jobs[1].id) is None
    finally:
        await queue.aclose()
    assert (await db.jobs.ledger_balance()).balanced


async def test_cancelling_on_sqlite_waits_for_the_write_lock(sqlite_db: Database) -> None:
    """Cancelling writes through the process's SQLite write lock (bot.storage.engine.begin_write), the
    one the queue's claims take, so it queues behind them instead of in SQLite's busy handler."""
    import asyncio

    from bot.storage.engine import write_lock

    job = await sqlite_db.jobs.reserve_job(new_job(), Limits(), NOW)
    lock = write_lock(sqlite_db.engine)
    async with lock:
        cancel = asyncio.create_task(sqlite_db.jobs.cancel_job(job.id, 1, NOW + 1))
        await asyncio.sleep(0.05)
        assert not cancel.done()  # waiting for the lock, nothing written yet
        assert await sqlite_db.jobs.job_status(job.id) == "queued"
    assert await cancel
    assert await sqlite_db.jobs.job_status(job.id) == "cancelled"
