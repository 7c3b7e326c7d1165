"""The worker: claims jobs from the queue in the database, generates, posts and settles them.

The database is the queue (:mod:`bot.storage.queue`). A worker is woken by the queue
(:meth:`~bot.storage.queue.QueueRepository.wait_for_work`: NOTIFY on PostgreSQL, a short poll on SQLite),
by a job submitted in its own process (:meth:`Worker.poke`), and by its own jobs letting go of their
provider slots; it then claims jobs while it has room (``WORKER_MAX_JOBS``, by default the sum of the
provider caps). Fairness and provider caps are the queue's: a claim takes the next job in round-robin
order whose provider has a free slot, counted over every worker.

Each claimed job runs in its own task under a :class:`Lease`, renewed every third of
``JOB_LEASE_SECONDS``. A renewal that is refused means another worker has taken the job over (this one
was cut off for longer than the lease): the job's task is cancelled at once, without settling or posting.

A job's life here:

1. A job that already has a recorded delivery (it was posted, but the worker died before settling) is
   settled from that record and never posted again.
2. Too old (``JOB_MAX_AGE``): refunded and the user told.
3. Generated through :class:`~bot.generation.Generator` with the job's provider slot
   (:class:`QueueSlots`); a job taken over with a task id resumes polling that task (never submits
   again); a synchronous call runs again (the quota is reserved per job: charged once).
4. The provider slots are given back as soon as the provider is done, before posting.
5. The images wait in the :class:`~bot.jobs.spool.ImageSpool` (memory budget, disk beyond it) while the
   presenter posts them; what was posted is recorded (``record_delivery``) right after, then the job is
   settled (``finish_job``).

Settling is retried (:attr:`Worker.settle_attempts` times with backoff). If the result still cannot be
settled, the job is settled as *refunded* instead (retried for as long as this worker holds the job) and
the user is told it was free; the recorded delivery guarantees that whoever settles it later never posts
it again. A failure that cannot be settled is retried the same way before the user is told.

A job cancelled meanwhile (its requester or a moderator clicked Cancel: the job row is settled as
``cancelled`` at once, see :meth:`bot.jobs.service.JobService.cancel`) is dropped: this process's worker is
told directly (:meth:`Worker.abandon`), any other finds out when its lease renewal is refused, and its
status is read once more right before posting, so a result that arrives late is never posted.

On shutdown, running jobs get ``SHUTDOWN_GRACE`` seconds; the rest are given back to the queue
(``release_job``), to be claimed again by this or another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.catalog import get_model
from bot.config import Settings
from bot.errors import NoRouteAvailable, PaletteError, ProviderError
from bot.generation import GenerationOutcome, GenerationSpec, Generator, Plan
from bot.imagestore import ImageStore
from bot.jobs.service import (
    DeliveredImage,
    Delivery,
    DeliveryError,
    JobExpired,
    JobPresenter,
    SettledFree,
)
from bot.jobs.spool import ImageSpool, SpooledImage
from bot.logs import log_context, redact, redact_tokens
from bot.ops import metrics
from bot.ops.heartbeat import Heartbeat
from bot.providers.base import Reference
from bot.providers.transport import RESULT_SINK, CallCredentials
from bot.storage import JobNotFound, JobRecord, NewResult
from bot.storage.queue import Claim, QueueRepository
from bot.storage.repository import JobRepository
from bot.tenants import RouteAccess, TenantService, rejection

log = logging.getLogger(__name__)

#: Results being posted at once by one worker (re-encoding, uploads).
DELIVERY_CONCURRENCY = 8
#: How long the claim loop sleeps when nothing wakes it (expired leases and slots freed elsewhere are
#: found by this look even when no notification arrives).
IDLE_POLL = 1.0
#: One wait for the queue's wake-up signal.
WAKE_TIMEOUT = 5.0
#: After a wake-up from outside, the next one is heeded no sooner than this: on SQLite every commit of
#: any connection is one, and a busy deployment commits hundreds of times a second.
MIN_LOOK_INTERVAL = 0.05
#: Between two looks for a free slot while failing over.
SLOT_POLL = 0.2
#: Heartbeat of a process in the ``workers`` table.
HEARTBEAT_SECONDS = 5.0
#: How often a worker counts the processes that run jobs (for its share of a handed-on slot).
PEER_REFRESH = 2.0
#: A job without a queue provider is one the command handler has not handed over yet (it is showing
#: "queued"). One still without after this long lost its handler (the gateway died in between) or comes
#: from a version before the database queue: a worker queues it for its model's first route.
ADOPT_AFTER = 60.0
ADOPT_INTERVAL = 15.0


def new_worker_id(role: str) -> str:
    """A process's name in the queue: role, host, pid and a random tail (pids are reused)."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaseLost(Exception):
    """The job is no longer this worker's: stop, settle nothing, post nothing."""


class SettleFailed(Exception):
    """Settling kept failing (the database refused every attempt)."""


# ---------------------------------------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class RecordedDelivery:
    """What was posted for a job, as stored in its row before settling (JSON)."""

    delivery: Delivery
    provider: str | None = None
    provider_model: str | None = None

    def to_json(self) -> str:
        d = self.delivery
        return json.dumps(
            {
                "message_id": d.message_id,
                "channel_id": d.channel_id,
                "provider": self.provider,
                "provider_model": self.provider_model,
                "images": [asdict(img) for img in d.images],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> RecordedDelivery:
        raw = json.loads(text)
        images = [DeliveredImage(**img) for img in raw.get("images") or []]
        return cls(
            Delivery(message_id=raw.get("message_id"), channel_id=raw.get("channel_id"), images=images),
            provider=raw.get("provider"),
            provider_model=raw.get("provider_model"),
        )

    def results(self) -> list[NewResult]:
        d = self.delivery
        return [
            NewResult(
                attachment_id=img.attachment_id,
                filename=img.filename,
                sha256=img.sha256,
                width=img.width,
                height=img.height,
                mime_type=img.mime_type,
                size_bytes=img.size_bytes,
                provider=self.provider,
                message_id=d.message_id,
                channel_id=d.channel_id,
            )
            for img in d.images
        ]


def recorded_delivery(claim: Claim) -> RecordedDelivery | None:
    """The delivery stored with the claimed job, if it was posted before (None when not)."""
    job = claim.job
    text = claim.delivery or job.delivery
    if not text:
        return None
    try:
        return RecordedDelivery.from_json(text)
    except (ValueError, TypeError, KeyError):
        log.error("job %s: its recorded delivery is unreadable; settling it as posted", job.id)
        return RecordedDelivery(Delivery(message_id=None, channel_id=None, images=[]))


# ---------------------------------------------------------------------------------------------- leases


class Lease:
    """This worker's claim on one job, renewed every third of its length while the job runs."""

    def __init__(
        self,
        queue: QueueRepository,
        job_id: int,
        worker_id: str,
        seconds: float,
        expires_at: float,
        clock: Callable[[], float],
    ) -> None:
        self.queue = queue
        self.job_id = job_id
        self.worker_id = worker_id
        self.seconds = seconds
        self.expires_at = expires_at
        self.clock = clock
        self.lost = False
        self.settled = False
        # Settling is under way: a renewal refused now may be our own settlement landing.
        self.settling = False
        self._on_lost: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._on_lost.append(callback)

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name=f"palette-lease-{self.job_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def renew(self) -> bool:
        """Extend the lease now. False when the job is no longer ours (then it is marked lost)."""
        if self.lost:
            return False
        until = self.clock() + self.seconds
        try:
            ok = await self.queue.renew(self.job_id, self.worker_id, until)
        except Exception as exc:
            # Not refused, only not confirmed: ours until the lease we hold runs out.
            log.warning("job %s: could not renew its lease (%s)", self.job_id, type(exc).__name__)
            if self.clock() >= self.expires_at:
                self._lose()
                return False
            return True
        if not ok:
            self._lose()
            return False
        self.expires_at = until
        return True

    async def _keep(self) -> None:
        interval = max(0.05, self.seconds / 3)
        while not (self.lost or self.settled):
            await asyncio.sleep(interval)
            if not self.settled:
                await self.renew()

    def settle(self) -> None:
        """The job was settled (which ended the lease): stop renewing; what follows (telling the user)
        must not be cut short by a renewal that now, rightly, finds the job no longer running."""
        self.settled = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _lose(self) -> None:
        if self.lost or self.settled:
            return
        self.lost = True
        if self.settling:  # the settling step decides (LeaseLost if it did not go through)
            return
        log.warning("job %s: another worker has taken it over; this one stops working on it", self.job_id)
        for callback in self._on_lost:
            callback()


class QueueSlots:
    """The provider slots a claimed job holds in the queue (a :class:`~bot.generation.SlotHolder`)."""

    def __init__(
        self,
        queue: QueueRepository,
        job_id: int,
        worker_id: str,
        lease: Lease,
        held: dict[str, int],
        on_release: Callable[[], Awaitable[None]],
    ) -> None:
        self.queue = queue
        self.job_id = job_id
        self.worker_id = worker_id
        self.lease = lease
        self._held = dict(held)
        self._on_release = on_release
        self.poll = SLOT_POLL

    def held(self, provider: str) -> int:
        return self._held.get(provider, 0)

    @property
    def any_held(self) -> bool:
        return any(self._held.values())

    async def acquire(self, provider: str, *, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        while True:
            if self.lease.lost:
                raise LeaseLost()
            slot = await self.queue.acquire_slot(self.job_id, self.worker_id, provider, self.lease.expires_at)
            if slot is not None:
                self._held[provider] = self._held.get(provider, 0) + 1
                return True
            if deadline is not None and loop.time() >= deadline:
                return False
            wait = self.poll if deadline is None else min(self.poll, max(0.0, deadline - loop.time()))
            await asyncio.sleep(wait)

    async def release(self, provider: str) -> None:
        if not self._held.pop(provider, 0) or self.lease.lost:
            return
        try:
            await self.queue.release_slots(self.job_id, provider, worker_id=self.worker_id)
        except Exception:  # settling frees them too
            log.warning("job %s: could not give back its %s slot", self.job_id, provider, exc_info=True)
        await self._on_release()

    async def release_all(self) -> None:
        """Give back every slot (the provider is done). Never raises: settling frees them as well."""
        if not self.any_held or self.lease.lost:
            self._held.clear()
            return
        self._held.clear()
        try:
            await self.queue.release_slots(self.job_id, worker_id=self.worker_id)
        except Exception:
            log.warning("job %s: could not give back its slots", self.job_id, exc_info=True)
        await self._on_release()

    def forget(self) -> None:
        """The job was given back or taken over: the queue no longer counts these slots as ours."""
        self._held.clear()

    def take_all(self) -> list[str]:
        """The providers this job still holds slots of, which the caller now gives back (none if the
        lease is lost: the new owner's slots are not ours to free)."""
        providers = [] if self.lease.lost else [p for p, n in self._held.items() if n]
        self._held.clear()
        return providers


# ---------------------------------------------------------------------------------------------- presence


class Presence(Heartbeat):
    """A process's row in the deployment's ``workers`` table, kept fresh by a heartbeat."""

    def __init__(
        self,
        queue: QueueRepository,
        role: str,
        worker_id: str,
        *,
        interval: float = HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(interval)
        self.queue = queue
        self.role = role
        self.worker_id = worker_id
        self.clock = clock

    async def start(self) -> None:
        now = self.clock()
        await self.queue.register_worker(self.worker_id, self.role, socket.gethostname(), os.getpid(), now)
        self.start_beating(first_now=False)

    async def beat(self) -> None:
        await self.queue.heartbeat(self.worker_id, self.clock())

    async def farewell(self) -> None:
        await self.queue.remove_worker(self.worker_id)


# ---------------------------------------------------------------------------------------------- the worker


@dataclass(eq=False)
class _HandOn:
    """A job done with its provider calls, waiting to give its slots back (see Worker._hand_on)."""

    job_id: int
    providers: list[str]
    done: bool = False


@dataclass(eq=False)
class RunningJob:
    claim: Claim
    lease: Lease
    slots: QueueSlots
    task: asyncio.Task[None] | None = None
    generating: bool = True  # talking to providers (counts against the worker's max)
    given_back: bool = False
    # Cancelled by its requester or a moderator (the job is already settled): stop, post nothing.
    cancelled: bool = False
    spooled: list[SpooledImage] = field(default_factory=list)
    #: The server's own keys for this job (decrypted here, from the database), None: the operator's.
    credentials: CallCredentials | None = None

    @property
    def job_id(self) -> int:
        return self.claim.job.id


class Worker:
    """Claims jobs from the queue and runs them (the only place jobs are run)."""

    def __init__(
        self,
        jobs: JobRepository,
        queue: QueueRepository,
        generator: Generator,
        presenter: JobPresenter,
        settings: Settings,
        *,
        worker_id: str,
        spool: ImageSpool,
        clock: Callable[[], float] = time.time,
        max_jobs: int | None = None,
    ) -> None:
        self.jobs = jobs
        self.queue = queue
        self.generator = generator
        self.presenter = presenter
        self.settings = settings
        self.worker_id = worker_id
        self.spool = spool
        #: Where delivered images are kept for the web gallery (bot.imagestore); set by bot.app.
        self.image_store: ImageStore | None = None
        self.clock = clock
        capacity = generator.capacity()
        self.max_jobs = max_jobs or settings.worker_max_jobs or max(1, sum(capacity.values()))
        self.total_slots = max(1, sum(capacity.values()))
        #: Processes that run jobs (workers, all-in-one), from the heartbeats; refreshed now and then.
        self._peers = 1
        self._peers_at = -PEER_REFRESH
        self._handing: list[_HandOn] = []
        self._hand_lock = asyncio.Lock()
        # Jobs done with their provider and posting (or waiting to post) hold images: bound them too, so
        # a worker whose uploads are slow leaves new jobs to the other workers.
        self.max_waiting = self.max_jobs + DELIVERY_CONCURRENCY
        self.lease_seconds = settings.job_lease_seconds
        self.adopt_after = ADOPT_AFTER
        self._adopted_at = 0.0
        self.settle_attempts = 4
        self.settle_backoff = 0.25
        self.settle_backoff_max = 30.0
        self._delivery_slots = asyncio.Semaphore(DELIVERY_CONCURRENCY)
        self._running: dict[int, RunningJob] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        # Set while this worker could take another job: only then are the queue's wake-ups listened to.
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        #: Servers' own provider keys (looked up per job for its server); None: operator keys only.
        self.tenants: TenantService | None = None
        #: Told when a provider refused a server's own key (the server's mod log, in the bot).
        self.on_key_rejected: Callable[[JobRecord, ProviderError], None] | None = None

    # ------------------------------------------------------------------ what tests and status see

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def generating(self) -> int:
        return sum(1 for r in self._running.values() if r.generating)

    def poke(self) -> None:
        """A job was queued in this process: look for work now."""
        self._wake.set()

    def abandon(self, job_id: int) -> bool:
        """The job was cancelled (and settled as such): if this worker runs it, stop at once, post nothing.

        Workers in other processes find out by themselves: the lease renewal is refused (the job is
        finished), and the job's status is looked at once more right before its result would be posted."""
        running = self._running.get(job_id)
        if running is None or running.task is None:
            return False
        running.cancelled = True
        running.slots.forget()  # settling the cancellation freed them in the queue
        running.task.cancel()
        return True

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Match the queue's slots to this worker's caps, give jobs from older versions a queue provider,
        then claim. Jobs left running by a worker that died are taken over once their lease expires."""
        self._stopping = False
        await self.queue.sync_slots(self.generator.slot_capacity())
        await self._adopt_unassigned()
        await self._count_peers()
        self._loop_task = asyncio.create_task(self._loop(), name="palette-worker")
        self._listen_task = asyncio.create_task(self._listen(), name="palette-worker-wakeups")

    async def _adopt_unassigned(self) -> int:
        """Queue the jobs nobody handed over (see :data:`ADOPT_AFTER`)."""
        self._adopted_at = self.clock()
        adopted = 0
        for job in await self.jobs.unfinished_jobs():
            if job.queue_provider or self.clock() - job.created_at < self.adopt_after:
                continue
            model = get_model(job.model)
            routes = model.routes_for(self.generator.enabled, self.generator.rank) if model else []
            provider = job.provider or (
                routes[0].provider if routes else next(iter(self.generator.providers), "")
            )
            if provider and await self.queue.set_queue_provider(job.id, provider):
                adopted += 1
        if adopted:
            log.info("queued %d job(s) that no command handler handed over", adopted)
        return adopted

    async def _give_back(self, job_id: int, attempts: int = 3) -> None:
        """Hand a job back to the queue at shutdown. Tried again after a moment: a write cancelled an
        instant ago (the job's own task) can still hold the connection, and a job not given back waits
        out its whole lease before another worker takes it."""
        for attempt in range(attempts):
            try:
                await self.queue.release_job(job_id, self.worker_id)
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    async def stop(self, grace: float = 0.0) -> None:
        """Claim nothing more; give running jobs ``grace`` seconds, then hand the rest back to the queue."""
        self._stopping = True
        self._wake.set()
        for task in (self._loop_task, self._listen_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop_task = self._listen_task = None
        tasks = {r.task for r in self._running.values() if r.task is not None}
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        leftovers = list(self._running.values())
        for running in leftovers:
            running.given_back = True
            if running.task is not None:
                running.task.cancel()
        if leftovers:
            await asyncio.gather(*(r.task for r in leftovers if r.task is not None), return_exceptions=True)
        for running in leftovers:
            await running.lease.stop()
            running.slots.forget()
            if running.lease.lost:
                continue
            try:
                await self._give_back(running.job_id)
            except Exception as exc:
                log.warning(
                    "job %s: could not give it back (%s); it is taken over when its lease ends",
                    running.job_id,
                    redact_tokens(f"{type(exc).__name__}: {exc}"),
                )
        self._running.clear()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if leftovers:
            log.info("gave %d unfinished job(s) back to the queue", len(leftovers))

    # ------------------------------------------------------------------ claiming

    async def _listen(self) -> None:
        while True:
            # A full worker has nothing to gain from wake-ups: its own jobs make room (and wake it).
            await self._room.wait()
            try:
                await self.queue.wait_for_work(WAKE_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("waiting for work failed (%s)", type(exc).__name__)
                await asyncio.sleep(1.0)
            # Notified, or a periodic look: leases expire and slots free up without a notification.
            self._wake.set()
            await asyncio.sleep(MIN_LOOK_INTERVAL)

    def _update_room(self) -> None:
        if self._has_room():
            self._room.set()
        else:
            self._room.clear()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                if self.clock() - self._adopted_at >= ADOPT_INTERVAL:
                    await self._adopt_unassigned()
                if self.clock() - self._peers_at >= PEER_REFRESH:
                    await self._count_peers()
                await self._fill()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("claiming jobs failed")
                await asyncio.sleep(1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL)

    def _has_room(self) -> bool:
        return self._free_places() > 0

    def _free_places(self) -> int:
        """How many more jobs this worker takes now."""
        waiting = len(self._running) - self.generating
        return max(0, min(self.max_jobs - self.generating, self.max_waiting - waiting))

    async def _fill(self) -> None:
        # Several claims per look at the queue (one ranking of the queue for all of them).
        while not self._stopping and (room := self._free_places()) > 0:
            claims = await self.queue.claim_many(self.worker_id, self.clock(), self.lease_seconds, room)
            if self._stopping:  # claimed while stopping: straight back
                for claim in claims:
                    await self.queue.release_job(claim.job.id, self.worker_id)
                return
            for claim in claims:
                self._begin(claim)
            if len(claims) < room:
                return

    def _begin(self, claim: Claim) -> None:
        job = claim.job
        lease = Lease(
            self.queue, job.id, self.worker_id, self.lease_seconds, claim.lease_expires_at, self.clock
        )
        slots = QueueSlots(self.queue, job.id, self.worker_id, lease, {claim.provider: 1}, self._slots_freed)
        running = RunningJob(claim, lease, slots)
        self._running[job.id] = running
        task = running.task = asyncio.create_task(self._run(running), name=f"palette-job-{job.id}")

        def stop_working() -> None:
            # From the lease's renewal task: cancel the job. From the job itself (a refused renewal
            # while settling): it raises LeaseLost on its own.
            if asyncio.current_task() is not task:
                task.cancel()

        lease.on_lost(stop_working)
        lease.start()
        self._update_room()

    async def _hand_on(self, running: RunningJob) -> None:
        """Give back the job's provider slots and, in the same write, claim this worker's next jobs (the
        slots go straight to the next jobs in the fair order). Jobs whose calls end while a hand-on is
        under way go together in the next one (one ranking of the queue for all of them). Never raises:
        settling frees the slots as well, and the claim loop looks at the queue again."""
        providers = running.slots.take_all()
        running.generating = False
        if providers:
            entry = _HandOn(running.job_id, providers)
            self._handing.append(entry)
            async with self._hand_lock:  # FIFO: whoever gets it next takes everything waiting
                if not entry.done:
                    batch, self._handing = self._handing, []
                    # Shielded: this job being cancelled (a lost lease, /cancel) must not leave the
                    # other jobs of the batch holding slots they are done with.
                    await asyncio.shield(self._hand_on_batch(batch))
        self._update_room()
        self._wake.set()

    async def _hand_on_batch(self, batch: list[_HandOn]) -> None:
        for entry in batch:
            entry.done = True
        room = 0 if self._stopping else min(self._free_places(), self._share_left())
        job_ids = [entry.job_id for entry in batch]
        providers = sorted({p for entry in batch for p in entry.providers})
        try:
            claims = await self.queue.release_and_claim(
                job_ids, self.worker_id, providers, self.clock(), self.lease_seconds, room
            )
        except Exception:
            log.warning("jobs %s: could not give back their slots", job_ids, exc_info=True)
            return
        for claim in claims:
            if self._stopping:  # claimed while stopping: straight back (a lease ends otherwise)
                with contextlib.suppress(Exception):
                    await self._give_back(claim.job.id)
            else:
                self._begin(claim)

    def _share_left(self) -> int:
        """How many more jobs this worker may keep by handing its slots on: its share of the slots with
        the other job-running processes. Beyond it a freed slot goes back to the queue (the others are
        woken), so the workers that started first do not keep every slot for good."""
        share = -(-self.total_slots // max(1, self._peers))
        return max(0, share - self.generating)

    async def _count_peers(self) -> None:
        self._peers_at = self.clock()
        try:
            workers = await self.queue.workers()
        except Exception as exc:
            log.debug("could not count the workers (%s)", type(exc).__name__)
            return
        fresh = self.clock() - 3 * HEARTBEAT_SECONDS
        self._peers = max(
            1, sum(1 for w in workers if w.role in ("worker", "all") and w.heartbeat_at >= fresh)
        )

    async def _slots_freed(self) -> None:
        """Slots went back to the queue (which tells the other workers): look for the next job here."""
        self._wake.set()

    # ------------------------------------------------------------------ one job

    async def _run(self, running: RunningJob) -> None:
        job_id = running.job_id
        job = running.claim.job
        # Every log line of this job's task carries its ids (JSON logs; see bot.logs.log_context).
        log_context(job_id=job_id, user_id=job.user_id, guild_id=job.guild_id)
        # Results a provider streams are decoded into the spool (memory budget, disk beyond it).
        RESULT_SINK.set(self.spool.sink)
        try:
            await self._work(running)
        except asyncio.CancelledError:
            if not (running.lease.lost or running.given_back or running.cancelled):
                raise
        except LeaseLost:
            pass
        except Exception:
            log.exception("job %s crashed in the worker", job_id)
        finally:
            if running.spooled:
                await self.spool.discard(running.spooled)
                running.spooled = []
            if not running.given_back:
                await running.lease.stop()
                self._running.pop(job_id, None)
                self._update_room()
                self._wake.set()

    async def _work(self, running: RunningJob) -> None:
        claim, lease, slots = running.claim, running.lease, running.slots
        job = claim.job
        recorded = recorded_delivery(claim)
        if recorded is not None:
            # Posted by a worker that died before settling: settle from the record, never post again.
            await slots.release_all()
            running.generating = False
            log.info("job %s: already posted; settling it from its recorded delivery", job.id)
            await self._settle_delivered(running, recorded, record=False)
            return
        if self.clock() - job.created_at > self.settings.job_max_age:
            await slots.release_all()
            running.generating = False
            await self._fail(running, JobExpired())
            return
        try:
            if self.tenants is not None:
                running.credentials = await self.tenants.credentials(job.guild_id)
            plan = await self._plan_for(job, running.credentials)
        except PaletteError as exc:
            await slots.release_all()
            running.generating = False
            await self._fail(running, exc)
            return
        # Progress is shown in the background: the provider call does not wait for Discord.
        self._spawn(self._safe(self.presenter.started(job)))

        async def on_task(provider: str, provider_model: str, task_id: str) -> None:
            await self.jobs.set_task(job.id, provider, provider_model, task_id)

        try:
            try:
                outcome = await self._generate(job, plan, slots, on_task, running.credentials)
            finally:
                # The provider is done: its slot is the next job's, before this one's images are posted.
                await self._hand_on(running)
                self._report_rejected(job, running.credentials)
        except LeaseLost:
            raise
        except PaletteError as exc:
            # The server's own key was refused: its admins must act, not the bot's operator.
            await self._fail(running, rejection(running.credentials, exc) or exc)
            return
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            await self._fail(running, ProviderError("Something went wrong while generating."))
            return
        keep: list[tuple[str, bytes | Path]] = []
        try:
            running.spooled = await self.spool.admit(outcome.images)
            outcome.images = []  # the spool holds them now (memory budget, or disk)
            async with self._delivery_slots:
                if lease.lost or await self._cancelled_meanwhile(job.id):
                    raise LeaseLost()
                delivery = await self.presenter.deliver(job, outcome, running.spooled)
            if self.image_store is not None:
                # The web gallery's copy is made after settling (never widening the window between
                # posting and recording); the images are kept past the spool until then.
                keep = await self.image_store.hold(
                    [
                        (img.filename, item.data if item.data is not None else item.path)  # type: ignore[misc]
                        for img, item in zip(delivery.images, running.spooled, strict=False)
                        if item.data is not None or item.path is not None
                    ]
                )
        except (LeaseLost, asyncio.CancelledError):
            raise
        except PaletteError as exc:
            await self._fail(running, exc)
            return
        except Exception:
            log.exception("job %s: delivery failed", job.id)
            await self._fail(running, DeliveryError("The images were made but could not be posted."))
            return
        finally:
            await self.spool.discard(running.spooled)
            running.spooled = []
        recorded = RecordedDelivery(delivery, outcome.provider, outcome.provider_model)
        await self._settle_delivered(running, recorded, record=True)
        if keep and self.image_store is not None:  # errors are logged there, never raised
            self._spawn(self.image_store.save(job.user_id, job.id, keep))

    def _report_rejected(self, job: JobRecord, credentials: CallCredentials | None) -> None:
        """Tell the server's mod log about each of its own keys a provider refused during the job."""
        if credentials is None or not credentials.rejected or self.on_key_rejected is None:
            return
        for error in {e.provider: e for e in credentials.rejected}.values():
            log.warning("job %s: %s refused the server's own key (%s)", job.id, error.provider, error.status)
            try:
                self.on_key_rejected(job, error)
            except Exception:
                log.exception("job %s: could not report a refused server key", job.id)

    async def _cancelled_meanwhile(self, job_id: int) -> bool:
        """Whether the job was cancelled (from any process) while it was being generated: then its result
        is not posted. A failed look is not a cancellation (the lease renewal still guards)."""
        try:
            return await self.jobs.job_status(job_id) == "cancelled"
        except Exception as exc:
            log.warning("job %s: could not look at its status (%s)", job_id, type(exc).__name__)
            return False

    async def _generate(
        self,
        job: JobRecord,
        plan: Plan,
        slots: QueueSlots,
        on_task: Any,
        credentials: CallCredentials | None = None,
    ) -> GenerationOutcome:
        if job.task_id and job.provider:
            # Submitted before (by a worker that died, or before a restart): poll it, never pay twice.
            route = next((r for r in plan.routes if r.provider == job.provider), None)
            if route is None:
                raise NoRouteAvailable(
                    "The provider that was making this image is not available any more; nothing was charged."
                )
            try:
                return await self.generator.resume(
                    job.provider, job.task_id, plan, route, slots=slots, credentials=credentials
                )
            except ProviderError as exc:
                if credentials is not None and rejection(credentials, exc) is not None:
                    credentials.rejected.append(exc)
                raise
        return await self.generator.run(plan, on_task=on_task, slots=slots, credentials=credentials)

    async def _plan_for(self, job: JobRecord, credentials: CallCredentials | None = None) -> Plan:
        params: dict[str, Any] = json.loads(job.params or "{}")
        # Jobs say how many references they have (older ones do not: read them).
        refs = await self.jobs.get_references(job.id) if params.get("references", 1) else []
        references = tuple(Reference(mime_type=r.mime_type, data=r.data, url=r.url) for r in refs)
        access = (
            RouteAccess(frozenset(credentials.keys), credentials.operator_fallback) if credentials else None
        )
        return self.generator.plan(
            GenerationSpec(
                model=job.model,
                prompt=job.prompt,
                aspect_ratio=params.get("aspect_ratio"),
                resolution=params.get("resolution"),
                count=job.count,
                seed=params.get("seed"),
                references=references,
                strict_safety=bool(params.get("strict_safety")),
            ),
            access,
        )

    # ------------------------------------------------------------------ settling

    async def _settle_delivered(
        self, running: RunningJob, recorded: RecordedDelivery, *, record: bool
    ) -> None:
        job, lease = running.claim.job, running.lease
        if record:
            try:
                ours = await self._retry(
                    lease, lambda: self.queue.record_delivery(job.id, self.worker_id, recorded.to_json())
                )
            except SettleFailed:
                ours = True  # not recorded, but still ours: settle it now, that records it too
                log.error("job %s: could not record what was posted; settling it anyway", job.id)
            if not ours:
                raise LeaseLost()
        delivery = recorded.delivery
        try:
            await self._settle(
                lease,
                lambda: self.jobs.finish_job(
                    job.id,
                    min(len(delivery.images), job.reserved),
                    status="done",
                    result_message_id=delivery.message_id,
                    results=recorded.results(),
                    provider=recorded.provider,
                    provider_model=recorded.provider_model,
                    now=self.clock(),
                ),
            )
            metrics.job_finished(
                "delivered", model=job.model, images=len(delivery.images), requested_at=job.created_at
            )
            return
        except SettleFailed:
            log.error("job %s: posted, but settling it kept failing; refunding it instead", job.id)
        # The result is out but cannot be accounted for: it is free, and the user is told so. Retried
        # for as long as this worker holds the job; the recorded delivery keeps anyone from reposting it.
        error = SettledFree()
        finished = await self._settle(
            lease,
            lambda: self.jobs.finish_job(
                job.id,
                0,
                status="done",
                error=error.message,
                error_kind=type(error).__name__,
                result_message_id=delivery.message_id,
                now=self.clock(),
            ),
            forever=True,
        )
        if finished:
            metrics.job_finished("refunded")
            await self._safe(self.presenter.notice(job, error))

    async def _fail(self, running: RunningJob, error: PaletteError) -> None:
        job, lease = running.claim.job, running.lease
        kind = type(error).__name__
        # Provider texts reach users and the database: never with one of our secrets (or the server's).
        secrets = self.settings.secrets()
        if running.credentials is not None:
            secrets = [*secrets, *(k.get_secret_value() for k in running.credentials.keys.values())]
        error.scrub(lambda text: redact(text, secrets))
        if not await lease.renew():  # confirm the job is still ours before settling it
            raise LeaseLost()
        finished = await self._settle(
            lease,
            lambda: self.jobs.finish_job(
                job.id, 0, status="failed", error=error.message, error_kind=kind, now=self.clock()
            ),
            forever=True,
        )
        if finished:
            # Too old to run (JOB_MAX_AGE): its reservation went back; any other failure is a failure.
            metrics.job_finished("refunded" if isinstance(error, JobExpired) else "failed")
            await self._safe(self.presenter.failed(job, error))

    async def _settle(
        self, lease: Lease, finish: Callable[[], Awaitable[bool]], *, forever: bool = False
    ) -> bool:
        """``finish_job`` through :meth:`_retry`; once it went through, the lease is over."""
        lease.settling = True
        try:
            finished = bool(await self._retry(lease, finish, forever=forever))
        finally:
            lease.settling = False
        lease.settle()
        return finished

    async def _retry(
        self, lease: Lease, attempt: Callable[[], Awaitable[Any]], *, forever: bool = False
    ) -> Any:
        """Run a settling step until it works: ``settle_attempts`` tries with doubling backoff, or (with
        ``forever``) for as long as the job is ours, at most ``settle_backoff_max`` apart."""
        delay = self.settle_backoff
        tries = 0
        while True:
            if lease.lost:
                raise LeaseLost()
            try:
                return await attempt()
            except (JobNotFound, ValueError):
                raise
            except Exception as exc:
                tries += 1
                log.warning(
                    "job %s: settling failed (attempt %d: %s); retrying",
                    lease.job_id,
                    tries,
                    type(exc).__name__,
                )
                if not forever and tries >= self.settle_attempts:
                    raise SettleFailed() from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settle_backoff_max)

    # ------------------------------------------------------------------ helpers

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _safe(self, coro: Awaitable[Any]) -> None:
        """Progress messages are best effort: a failed edit must not fail the job."""
        try:
            await coro
        except Exception:
            log.warning("presenter call failed", exc_info=True)
