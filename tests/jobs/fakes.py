"""Small in-memory fakes of the job runtime's contracts (the queue, the job repository, the presenter),
for unit tests of the worker's logic. The real proof is the SQL queue under the real bot (other tests)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.errors import PaletteError
from bot.generation import GenerationOutcome
from bot.jobs.service import DeliveredImage, Delivery
from bot.jobs.spool import SpooledImage
from bot.storage import JobRecord, NewResult
from bot.storage.queue import Claim, QueueDepth, WorkerInfo

T0 = 1_700_000_000.0


Row = JobRecord


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Calls:
    log: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, name: str, *args: Any) -> None:
        self.log.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.log]

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.log if n == name)


class Store:
    """Jobs and provider slots in memory: what the queue and the job repository both see."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[int, Row] = {}
        self.slots: dict[str, list[tuple[int, str] | None]] = {}  # provider -> [(job_id, worker) | None]
        self.results: dict[int, list[NewResult]] = {}
        self.references: dict[int, list[Any]] = {}
        self.calls = Calls()
        self._next = 1

    def add_job(
        self,
        user_id: int = 1,
        *,
        model: str = "nano-banana-pro",
        provider: str | None = "p",
        status: str = "queued",
        count: int = 1,
        **columns: Any,
    ) -> Row:
        job_id = self._next
        self._next += 1
        values: dict[str, Any] = dict(
            id=job_id,
            user_id=user_id,
            guild_id=None,
            channel_id=10,
            kind="imagine",
            model=model,
            prompt=f"job {job_id}",
            params="{}",
            count=count,
            status=status,
            reserved=count,
            committed=0,
            refunded=0,
            provider=None,
            provider_model=None,
            task_id=None,
            attempts=0,
            interaction_token=None,
            interaction_created_at=None,
            status_message_id=None,
            result_message_id=None,
            error=None,
            error_kind=None,
            parent_job_id=None,
            created_at=self.clock(),
            started_at=None,
            finished_at=None,
            queue_provider=provider,
        )
        values.update(columns)
        row = Row(**values)
        self.rows[job_id] = row
        return row

    def update(self, job_id: int, **values: Any) -> Row:
        row = dataclasses.replace(self.rows[job_id], **values)
        self.rows[job_id] = row
        return row

    def held_slots(self, job_id: int) -> list[str]:
        return [p for p, slots in self.slots.items() for s in slots if s is not None and s[0] == job_id]

    def free_slots(self, job_id: int, provider: str | None = None, worker_id: str | None = None) -> int:
        freed = 0
        for name, slots in self.slots.items():
            for i, s in enumerate(slots):
                if s is None or s[0] != job_id:
                    continue
                if (provider is None or name == provider) and (worker_id is None or s[1] == worker_id):
                    slots[i] = None
                    freed += 1
        return freed


class FakeJobs:
    """The parts of :class:`~bot.storage.repository.JobRepository` the worker uses."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: Raise this from finish_job (a callable deciding per call), to test settling retries.
        self.finish_error: Any = None

    async def get_job(self, job_id: int) -> JobRecord | None:
        return self.store.rows.get(job_id)

    async def get_references(self, job_id: int) -> list[Any]:
        return list(self.store.references.get(job_id, []))

    async def job_status(self, job_id: int) -> str | None:
        row = self.store.rows.get(job_id)
        return row.status if row is not None else None

    async def unfinished_jobs(self) -> list[JobRecord]:
        return [r for r in self.store.rows.values() if r.status in ("queued", "running")]

    async def set_task(self, job_id: int, provider: str, provider_model: str | None, task_id: str) -> bool:
        self.store.calls.add("set_task", job_id, task_id)
        self.store.update(job_id, provider=provider, provider_model=provider_model, task_id=task_id)
        return True

    async def set_interaction(self, job_id: int, token: str | None, created_at: float | None) -> bool:
        self.store.update(job_id, interaction_token=token, interaction_created_at=created_at)
        return True

    async def finish_job(
        self,
        job_id: int,
        delivered: int,
        *,
        status: str = "done",
        error: str | None = None,
        error_kind: str | None = None,
        result_message_id: int | None = None,
        results: Sequence[NewResult] = (),
        provider: str | None = None,
        provider_model: str | None = None,
        now: float,
    ) -> bool:
        self.store.calls.add("finish_job", job_id, status, delivered)
        if self.finish_error is not None:
            error_now = self.finish_error(status, delivered)
            if error_now is not None:
                raise error_now
        row = self.store.rows[job_id]
        if row.status not in ("queued", "running"):
            return False
        if not 0 <= delivered <= row.reserved:
            raise ValueError(delivered)
        self.store.update(
            job_id,
            status=status,
            committed=delivered,
            refunded=row.reserved - delivered,
            error=error,
            error_kind=error_kind,
            result_message_id=result_message_id or row.result_message_id,
            finished_at=now,
            worker_id=None,
            lease_expires_at=None,
            provider=provider or row.provider,
            provider_model=provider_model or row.provider_model,
        )
        self.store.results[job_id] = list(results)
        self.store.free_slots(job_id)
        return True


class FakeQueue:
    """:class:`~bot.storage.queue.QueueRepository` in memory: FIFO claims (fairness is the SQL queue's
    business, tested there), leases, slots, deliveries, wake-ups."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.workers_: dict[str, WorkerInfo] = {}
        self._event = asyncio.Event()
        self.renewals: dict[int, int] = {}
        self.renewed = asyncio.Event()
        #: Make renew() raise this (a transient database error), while set.
        self.renew_error: BaseException | None = None

    @property
    def calls(self) -> Calls:
        return self.store.calls

    async def register_worker(self, worker_id: str, role: str, host: str, pid: int, now: float) -> None:
        self.workers_[worker_id] = WorkerInfo(worker_id, role, host, pid, now, now)

    async def heartbeat(self, worker_id: str, now: float) -> None:
        info = self.workers_.get(worker_id)
        if info is not None:
            self.workers_[worker_id] = dataclasses.replace(info, heartbeat_at=now)

    async def remove_worker(self, worker_id: str) -> None:
        self.workers_.pop(worker_id, None)

    async def workers(self) -> list[WorkerInfo]:
        return list(self.workers_.values())

    async def sync_slots(self, capacity: Mapping[str, int]) -> None:
        self.calls.add("sync_slots", dict(capacity))
        for provider, n in capacity.items():
            slots = self.store.slots.setdefault(provider, [])
            while len(slots) < n:
                slots.append(None)

    def _free_slot(self, provider: str) -> int | None:
        for i, s in enumerate(self.store.slots.get(provider, [])):
            if s is None:
                return i
        return None

    async def claim_many(self, worker_id: str, now: float, lease_seconds: float, limit: int) -> list[Claim]:
        claims: list[Claim] = []
        while len(claims) < limit:
            claim = await self.claim(worker_id, now, lease_seconds)
            if claim is None:
                break
            claims.append(claim)
        return claims

    async def claim(self, worker_id: str, now: float, lease_seconds: float) -> Claim | None:
        for row in sorted(self.store.rows.values(), key=lambda r: r.id):
            expired = row.status == "running" and (row.lease_expires_at is None or row.lease_expires_at < now)
            if not (row.status == "queued" or expired) or row.queue_provider is None:
                continue
            slot = self._free_slot(row.queue_provider)
            if slot is None:
                continue
            self.store.free_slots(row.id)
            self.store.slots[row.queue_provider][slot] = (row.id, worker_id)
            claimed = self.store.update(
                row.id,
                status="running",
                worker_id=worker_id,
                lease_expires_at=now + lease_seconds,
                started_at=row.started_at or now,
            )
            self.calls.add("claim", row.id, worker_id)
            return Claim(
                claimed,
                row.queue_provider,
                slot,
                now + lease_seconds,
                taken_over=expired,
                delivery=row.delivery,
            )
        return None

    def _ours(self, job_id: int, worker_id: str) -> bool:
        row = self.store.rows.get(job_id)
        return row is not None and row.status == "running" and row.worker_id == worker_id

    async def renew(self, job_id: int, worker_id: str, until: float) -> bool:
        if self.renew_error is not None:
            raise self.renew_error
        self.renewals[job_id] = self.renewals.get(job_id, 0) + 1
        self.renewed.set()
        if not self._ours(job_id, worker_id):
            return False
        self.store.update(job_id, lease_expires_at=until)
        return True

    async def acquire_slot(self, job_id: int, worker_id: str, provider: str, until: float) -> int | None:
        if not self._ours(job_id, worker_id):
            return None
        slot = self._free_slot(provider)
        if slot is not None:
            self.store.slots[provider][slot] = (job_id, worker_id)
        self.calls.add("acquire_slot", job_id, provider, slot)
        return slot

    async def release_slots(
        self, job_id: int, provider: str | None = None, *, worker_id: str | None = None
    ) -> None:
        self.calls.add("release_slots", job_id, provider)
        if self.store.free_slots(job_id, provider, worker_id):
            self._event.set()

    async def release_and_claim(
        self,
        job_ids: Sequence[int],
        worker_id: str,
        providers: Sequence[str],
        now: float,
        lease_seconds: float,
        limit: int,
    ) -> list[Claim]:
        self.calls.add("release_and_claim", tuple(job_ids), limit)
        for job_id in job_ids:
            await self.release_slots(job_id, worker_id=worker_id)
        return await self.claim_many(worker_id, now, lease_seconds, limit) if limit > 0 else []

    async def release_job(self, job_id: int, worker_id: str) -> bool:
        self.calls.add("release_job", job_id)
        if not self._ours(job_id, worker_id):
            return False
        self.store.update(job_id, status="queued", worker_id=None, lease_expires_at=None)
        self.store.free_slots(job_id, worker_id=worker_id)
        self._event.set()
        return True

    async def set_queue_provider(self, job_id: int, provider: str) -> bool:
        self.calls.add("set_queue_provider", job_id, provider)
        self.store.update(job_id, queue_provider=provider)
        self._event.set()
        return True

    async def record_delivery(self, job_id: int, worker_id: str, delivery: str) -> bool:
        self.calls.add("record_delivery", job_id)
        if not self._ours(job_id, worker_id):
            return False
        self.store.update(job_id, delivery=delivery)
        return True

    async def position(self, job_id: int) -> int | None:
        queued = [r.id for r in sorted(self.store.rows.values(), key=lambda r: r.id) if r.status == "queued"]
        return queued.index(job_id) + 1 if job_id in queued else None

    async def depth(self) -> QueueDepth:
        rows = self.store.rows.values()
        return QueueDepth(
            queued=sum(r.status == "queued" for r in rows),
            running=sum(r.status == "running" for r in rows),
            slots={
                p: (sum(s is not None for s in slots), len(slots)) for p, slots in self.store.slots.items()
            },
        )

    async def notify(self) -> None:
        self._event.set()

    async def wait_for_work(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        self._event.clear()
        return True

    async def aclose(self) -> None:
        return None


class FakePresenter:
    """Records what would be shown; ``deliver`` can be held with ``gate``."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.gate: asyncio.Event | None = None
        self.delivering = asyncio.Event()
        self.error: BaseException | None = None
        self.delivered_sizes: list[list[int]] = []
        #: Seconds ``failed`` takes (a slow Discord).
        self.failed_delay = 0.0
        self._next_message = 5000

    async def started(self, job: JobRecord) -> None:
        self.calls.add("started", job.id)

    async def deliver(
        self, job: JobRecord, outcome: GenerationOutcome, images: Sequence[SpooledImage]
    ) -> Delivery:
        self.calls.add("deliver", job.id)
        self.delivering.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.delivered_sizes.append([i.size for i in images])
        self._next_message += 1
        return Delivery(
            message_id=self._next_message,
            channel_id=job.channel_id,
            images=[
                DeliveredImage(
                    None, f"palette-{job.id}-{n}.png", "ab" * 32, i.width, i.height, i.mime_type, i.size
                )
                for n, i in enumerate(images, 1)
            ],
        )

    async def failed(self, job: JobRecord, error: PaletteError) -> None:
        await asyncio.sleep(self.failed_delay)
        self.calls.add("failed", job.id, error.message)

    async def notice(self, job: JobRecord, note: PaletteError) -> None:
        self.calls.add("notice", job.id, note.message)
