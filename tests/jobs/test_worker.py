"""The worker's logic against in-memory fakes of the queue: claims, leases, lost leases, settling retries,
takeovers (with a recorded delivery, with a task id), shutdown, slots. The SQL queue and the real bot are
tested elsewhere (tests/jobs/test_queue_runtime.py, tests/presentation)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.errors import ContentRefused, ProviderUnavailable
from bot.generation import Generator
from bot.jobs.spool import ImageSpool
from bot.jobs.worker import RecordedDelivery, Worker
from bot.providers.base import GeneratedImage, ImageProvider, ProviderRequest, ProviderResult, TaskProvider
from tests.conftest import make_settings
from tests.jobs.fakes import Clock, FakeJobs, FakePresenter, FakeQueue, Store


def png(size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


class SyncProvider(ImageProvider):
    """A synchronous provider; each call waits for ``gate`` (when set)."""

    name = "listenhub"  # type: ignore[misc]

    def __init__(self, name: str = "listenhub") -> None:
        super().__init__(transport=None)  # type: ignore[arg-type]
        self.name = name  # type: ignore[misc]
        self.gate: asyncio.Event | None = None
        self.calls = 0
        self.in_flight = 0
        self.peak = 0
        self.cancelled = 0
        self.error: Exception | None = None
        self.image = png()

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.error is not None:
                raise self.error
            return ProviderResult(
                images=[GeneratedImage(self.image, "image/png", 8, 8) for _ in range(request.count)],
                provider=self.name,
                provider_model=request.model_id,
                latency_s=0.0,
            )
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        return None


class TaskFake(TaskProvider):
    name = "mountsea"  # type: ignore[misc]

    def __init__(self) -> None:
        super().__init__(None, poll_interval=0.01, deadline=5)  # type: ignore[arg-type]
        self.submits = 0
        self.waits: list[str] = []

    async def submit(self, request: ProviderRequest) -> str:
        self.submits += 1
        return f"task-{self.submits}"

    async def poll(self, task_id: str) -> Any:
        raise AssertionError("not used: wait is replaced")

    async def wait(self, task_id: str, request: ProviderRequest, **kwargs: Any) -> ProviderResult:
        self.waits.append(task_id)
        return ProviderResult(
            [GeneratedImage(png(), "image/png", 8, 8)], self.name, request.model_id, 0.0, task_id
        )

    async def aclose(self) -> None:
        return None


@dataclass
class Rig:
    store: Store
    jobs: FakeJobs
    queue: FakeQueue
    presenter: FakePresenter
    worker: Worker
    generator: Generator
    clock: Clock

    async def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not check():  # noqa: ASYNC110 - the fakes' state has no event to wait on
                await asyncio.sleep(0.005)

        await asyncio.wait_for(wait(), timeout)

    def done(self, job_id: int) -> bool:
        return self.store.rows[job_id].status in ("done", "failed", "cancelled")


@asynccontextmanager
async def rig(
    tmp_path: Path,
    *providers: ImageProvider,
    start: bool = True,
    max_jobs: int | None = None,
    lease: float = 30.0,
    budget: int = 1 << 30,
    **settings: Any,
) -> AsyncIterator[Rig]:
    clock = Clock()
    store = Store(clock)
    jobs, queue = FakeJobs(store), FakeQueue(store)
    presenter = FakePresenter(store.calls)
    conf = make_settings(job_lease_seconds=lease, **settings)
    generator = Generator(conf, {p.name: p for p in providers})
    worker = Worker(
        jobs,  # type: ignore[arg-type]
        queue,
        generator,
        presenter,
        conf,
        worker_id="w1",
        spool=ImageSpool(tmp_path / "spool", budget),
        clock=clock,
        max_jobs=max_jobs,
    )
    worker.settle_backoff = 0.001
    r = Rig(store, jobs, queue, presenter, worker, generator, clock)
    if start:
        await worker.start()
    try:
        yield r
    finally:
        await worker.stop(grace=0)


async def test_claims_while_it_has_room_and_gives_the_slot_back_before_posting(tmp_path: Path) -> None:
    provider = SyncProvider()
    provider.gate = asyncio.Event()
    async with rig(tmp_path, provider, max_jobs=2, listenhub_concurrency=4) as r:
        ids = [r.store.add_job(user_id=u, provider="listenhub").id for u in (1, 2, 3)]
        r.worker.poke()
        await r.until(lambda: provider.in_flight == 2)
        await asyncio.sleep(0.05)
        assert provider.in_flight == 2 and r.store.rows[ids[2]].status == "queued"  # room for two
        r.presenter.gate = asyncio.Event()
        provider.gate.set()
        await r.until(lambda: r.store.calls.count("deliver") >= 2)
        # Both are posting: their provider slots are free again, and the third job has started.
        await r.until(lambda: r.store.calls.count("deliver") == 3)
        assert all(not r.store.held_slots(i) for i in ids)
        r.presenter.gate.set()
        await r.until(lambda: all(r.done(i) for i in ids))
        for i in ids:
            row = r.store.rows[i]
            assert (row.status, row.committed, row.refunded) == ("done", 1, 0)
            names = [n for n, args in r.store.calls.log if args and args[0] == i]
            # What was posted is recorded before the job is settled.
            assert names.index("record_delivery") < names.index("finish_job"), names
        assert r.queue.calls.log[0] == ("sync_slots", ({"listenhub": 4},))


async def test_the_lease_is_renewed_while_the_job_runs(tmp_path: Path) -> None:
    provider = SyncProvider()
    provider.gate = asyncio.Event()
    async with rig(tmp_path, provider, lease=0.15) as r:
        job = r.store.add_job(provider="listenhub")
        r.worker.poke()
        await r.until(lambda: r.queue.renewals.get(job.id, 0) >= 3)
        assert r.store.rows[job.id].worker_id == "w1"
        provider.gate.set()
        await r.until(lambda: r.done(job.id))
        assert r.store.rows[job.id].committed == 1


async def test_a_lost_lease_stops_the_job_without_settling_or_posting(tmp_path: Path) -> None:
    provider = SyncProvider()
    provider.gate = asyncio.Event()
    async with rig(tmp_path, provider, lease=0.15) as r:
        job = r.store.add_job(provider="listenhub")
        r.worker.poke()
        await r.until(lambda: provider.in_flight == 1)
        # Another worker took it over (this one was cut off for longer than the lease).
        r.store.update(job.id, worker_id="w2")
        await r.until(lambda: provider.cancelled == 1)
        await r.until(lambda: r.worker.running == 0)
        provider.gate.set()
        await asyncio.sleep(0.05)
        names = r.store.calls.names()
        assert "deliver" not in names and "finish_job" not in names and "record_delivery" not in names
        assert r.store.rows[job.id].status == "running" and r.store.rows[job.id].worker_id == "w2"


async def test_a_transient_renewal_error_does_not_give_the_job_up(tmp_path: Path) -> None:
    provider = SyncProvider()
    provider.gate = asyncio.Event()
    async with rig(tmp_path, provider, lease=0.3) as r:
        job = r.store.add_job(provider="listenhub")
        r.worker.poke()
        await r.until(lambda: provider.in_flight == 1)
        r.queue.renew_error = OSError("database is locked")
        await asyncio.sleep(0.12)  # one failed renewal, the lease held still runs
        r.queue.renew_error = None
        provider.gate.set()
        await r.until(lambda: r.done(job.id))
        assert r.store.rows[job.id].committed == 1 and provider.cancelled == 0


async def test_telling_the_user_after_settling_is_not_cut_short_by_the_ended_lease(tmp_path: Path) -> None:
    provider = SyncProvider()
    provider.error = ContentRefused(provider="listenhub", status=400)
    async with rig(tmp_path, provider, lease=0.06) as r:
        r.presenter.failed_delay = 0.3  # several lease periods: the lease ended with settling
        job = r.store.add_job(provider="listenhub")
        r.worker.poke()
        await r.until(lambda: "failed" in r.store.calls.names())
        row = r.store.rows[job.id]
        assert (row.status, row.refunded) == ("failed", 1)


async def test_settling_is_retried(tmp_path: Path) -> None:
    failures = [OSError("disk full"), OSError("database is locked")]
    async with rig(tmp_path, SyncProvider()) as r:
        r.jobs.finish_error = lambda status, delivered: failures.pop(0) if failures else None
        job = r.store.add_job(provider="listenhub")
        r.worker.poke()
        await r.until(lambda: r.done(job.id))
        row = r.store.rows[job.id]
        assert (row.status, row.committed) == ("done", 1)
        assert r.store.calls.count("finish_job") == 3 and r.store.calls.count("deliver") == 1
        assert "notice" not in r.store.calls.names()


async def test_a_result_that_cannot_be_settled_is_refunded_and_the_user_told(tmp_path: Path) -> None:
    async with rig(tmp_path, SyncProvider()) as r:
        # Charging keeps failing; the refund (a smaller write) goes through after a few more tries.
        refunds_failing = [OSError("disk full")] * 3
        r.jobs.finish_error = lambda status, delivered: (
            OSError("disk full") if delivered else (refunds_failing.pop() if refunds_failing else None)
        )
        job = r.store.add_job(provider="listenhub")
        r.worker.poke()
        await r.until(lambda: r.done(job.id))
        row = r.store.rows[job.id]
        assert (row.committed, row.refunded) == (0, 1)
        assert r.store.calls.count("deliver") == 1  # posted once, never again
        await r.until(lambda: "notice" in r.store.calls.names())
        note = next(args for name, args in r.store.calls.log if name == "notice")
        assert "nothing was charged" in note[1]
        assert row.delivery is not None  # recorded: whoever settles it later does not post it again


async def test_a_taken_over_job_with_a_recorded_delivery_is_settled_without_posting(tmp_path: Path) -> None:
    provider = SyncProvider()
    async with rig(tmp_path, provider, start=False) as r:
        delivery = RecordedDelivery.from_json(
            json.dumps(
                {
                    "message_id": 777,
                    "channel_id": 10,
                    "provider": "listenhub",
                    "provider_model": "gemini-3-pro-image",
                    "images": [
                        {
                            "attachment_id": 9,
                            "filename": "palette-1-1.png",
                            "sha256": "cd" * 32,
                            "width": 8,
                            "height": 8,
                            "mime_type": "image/png",
                            "size_bytes": 70,
                        }
                    ],
                }
            )
        )
        # A worker died after posting and before settling: its lease ran out.
        job = r.store.add_job(
            provider="listenhub",
            status="running",
            worker_id="dead",
            lease_expires_at=r.clock() - 1,
            delivery=delivery.to_json(),
        )
        await r.worker.start()
        await r.until(lambda: r.done(job.id))
        row = r.store.rows[job.id]
        assert (row.status, row.committed, row.result_message_id) == ("done", 1, 777)
        assert r.store.results[job.id][0].message_id == 777 and r.store.results[job.id][0].sha256 == "cd" * 32
        assert provider.calls == 0 and "deliver" not in r.store.calls.names()


async def test_a_taken_over_task_is_polled_never_submitted_again(tmp_path: Path) -> None:
    tasks = TaskFake()
    async with rig(tmp_path, tasks, start=False) as r:
        job = r.store.add_job(
            provider="mountsea",
            status="running",
            worker_id="dead",
            lease_expires_at=None,  # a running job from before leases: counts as expired
            task_id="task-41",
        )
        r.store.update(job.id, provider="mountsea")
        await r.worker.start()
        await r.until(lambda: r.done(job.id))
        assert tasks.submits == 0 and tasks.waits == ["task-41"]
        assert r.store.rows[job.id].committed == 1


async def test_a_taken_over_synchronous_job_runs_again_and_is_charged_once(tmp_path: Path) -> None:
    provider = SyncProvider()
    async with rig(tmp_path, provider, start=False) as r:
        job = r.store.add_job(provider="listenhub", status="running", worker_id="dead", lease_expires_at=0.0)
        await r.worker.start()
        await r.until(lambda: r.done(job.id))
        row = r.store.rows[job.id]
        assert provider.calls == 1 and (row.reserved, row.committed, row.refunded) == (1, 1, 0)


async def test_shutdown_gives_running_jobs_the_grace_then_hands_the_rest_back(tmp_path: Path) -> None:
    slow, quick = SyncProvider("listenhub"), TaskFake()
    slow.gate = asyncio.Event()
    async with rig(tmp_path, slow, quick) as r:
        stuck = r.store.add_job(provider="listenhub").id
        fine = r.store.add_job(user_id=2, model="nano-banana", provider="mountsea").id
        r.presenter.gate = asyncio.Event()
        r.worker.poke()
        await r.until(lambda: slow.in_flight == 1 and r.presenter.delivering.is_set())
        stopping = asyncio.create_task(r.worker.stop(grace=0.5))
        await asyncio.sleep(0.05)
        r.presenter.gate.set()  # the posting job finishes within the grace
        await stopping
        assert r.store.rows[fine].status == "done"
        row = r.store.rows[stuck]
        assert (row.status, row.worker_id) == ("queued", None) and not r.store.held_slots(stuck)
        assert slow.cancelled == 1 and "finish_job" not in [n for n, a in r.store.calls.log if a[0] == stuck]


async def test_jobs_nobody_handed_over_get_their_provider_after_a_while(tmp_path: Path) -> None:
    async with rig(tmp_path, SyncProvider(), TaskFake(), start=False) as r:
        old = r.store.add_job(provider=None)  # nano-banana-pro: listenhub first
        task = r.store.add_job(provider=None)
        r.store.update(task.id, provider="mountsea", task_id="t-1", status="running")
        fresh = r.clock.now + 61
        r.clock.now = fresh
        handing_over = r.store.add_job(provider=None)  # its command handler is showing "queued"
        await r.worker.start()
        await r.until(lambda: r.done(old.id) and r.done(task.id))
        assert ("set_queue_provider", (old.id, "listenhub")) in r.store.calls.log
        assert ("set_queue_provider", (task.id, "mountsea")) in r.store.calls.log
        assert r.store.rows[handing_over.id].queue_provider is None  # not yet: it is being handed over


async def test_failover_takes_a_slot_at_the_next_provider(tmp_path: Path) -> None:
    first, second = SyncProvider("listenhub"), SyncProvider("nanobanana_pro")
    first.error = ProviderUnavailable(provider="listenhub", status=503)
    async with rig(tmp_path, first, second, http_max_retries=0) as r:
        job = r.store.add_job(provider="listenhub")
        r.worker.poke()
        await r.until(lambda: r.done(job.id))
        assert r.store.rows[job.id].committed == 1 and second.calls == 1
        assert ("acquire_slot", (job.id, "nanobanana_pro", 0)) in r.store.calls.log
        # The failed provider's slot went back as soon as it failed, before the next one was asked.
        names = [(n, a) for n, a in r.store.calls.log if n in ("release_slots", "acquire_slot")]
        assert names[:2] == [
            ("release_slots", (job.id, "listenhub")),
            ("acquire_slot", (job.id, "nanobanana_pro", 0)),
        ]


async def test_failover_to_a_full_provider_waits_a_while_then_gives_up(tmp_path: Path) -> None:
    first, second = SyncProvider("listenhub"), SyncProvider("nanobanana_pro")
    first.error = ProviderUnavailable(provider="listenhub", status=503)
    second.gate = asyncio.Event()
    async with rig(tmp_path, first, second, nanobanana_pro_concurrency=1) as r:
        r.generator.failover_slot_wait = 0.1
        busy = r.store.add_job(provider="nanobanana_pro").id  # holds nanobanana_pro's only slot
        r.worker.poke()
        await r.until(lambda: second.in_flight == 1)
        job = r.store.add_job(user_id=2, provider="listenhub").id
        r.worker.poke()
        await r.until(lambda: r.done(job))
        row = r.store.rows[job]
        assert row.status == "failed" and row.error_kind == "ProviderBusy" and row.refunded == 1
        assert second.calls == 1  # the busy provider was never called a second time
        second.gate.set()
        await r.until(lambda: r.done(busy))


async def test_split_calls_take_free_slots_else_share_the_held_one(tmp_path: Path) -> None:
    provider = SyncProvider()
    provider.gate = asyncio.Event()
    async with rig(tmp_path, provider, listenhub_concurrency=3) as r:
        big = r.store.add_job(provider="listenhub", count=4).id  # listenhub makes one image per call
        r.worker.poke()
        await r.until(lambda: provider.in_flight == 3)  # its slot and the two free ones
        other = r.store.add_job(user_id=2, provider="listenhub").id
        r.worker.poke()
        await asyncio.sleep(0.05)
        assert r.store.rows[other].status == "queued" and provider.in_flight == 3  # the cap holds
        provider.gate.set()
        await r.until(lambda: r.done(big) and r.done(other))
        assert r.store.rows[big].committed == 4 and provider.peak == 3


async def test_images_over_the_memory_budget_wait_on_disk(tmp_path: Path) -> None:
    provider = SyncProvider()
    provider.image = png(64)
    size = len(provider.image)
    async with rig(tmp_path, provider, budget=2 * size + size // 2, listenhub_concurrency=8) as r:
        r.presenter.gate = asyncio.Event()
        ids = [r.store.add_job(user_id=u, provider="listenhub").id for u in range(6)]
        r.worker.poke()
        await r.until(lambda: r.store.calls.count("deliver") == 6)
        spool = r.worker.spool
        files = list((tmp_path / "spool").iterdir())
        assert spool.budget.used == 2 * size and len(files) == 4  # two in memory, the rest on disk
        r.presenter.gate.set()
        await r.until(lambda: all(r.done(i) for i in ids))
        assert spool.budget.peak <= spool.budget.limit and spool.budget.used == 0
        assert not list((tmp_path / "spool").iterdir())
        assert r.presenter.delivered_sizes == [[size]] * 6


@pytest.mark.parametrize("grace", [0.0])
async def test_stop_with_nothing_running_is_quick_and_idempotent(tmp_path: Path, grace: float) -> None:
    async with rig(tmp_path, SyncProvider()) as r:
        await r.worker.stop(grace)
        await r.worker.stop(grace)
        assert r.worker.running == 0


async def test_a_finished_call_hands_its_slot_to_the_next_job_within_the_workers_share(
    tmp_path: Path,
) -> None:
    """The slot of a call that ended goes to this worker's next job in the same write, as long as the
    worker holds no more than its share of the slots (here 4 slots, 2 job-running processes: 2)."""
    provider = SyncProvider()
    provider.gate = asyncio.Event()
    async with rig(tmp_path, provider, max_jobs=4, listenhub_concurrency=4, start=False) as r:
        await r.queue.register_worker("w1", "worker", "here", 1, r.clock())  # as its Presence does
        await r.queue.register_worker("w2", "worker", "elsewhere", 2, r.clock())
        await r.queue.register_worker("gw", "gateway", "elsewhere", 3, r.clock())  # runs no jobs
        ids = [r.store.add_job(user_id=u, provider="listenhub").id for u in range(1, 9)]
        await r.worker.start()
        r.worker.poke()
        await r.until(lambda: provider.in_flight == 4)
        assert r.worker._peers == 2  # w1 and w2; the gateway runs no jobs
        provider.gate.set()
        await r.until(lambda: all(r.done(i) for i in ids))
        hand_ons = [args for name, args in r.queue.calls.log if name == "release_and_claim"]
        assert sorted(j for jobs, _limit in hand_ons for j in jobs) == sorted(ids)  # each job's, once
        # With 3 or 4 calls still running the worker is above its share: it only gives the slot back.
        # Never more than its share (2) kept by handing on, however many calls were still running
        # (without the share it would be its free places: up to 4).
        assert all(0 <= limit <= 2 for _jobs, limit in hand_ons), hand_ons
        assert any(limit > 0 for _jobs, limit in hand_ons)
        assert all(r.store.rows[i].committed == 1 for i in ids)
