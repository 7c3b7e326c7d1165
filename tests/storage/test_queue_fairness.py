"""Round-robin across users holds while jobs finish: a user served while their next job waited goes to the
back (as the old in-memory dispatcher's rotation did), on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage import schema
from bot.storage.queue_sql import SqlQueueRepository
from tests.storage.sql_support import T0, add_job, engine, engines, sql_url  # noqa: F401

LEASE = 30.0


async def settle(engine: AsyncEngine, job_id: int) -> None:  # noqa: F811
    async with engine.begin() as conn:
        await conn.execute(
            update(schema.jobs).where(schema.jobs.c.id == job_id).values(status="done", worker_id=None)
        )
        await conn.execute(
            update(schema.provider_slots)
            .where(schema.provider_slots.c.job_id == job_id)
            .values(job_id=None, worker_id=None, lease_expires_at=None)
        )


async def test_a_user_whose_job_finished_waits_behind_users_not_served_yet(engine: AsyncEngine) -> None:  # noqa: F811
    repo = SqlQueueRepository(engine)
    try:
        await repo.sync_slots({"p": 1})
        a1 = await add_job(engine, 1, created_at=T0)
        a2 = await add_job(engine, 1, created_at=T0 + 1)
        b1 = await add_job(engine, 2, created_at=T0 + 2)  # queued after A's second job
        c1 = await add_job(engine, 3, created_at=T0 + 3)
        first = await repo.claim("w", T0 + 10, LEASE)
        assert first is not None and first.job.id == a1
        await settle(engine, a1)
        # A was served while a2 waited: B and C (not served yet) go first, although a2 is older.
        assert [await repo.position(j) for j in (b1, c1, a2)] == [1, 2, 3]
        order = []
        for now in (T0 + 20, T0 + 30, T0 + 40):
            claim = await repo.claim("w", now, LEASE)
            assert claim is not None
            order.append(claim.job.id)
            await settle(engine, claim.job.id)
        assert order == [b1, c1, a2]
    finally:
        await repo.aclose()


async def test_a_user_who_comes_back_later_queues_behind_those_waiting(engine: AsyncEngine) -> None:  # noqa: F811
    repo = SqlQueueRepository(engine)
    try:
        await repo.sync_slots({"p": 1})
        a1 = await add_job(engine, 1, created_at=T0)
        assert (await repo.claim("w", T0 + 1, LEASE)).job.id == a1  # type: ignore[union-attr]
        b1 = await add_job(engine, 2, created_at=T0 + 2)
        a2 = await add_job(engine, 1, created_at=T0 + 3)  # A asks again while its first job runs
        await settle(engine, a1)
        assert [await repo.position(j) for j in (b1, a2)] == [1, 2]
    finally:
        await repo.aclose()
