"""SqlQueueRepository on SQLite and PostgreSQL: fair claims, leases, provider slots, wake-ups."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage import schema
from bot.storage.engine import create_engine
from bot.storage.queue import Claim, QueueRepository
from bot.storage.queue_sql import SqlQueueRepository
from tests.conftest import fresh_postgres_database
from tests.storage.sql_support import T0, add_job, create_tables, engine, engines, sql_url  # noqa: F401

LEASE = 30.0


@pytest.fixture
async def repo(engine: AsyncEngine) -> SqlQueueRepository:  # noqa: F811
    repository = SqlQueueRepository(engine)
    yield repository
    await repository.aclose()


async def job_row(engine: AsyncEngine, job_id: int) -> dict:  # noqa: F811
    async with engine.connect() as conn:
        row = (await conn.execute(select(schema.jobs).where(schema.jobs.c.id == job_id))).one()
    return dict(row._mapping)


async def slot_rows(engine: AsyncEngine, provider: str) -> list[dict]:  # noqa: F811
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(schema.provider_slots)
            .where(schema.provider_slots.c.provider == provider)
            .order_by(schema.provider_slots.c.slot)
        )
        return [dict(row._mapping) for row in rows]


async def finish(engine: AsyncEngine, job_id: int) -> None:  # noqa: F811
    async with engine.begin() as conn:
        await conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(status="done"))


def test_implements_the_protocol(repo: SqlQueueRepository) -> None:
    assert isinstance(repo, QueueRepository)


# --- fairness ------------------------------------------------------------------------------------------


async def test_claims_go_round_robin_over_users_and_positions_agree(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 10})
    a = [await add_job(engine, 1, created_at=T0 + i) for i in range(5)]
    b1 = await add_job(engine, 2, created_at=T0 + 10)
    c1 = await add_job(engine, 3, created_at=T0 + 11)
    expected = [a[0], b1, c1, a[1], a[2], a[3], a[4]]

    assert [await repo.position(job_id) for job_id in expected] == [1, 2, 3, 4, 5, 6, 7]

    claimed = []
    for n, job_id in enumerate(expected):
        # What the queue shows is what the workers honour: the next claim is the job in first place.
        assert await repo.position(job_id) == 1
        claim = await repo.claim(f"w{n % 2}", T0 + 100, LEASE)
        assert claim is not None
        claimed.append(claim.job.id)
        assert await repo.position(job_id) is None  # no longer queued
    assert claimed == expected
    assert await repo.claim("w0", T0 + 100, LEASE) is None


async def test_a_thousand_jobs_of_two_hundred_users_are_served_one_per_user_per_round(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 400})
    rng = random.Random(3)
    users = [user for user in range(200) for _ in range(5)]
    rng.shuffle(users)
    rows = [
        {"user_id": user, "kind": "imagine", "model": "m", "prompt": "x", "count": 1, "reserved": 1,
         "created_at": T0 + n, "queue_provider": "p", "status": "queued"}
        for n, user in enumerate(users)
    ]  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(insert(schema.jobs), rows)
    assert (await repo.depth()).queued == 1000
    served = [(await repo.claim("w", T0 + 2000, LEASE)).job.user_id for _ in range(300)]  # type: ignore[union-attr]
    assert sorted(served[:200]) == list(range(200))  # everyone's first job before anyone's second
    assert len(set(served[200:])) == 100


async def test_new_users_job_goes_before_an_earlier_users_second_job(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 10})
    a1 = await add_job(engine, 1, created_at=T0)
    a2 = await add_job(engine, 1, created_at=T0 + 1)
    b1 = await add_job(engine, 2, created_at=T0 + 50)  # later, but B's first job
    assert await repo.position(b1) == 2
    assert await repo.position(a2) == 3
    order = [(await repo.claim("w", T0 + 60, LEASE)).job.id for _ in range(3)]  # type: ignore[union-attr]
    assert order == [a1, b1, a2]


async def test_claim_many_takes_what_claims_one_by_one_would(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    """One look at the queue for several claims: the same fair order, one slot each, the provider's cap
    and other providers' jobs respected, in batches of CLAIM_BATCH transactions."""
    await repo.sync_slots({"p": 12, "q": 1})
    a = [await add_job(engine, 1, created_at=T0 + i) for i in range(8)]
    b = [await add_job(engine, 2, created_at=T0 + 10 + i) for i in range(4)]
    c1 = await add_job(engine, 3, created_at=T0 + 20)
    q1 = await add_job(engine, 4, created_at=T0 + 21, queue_provider="q")
    q2 = await add_job(engine, 5, created_at=T0 + 22, queue_provider="q")  # q is full after q1
    expected = [a[0], b[0], c1, q1, a[1], b[1], a[2], b[2], a[3], b[3], a[4], a[5], a[6]]
    assert [await repo.position(job_id) for job_id in expected[:4]] == [1, 2, 3, 4]

    claims = await repo.claim_many("w1", T0 + 100, LEASE, 20)
    assert [claim.job.id for claim in claims] == expected
    assert sorted((claim.provider, claim.slot) for claim in claims) == sorted(
        [("p", n) for n in range(12)] + [("q", 0)]
    )
    assert all(claim.job.status == "running" and claim.job.worker_id == "w1" for claim in claims)
    assert [row["job_id"] for row in await slot_rows(engine, "p")] == [
        claim.job.id for claim in sorted(claims, key=lambda c: (c.provider, c.slot)) if claim.provider == "p"
    ]
    assert await repo.claim_many("w2", T0 + 100, LEASE, 5) == []  # every slot is held
    assert await repo.position(q2) is not None and await repo.position(a[7]) is not None


async def test_claim_many_from_two_workers_never_shares_a_job_or_slot(
    engines: Callable[[], AsyncEngine],  # noqa: F811
) -> None:
    first, second = SqlQueueRepository(engines()), SqlQueueRepository(engines())
    try:
        await first.sync_slots({"p": 30})
        engine = engines()
        for n in range(60):
            await add_job(engine, n % 7, created_at=T0 + n)
        got = await asyncio.gather(
            *(repo.claim_many(f"w{n}", T0 + 100, LEASE, 10) for n, repo in enumerate([first, second] * 2))
        )
        claims = [claim for batch in got for claim in batch]
        assert len(claims) == 30
        assert len({claim.job.id for claim in claims}) == 30
        assert len({claim.slot for claim in claims}) == 30
    finally:
        await first.aclose()
        await second.aclose()


async def test_positions_asked_together_are_ranked_together(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    from sqlalchemy import event

    jobs = [await add_job(engine, n % 4, created_at=T0 + n) for n in range(20)]
    alone = [await repo.position(job_id) for job_id in jobs]
    assert sorted(alone) == list(range(1, 21))  # type: ignore[type-var]
    rankings = 0

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        nonlocal rankings
        rankings += "ranked.place" in statement

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        together = await asyncio.gather(*(repo.position(job_id) for job_id in [*jobs, 999_999]))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert together == [*alone, None]
    assert 1 <= rankings <= 2  # the first call's ranking, then one for everyone who asked meanwhile


# --- claims and slots ----------------------------------------------------------------------------------


async def test_claim_writes_the_job_and_its_slot(engine: AsyncEngine, repo: SqlQueueRepository) -> None:  # noqa: F811
    await repo.sync_slots({"p": 2})
    job_id = await add_job(engine, 1)
    claim = await repo.claim("w1", T0 + 5, LEASE)
    assert isinstance(claim, Claim)
    assert (claim.job.id, claim.job.status, claim.provider, claim.slot) == (job_id, "running", "p", 0)
    assert claim.lease_expires_at == T0 + 5 + LEASE
    assert claim.taken_over is False
    assert claim.delivery is None
    assert claim.job.started_at == T0 + 5
    row = await job_row(engine, job_id)
    assert (row["status"], row["worker_id"], row["lease_expires_at"]) == ("running", "w1", T0 + 35)
    slots = await slot_rows(engine, "p")
    assert [(s["job_id"], s["worker_id"], s["lease_expires_at"]) for s in slots] == [
        (job_id, "w1", T0 + 35),
        (None, None, None),
    ]


async def test_nothing_to_claim(engine: AsyncEngine, repo: SqlQueueRepository) -> None:  # noqa: F811
    assert await repo.claim("w", T0, LEASE) is None  # empty queue, no slots
    job_id = await add_job(engine, 1)
    assert await repo.claim("w", T0, LEASE) is None  # no slot rows for its provider yet
    await repo.sync_slots({"p": 1})
    unrouted = await add_job(engine, 2, queue_provider=None, created_at=T0 - 10)
    claim = await repo.claim("w", T0, LEASE)
    assert claim is not None and claim.job.id == job_id  # the job without queue_provider waits
    assert await repo.claim("w", T0, LEASE) is None  # slot taken; the unrouted job is not claimable
    await repo.release_slots(job_id)
    assert await repo.claim("w", T0, LEASE) is None
    assert await repo.set_queue_provider(unrouted, "p") is True
    claim = await repo.claim("w", T0, LEASE)
    assert claim is not None and claim.job.id == unrouted
    await finish(engine, unrouted)
    assert await repo.set_queue_provider(unrouted, "q") is False  # finished jobs are left alone


async def test_full_provider_waits_while_others_go_ahead(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 1, "q": 1})
    a = await add_job(engine, 1, created_at=T0)
    b = await add_job(engine, 2, created_at=T0 + 1)
    c = await add_job(engine, 3, created_at=T0 + 2, queue_provider="q")
    first = await repo.claim("w", T0 + 5, LEASE)
    second = await repo.claim("w", T0 + 5, LEASE)
    assert (first.job.id, second.job.id) == (a, c)  # type: ignore[union-attr]
    assert await repo.claim("w", T0 + 5, LEASE) is None  # b waits for p
    assert await repo.position(b) == 1
    await repo.release_slots(a)
    third = await repo.claim("w", T0 + 6, LEASE)
    assert third is not None and (third.job.id, third.slot) == (b, 0)


async def test_release_and_claim_hands_the_slot_to_the_next_job_in_fair_order(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 1})
    a1 = await add_job(engine, 1, created_at=T0)
    a2 = await add_job(engine, 1, created_at=T0 + 1)
    b1 = await add_job(engine, 2, created_at=T0 + 2)
    first = await repo.claim("w", T0 + 5, LEASE)
    assert first is not None and first.job.id == a1
    assert await repo.claim("w", T0 + 5, LEASE) is None  # p is full
    # Done with p: its one slot goes to the next job in the fair order (user 2 before user 1's second).
    got = await repo.release_and_claim([a1], "w", ["p"], T0 + 6, LEASE, 4)
    assert [(c.job.id, c.provider, c.slot) for c in got] == [(b1, "p", 0)]
    assert [(r["job_id"], r["worker_id"]) for r in await slot_rows(engine, "p")] == [(b1, "w")]
    assert (await job_row(engine, b1))["status"] == "running"
    assert (await job_row(engine, a2))["status"] == "queued" and await repo.position(a2) == 1
    # No room: the slot is only released, and the next claim (anyone's) takes it.
    assert await repo.release_and_claim([b1], "w", ["p"], T0 + 7, LEASE, 0) == []
    assert [r["job_id"] for r in await slot_rows(engine, "p")] == [None]
    taken = await repo.claim("w2", T0 + 8, LEASE)
    assert taken is not None and taken.job.id == a2


async def test_release_and_claim_hands_on_several_jobs_slots_at_once(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 2})
    running = [await add_job(engine, u, created_at=T0 + u) for u in (1, 2)]
    waiting = [await add_job(engine, u, created_at=T0 + 10 + u) for u in (3, 4, 5)]
    assert len(await repo.claim_many("w", T0 + 20, LEASE, 4)) == 2
    got = await repo.release_and_claim(running, "w", ["p"], T0 + 21, LEASE, 4)
    assert [c.job.id for c in got] == waiting[:2]  # two slots freed, two jobs started, in order
    assert sorted(r["job_id"] for r in await slot_rows(engine, "p")) == waiting[:2]


async def test_release_and_claim_frees_only_this_workers_slots(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 1})
    job = await add_job(engine, 1, created_at=T0)
    await add_job(engine, 2, created_at=T0 + 1)
    assert (await repo.claim("new-owner", T0, LEASE)) is not None
    # A worker that lost the job (taken over) cleans up: the new owner's slot stays its own.
    assert await repo.release_and_claim([job], "old-owner", ["p"], T0 + 1, LEASE, 4) == []
    assert [(r["job_id"], r["worker_id"]) for r in await slot_rows(engine, "p")] == [(job, "new-owner")]


async def test_release_and_claim_wakes_others_only_for_a_slot_left_free(
    engines: Callable[[], AsyncEngine],  # noqa: F811
) -> None:
    engine_a, engine_b = engines(), engines()
    waiter, worker = SqlQueueRepository(engine_a), SqlQueueRepository(engine_b)
    try:
        await worker.sync_slots({"p": 1})
        first = await add_job(engine_b, 1)
        second = await add_job(engine_b, 2, created_at=T0 + 1)
        assert await worker.claim("w", T0, LEASE) is not None
        assert await waiter.wait_for_work(0.01) is True  # the first call always says "look"
        waiting = asyncio.create_task(waiter.wait_for_work(30))
        await asyncio.sleep(0.05)
        handed = await worker.release_and_claim([first], "w", ["p"], T0 + 1, LEASE, 1)
        assert [c.job.id for c in handed] == [second]
        # Nothing was left free: on PostgreSQL no NOTIFY is sent; SQLite's waiter may still see the
        # commit (it polls data_version), so only the state is checked there.
        if engine_a.dialect.name == "postgresql":
            await asyncio.sleep(0.3)
            assert not waiting.done()
        await worker.release_and_claim([second], "w", ["p"], T0 + 2, LEASE, 0)
        assert await asyncio.wait_for(waiting, 30) is True  # a slot left free wakes the others
    finally:
        await waiter.aclose()
        await worker.aclose()


async def test_lease_expiry_lets_another_worker_take_over(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 1})
    job_id = await add_job(engine, 1)
    old = await repo.claim("w1", T0, LEASE)
    assert old is not None
    assert await repo.claim("w2", T0 + LEASE - 1, LEASE) is None  # still w1's
    assert await repo.renew(job_id, "w1", T0 + 2 * LEASE) is True
    assert await repo.claim("w2", T0 + LEASE + 1, LEASE) is None  # renewed
    assert await repo.record_delivery(job_id, "w1", '{"message_id":7}') is True  # posted, then died

    now = T0 + 2 * LEASE + 1  # w1 stopped renewing (died)
    new = await repo.claim("w2", now, LEASE)
    assert new is not None
    assert (new.job.id, new.taken_over, new.slot) == (job_id, True, 0)
    assert new.delivery == '{"message_id":7}'  # settle from it, do not post again
    assert new.job.started_at == T0  # the first start stays
    assert await repo.renew(job_id, "w1", now + 100) is False
    assert await repo.record_delivery(job_id, "w1", '{"x":1}') is False
    assert await repo.release_job(job_id, "w1") is False
    await repo.release_slots(job_id, worker_id="w1")  # the old worker's cleanup frees nothing of w2's
    assert [(s["job_id"], s["worker_id"]) for s in await slot_rows(engine, "p")] == [(job_id, "w2")]
    assert await repo.renew(job_id, "w2", now + LEASE) is True
    assert await repo.record_delivery(job_id, "w2", '{"x":1}') is True
    assert (await job_row(engine, job_id))["delivery"] == '{"x":1}'


async def test_running_job_from_before_leases_is_taken_over(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 1})
    job_id = await add_job(engine, 1, status="running", started_at=T0)
    claim = await repo.claim("w", T0 + 1, LEASE)
    assert claim is not None and claim.job.id == job_id and claim.taken_over is True


async def test_stalled_worker_that_renews_late_keeps_job_and_slot(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 1})
    x = await add_job(engine, 1, created_at=T0)
    assert (await repo.claim("w1", T0, LEASE)) is not None
    y = await add_job(engine, 2, created_at=T0 + 1)
    # The lease ran out, nobody took the job over yet, and the worker comes back:
    assert await repo.renew(x, "w1", T0 + 3 * LEASE) is True
    # Its slot was not handed to another job in between, nor is it now.
    assert await repo.claim("w2", T0 + LEASE + 5, LEASE) is None
    assert await repo.position(y) == 1


async def test_taken_over_job_frees_the_dead_workers_other_slots(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 1, "q": 1})
    x = await add_job(engine, 1)
    assert await repo.claim("w1", T0, LEASE) is not None
    assert await repo.acquire_slot(x, "w1", "q", T0 + LEASE) == 0  # failover slot at q
    claim = await repo.claim("w2", T0 + LEASE + 1, LEASE)
    assert claim is not None and claim.taken_over
    assert [s["job_id"] for s in await slot_rows(engine, "q")] == [None]
    assert [s["worker_id"] for s in await slot_rows(engine, "p")] == ["w2"]


async def test_release_job_puts_it_back_in_the_queue(engine: AsyncEngine, repo: SqlQueueRepository) -> None:  # noqa: F811
    await repo.sync_slots({"p": 1, "q": 1})
    job_id = await add_job(engine, 1)
    assert await repo.claim("w1", T0, LEASE) is not None
    assert await repo.acquire_slot(job_id, "w1", "q", T0 + LEASE) == 0
    assert await repo.release_job(job_id, "w2") is False
    assert await repo.release_job(job_id, "w1") is True
    row = await job_row(engine, job_id)
    assert (row["status"], row["worker_id"], row["lease_expires_at"]) == ("queued", None, None)
    assert [s["job_id"] for s in await slot_rows(engine, "p") + await slot_rows(engine, "q")] == [None, None]
    assert await repo.position(job_id) == 1
    again = await repo.claim("w2", T0 + 1, LEASE)
    assert again is not None and again.job.id == job_id and again.taken_over is False
    assert again.job.started_at == T0


async def test_acquire_slot(engine: AsyncEngine, repo: SqlQueueRepository) -> None:  # noqa: F811
    await repo.sync_slots({"p": 2, "q": 1})
    x = await add_job(engine, 1)
    y = await add_job(engine, 2, created_at=T0 + 1)
    assert (await repo.claim("w1", T0, LEASE)).job.id == x  # type: ignore[union-attr]
    assert (await repo.claim("w2", T0, LEASE)).job.id == y  # type: ignore[union-attr]
    assert await repo.acquire_slot(x, "w1", "q", T0 + LEASE) == 0
    assert await repo.acquire_slot(y, "w2", "q", T0 + LEASE) is None  # q is full
    assert await repo.acquire_slot(y, "w1", "p", T0 + LEASE) is None  # not w1's job
    await repo.release_slots(x, "q")
    assert await repo.acquire_slot(y, "w2", "q", T0 + LEASE) == 0
    # x still holds its p slot; release_slots without a provider frees all of a job's slots.
    assert [s["job_id"] for s in await slot_rows(engine, "p")] == [x, y]
    await repo.release_slots(y)
    assert [s["job_id"] for s in await slot_rows(engine, "p")] == [x, None]
    assert [s["job_id"] for s in await slot_rows(engine, "q")] == [None]


async def test_sync_slots_follows_capacity_and_retires_busy_slots(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 3, "q": 2})
    assert (await repo.depth()).slots == {"p": (0, 3), "q": (0, 2)}
    jobs = [await add_job(engine, user, created_at=T0 + user) for user in range(4)]
    claims = [await repo.claim("w", T0 + 10, LEASE) for _ in range(3)]
    assert [c.job.id for c in claims if c] == jobs[:3]
    assert await repo.claim("w", T0 + 10, LEASE) is None

    await repo.sync_slots({"p": 1})  # q is not named: untouched
    depth = await repo.depth()
    assert depth.slots == {"p": (3, 1), "q": (0, 2)}  # two busy slots above the new capacity retire
    await repo.release_slots(jobs[0])  # slot 0: stays, free
    assert (await repo.depth()).slots["p"] == (2, 1)
    await repo.release_slots(jobs[2])  # a retiring slot: gone
    await repo.release_slots(jobs[1])
    assert (await repo.depth()).slots["p"] == (0, 1)
    assert [s["slot"] for s in await slot_rows(engine, "p")] == [0]
    assert (await repo.claim("w", T0 + 11, LEASE)).job.id == jobs[3]  # type: ignore[union-attr]
    extra = await add_job(engine, 9, created_at=T0 + 12)
    assert await repo.claim("w", T0 + 12, LEASE) is None  # capacity 1 holds
    await repo.sync_slots({"p": 2})
    assert (await repo.claim("w", T0 + 13, LEASE)).job.id == extra  # type: ignore[union-attr]
    await repo.sync_slots({"p": 2})  # idempotent
    assert (await repo.depth()).slots["p"] == (2, 2)


async def test_capacity_lowered_twice_while_the_same_slot_is_busy(
    engine: AsyncEngine,  # noqa: F811
    repo: SqlQueueRepository,
) -> None:
    await repo.sync_slots({"p": 2})
    first = [await add_job(engine, user, created_at=T0 + user) for user in range(2)]
    assert [(await repo.claim("w", T0, LEASE)).slot for _ in first] == [0, 1]  # type: ignore[union-attr]
    await repo.sync_slots({"p": 1})  # slot 1 retires while busy
    await repo.sync_slots({"p": 2})  # slot 1 exists again, the retiring one still busy
    second = await add_job(engine, 7, created_at=T0 + 7)
    assert (await repo.claim("w", T0, LEASE)).slot == 1  # type: ignore[union-attr]
    await repo.sync_slots({"p": 1})  # retires slot 1 again: must not collide with the first
    assert (await repo.depth()).slots["p"] == (3, 1)
    for job_id in [*first, second]:
        await repo.release_slots(job_id)
    assert [s["slot"] for s in await slot_rows(engine, "p")] == [0]


async def test_depth_and_workers(engine: AsyncEngine, repo: SqlQueueRepository) -> None:  # noqa: F811
    await repo.sync_slots({"p": 1})
    for user in range(3):
        await add_job(engine, user)
    await repo.claim("w", T0, LEASE)
    depth = await repo.depth()
    assert (depth.queued, depth.running, dict(depth.slots)) == (2, 1, {"p": (1, 1)})

    await repo.register_worker("w1", "worker", "host-a", 11, T0)
    await repo.register_worker("g1", "gateway", "host-b", 12, T0 + 1)
    await repo.heartbeat("w1", T0 + 5)
    await repo.register_worker("g1", "gateway", "host-b", 13, T0 + 2)  # restarted under the same id
    workers = await repo.workers()
    assert [(w.worker_id, w.role, w.host, w.pid, w.started_at, w.heartbeat_at) for w in workers] == [
        ("w1", "worker", "host-a", 11, T0, T0 + 5),
        ("g1", "gateway", "host-b", 13, T0 + 2, T0 + 2),
    ]
    await repo.remove_worker("w1")
    assert [w.worker_id for w in await repo.workers()] == ["g1"]


# --- concurrency ----------------------------------------------------------------------------------------


async def test_concurrent_claimers_on_separate_engines_never_share_jobs_or_exceed_caps(
    engines: Callable[[], AsyncEngine],  # noqa: F811
) -> None:
    caps = {"p": 2, "q": 3}
    setup = engines()
    setup_repo = SqlQueueRepository(setup)
    await setup_repo.sync_slots(caps)
    job_ids = [
        await add_job(setup, user, created_at=T0 + n, queue_provider="pq"[n % 2])
        for n, user in enumerate([u for u in range(16) for _ in range(6)])
    ]
    claimed: dict[int, str] = {}
    twice: list[int] = []
    slot_holders: dict[tuple[str, int], int] = {}
    shared_slots: list[tuple[str, int]] = []
    in_flight: dict[str, set[int]] = {"p": set(), "q": set()}
    peak = {"p": 0, "q": 0}
    rng = random.Random(9)

    async def worker(name: str) -> None:
        engine_ = engines()  # its own pool, as another process would have
        repo_ = SqlQueueRepository(engine_)
        try:
            while len(claimed) < len(job_ids):
                claim = await repo_.claim(name, T0 + 100, LEASE)
                if claim is None:
                    await asyncio.sleep(0.002)
                    continue
                if claim.job.id in claimed:
                    twice.append(claim.job.id)
                claimed[claim.job.id] = name
                held = in_flight[claim.provider]
                held.add(claim.job.id)
                slot = (claim.provider, claim.slot)
                if slot in slot_holders:
                    shared_slots.append(slot)
                slot_holders[slot] = claim.job.id
                peak[claim.provider] = max(peak[claim.provider], len(held))
                await asyncio.sleep(rng.random() * 0.004)
                held.discard(claim.job.id)  # before the slot is freed: never under-counts
                if slot_holders.get(slot) == claim.job.id:
                    del slot_holders[slot]
                await finish(engine_, claim.job.id)
                await repo_.release_slots(claim.job.id, worker_id=name)
        finally:
            await repo_.aclose()

    await asyncio.wait_for(asyncio.gather(*(worker(f"w{n}") for n in range(4))), timeout=90)
    await setup_repo.aclose()
    assert twice == []
    assert shared_slots == []
    assert sorted(claimed) == sorted(job_ids)
    assert peak["p"] <= caps["p"] and peak["q"] <= caps["q"], peak
    assert len(set(claimed.values())) > 1  # the work really was shared


# --- wake-ups -------------------------------------------------------------------------------------------


async def test_notify_from_another_engine_wakes_a_waiter(engines: Callable[[], AsyncEngine]) -> None:  # noqa: F811
    waiter = SqlQueueRepository(engines())
    notifier = SqlQueueRepository(engines())
    try:
        assert await waiter.wait_for_work(0.01) is True  # the first call: "look at the queue"
        assert await waiter.wait_for_work(0.2) is False  # nothing happened
        waiting = asyncio.create_task(waiter.wait_for_work(30))
        await asyncio.sleep(0.05)
        await notifier.notify()
        assert await asyncio.wait_for(waiting, 30) is True
        # A notification that came while nobody waited is not lost.
        await notifier.notify()
        await asyncio.sleep(0.2)
        assert await waiter.wait_for_work(30) is True
    finally:
        await waiter.aclose()
        await notifier.aclose()


async def test_freeing_a_slot_wakes_waiters(engines: Callable[[], AsyncEngine]) -> None:  # noqa: F811
    engine_a, engine_b = engines(), engines()
    waiter, worker = SqlQueueRepository(engine_a), SqlQueueRepository(engine_b)
    try:
        await worker.sync_slots({"p": 1})
        job_id = await add_job(engine_b, 1)
        await add_job(engine_b, 2, created_at=T0 + 1)
        assert await worker.claim("w", T0, LEASE) is not None
        assert await waiter.wait_for_work(0.01) is True
        assert await waiter.claim("w2", T0, LEASE) is None
        waiting = asyncio.create_task(waiter.wait_for_work(30))
        await asyncio.sleep(0.05)
        await worker.release_slots(job_id, worker_id="w")
        assert await asyncio.wait_for(waiting, 30) is True
        assert await waiter.claim("w2", T0, LEASE) is not None
    finally:
        await waiter.aclose()
        await worker.aclose()


async def test_sqlite_commit_by_another_process_wakes_a_waiter(tmp_path: Path) -> None:
    """No notify() at all: a job inserted by another process is seen through PRAGMA data_version."""
    path = tmp_path / "palette.db"
    await create_tables(f"sqlite:///{path}")
    engine_ = create_engine(f"sqlite:///{path}")
    waiter = SqlQueueRepository(engine_)
    try:
        assert await waiter.wait_for_work(0.01) is True
        assert await waiter.wait_for_work(0.2) is False
        waiting = asyncio.create_task(waiter.wait_for_work(30))
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            'c.execute("INSERT INTO jobs (user_id, kind, model, prompt, params, count, status, reserved, '
            "committed, refunded, attempts, created_at, queue_provider) VALUES "
            "(1, 'imagine', 'm', 'x', '{}', 1, 'queued', 1, 0, 0, 0, 0, 'p')\"); c.commit()"
        )
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, str(path))
        assert await process.wait() == 0
        assert await asyncio.wait_for(waiting, 30) is True
    finally:
        await waiter.aclose()
        await engine_.dispose()


async def test_postgres_listener_reconnects_after_its_connection_drops() -> None:
    async with fresh_postgres_database() as url:
        await create_tables(url)
        waiter_engine, admin_engine = create_engine(url), create_engine(url)
        waiter, notifier = SqlQueueRepository(waiter_engine), SqlQueueRepository(admin_engine)
        try:
            assert await waiter.wait_for_work(0.01) is True
            async with admin_engine.begin() as conn:
                killed = (
                    await conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                        )
                    )
                ).scalar()
            assert killed == 1
            # The drop wakes the waiter (a notification may have been missed) and it listens again.
            assert await waiter.wait_for_work(30) is True
            assert await waiter.wait_for_work(30) is True  # reconnected: "look at the queue"
            waiting = asyncio.create_task(waiter.wait_for_work(30))
            await asyncio.sleep(0.05)
            await notifier.notify()
            assert await asyncio.wait_for(waiting, 30) is True
        finally:
            await waiter.aclose()
            await notifier.aclose()
            await waiter_engine.dispose()
            await admin_engine.dispose()
