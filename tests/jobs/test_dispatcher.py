"""The dispatcher's fairness and capacity rules, with a runner that records what ran when."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bot.jobs.dispatcher import Dispatcher, QueuedJob


async def test_round_robin_across_users_and_provider_caps() -> None:
    order: list[int] = []
    running = {"p": 0}
    peak = {"p": 0}
    gate = asyncio.Event()

    async def run(job_id: int, release: Callable[[], None]) -> None:
        order.append(job_id)
        running["p"] += 1
        peak["p"] = max(peak["p"], running["p"])
        await gate.wait()
        running["p"] -= 1

    dispatcher = Dispatcher(run, {"p": 2})
    # User 1 queues 6 jobs first, then users 2 and 3 queue 2 each.
    for job_id in range(1, 7):
        dispatcher.enqueue(QueuedJob(job_id, 1, "p"))
    for job_id in (7, 8):
        dispatcher.enqueue(QueuedJob(job_id, 2, "p"))
    for job_id in (9, 10):
        dispatcher.enqueue(QueuedJob(job_id, 3, "p"))
    assert dispatcher.position(7) == 2 and dispatcher.position(9) == 3 and dispatcher.position(6) == 10
    dispatcher.start()
    await asyncio.sleep(0.05)
    assert order == [1, 7]  # capped at 2 in flight
    gate.set()
    for _ in range(100):
        if len(order) == 10 and dispatcher.running == 0:
            break
        await asyncio.sleep(0.01)
    await dispatcher.stop()
    assert peak["p"] == 2
    assert order == [1, 7, 9, 2, 8, 10, 3, 4, 5, 6]


async def test_a_full_provider_does_not_block_another_providers_jobs() -> None:
    started: list[int] = []
    gate = asyncio.Event()

    async def run(job_id: int, release: Callable[[], None]) -> None:
        started.append(job_id)
        await gate.wait()

    dispatcher = Dispatcher(run, {"slow": 1, "fast": 1})
    dispatcher.enqueue(QueuedJob(1, 1, "slow"))
    dispatcher.enqueue(QueuedJob(2, 2, "slow"))
    dispatcher.enqueue(QueuedJob(3, 3, "fast"))
    dispatcher.start()
    await asyncio.sleep(0.05)
    assert started == [1, 3]
    gate.set()
    await asyncio.sleep(0.05)
    assert started == [1, 3, 2]
    await dispatcher.stop()


async def test_a_crashing_job_frees_its_slot_and_stop_cancels_running_jobs() -> None:
    calls: list[int] = []
    cancelled = asyncio.Event()

    async def run(job_id: int, release: Callable[[], None]) -> None:
        calls.append(job_id)
        if job_id == 1:
            raise RuntimeError("boom")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    dispatcher = Dispatcher(run, {"p": 1})
    dispatcher.enqueue(QueuedJob(1, 1, "p"))
    dispatcher.enqueue(QueuedJob(2, 1, "p"))
    dispatcher.start()
    await asyncio.sleep(0.05)
    assert calls == [1, 2]
    await dispatcher.stop(grace=0.01)
    assert cancelled.is_set()
    assert dispatcher.running == 0


async def test_releasing_the_slot_early_lets_the_next_job_start_while_posting() -> None:
    started: list[int] = []
    posting = asyncio.Event()

    async def run(job_id: int, release: Callable[[], None]) -> None:
        started.append(job_id)
        release()  # provider done
        release()  # idempotent
        await posting.wait()  # still "posting"

    dispatcher = Dispatcher(run, {"p": 1})
    for job_id in (1, 2, 3):
        dispatcher.enqueue(QueuedJob(job_id, job_id, "p"))
    dispatcher.start()
    await asyncio.sleep(0.05)
    assert started == [1, 2, 3] and dispatcher.in_flight["p"] == 0
    posting.set()
    await asyncio.sleep(0.02)
    await dispatcher.stop()
    assert dispatcher.in_flight["p"] == 0
