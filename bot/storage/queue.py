"""The job queue and the deployment's shared state, as the job runtime sees them (no SQL here).

Several processes (gateways that accept commands, workers that generate) share one database. The
database is the queue: a worker *claims* a job with a lease and renews it while it works; a worker that
dies stops renewing, and once the lease has expired another worker takes the job over. Provider
concurrency (``*_CONCURRENCY``) is a set of slot rows per provider, counted over every worker; a job holds
a slot while it talks to that provider. Circuit breakers and recent call figures are rows too, so a
provider failing for one worker is skipped by all of them.

The SQL implementation (SQLite and PostgreSQL) is :class:`bot.storage.queue_sql.SqlQueueRepository` and
:class:`bot.storage.queue_sql.SqlHealthRepository`.

Claim order (fairness across the whole deployment): queued jobs are served level by level, round-robin
over users: every user's oldest waiting job first (oldest of those first), then every user's second job,
and so on. :meth:`QueueRepository.position` counts in the same order, so the place shown to a user is the
place the workers honour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bot.storage.records import JobRecord


@dataclass(frozen=True, slots=True)
class Claim:
    """A job a worker now runs, and the provider slot it holds."""

    job: JobRecord  # as it is after the claim (status 'running', this worker's lease)
    provider: str  # the provider whose slot is held (the job's queue_provider)
    slot: int
    lease_expires_at: float
    # The job was 'running' under another worker whose lease expired (that worker died): resume it.
    taken_over: bool = False
    # What the previous worker posted (record_delivery), if it got that far: settle from it, never post again.
    delivery: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    role: str  # 'all', 'gateway', 'worker'
    host: str
    pid: int
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True, slots=True)
class QueueDepth:
    queued: int
    running: int
    # provider -> (slots in use, slots in all)
    slots: Mapping[str, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class ProviderHealthRow:
    """One provider's shared breaker state and its recent calls (all workers)."""

    provider: str
    state: str  # 'closed', 'open', 'half-open'
    consecutive_failures: int
    calls: int
    error_rate: float
    median_latency_s: float | None


@runtime_checkable
class QueueRepository(Protocol):
    """Claims, leases, provider slots, queue positions, wake-ups and the processes of the deployment."""

    # --- processes ---
    async def register_worker(self, worker_id: str, role: str, host: str, pid: int, now: float) -> None: ...

    async def heartbeat(self, worker_id: str, now: float) -> None: ...

    async def remove_worker(self, worker_id: str) -> None: ...

    async def workers(self) -> list[WorkerInfo]: ...

    # --- slots ---
    async def sync_slots(self, capacity: Mapping[str, int]) -> None:
        """Make each provider's slot rows match ``capacity`` (only for the providers named). Slots above
        the capacity are removed once free; a busy one stays until its job lets go."""
        ...

    # --- claims ---
    async def claim(self, worker_id: str, now: float, lease_seconds: float) -> Claim | None:
        """Take the next job in fair order whose ``queue_provider`` has a free slot: a ``queued`` job, or
        a ``running`` one whose lease expired (``taken_over``). One transaction: the job becomes
        ``running`` under this worker until ``now + lease_seconds`` and holds one slot. None when nothing
        can start now. Two workers never claim the same job or the same slot."""
        ...

    async def claim_many(self, worker_id: str, now: float, lease_seconds: float, limit: int) -> list[Claim]:
        """Up to ``limit`` claims at once, as ``limit`` calls of :meth:`claim` in a row would take them
        (the same fair order, each with its slot): a worker with room for several jobs looks at the
        queue once. Empty when nothing can start now."""
        ...

    async def renew(self, job_id: int, worker_id: str, until: float) -> bool:
        """Extend the job's lease and its slots' leases; False if the job is no longer this worker's
        (finished, or taken over after the lease ran out) — the caller must then stop working on it."""
        ...

    async def acquire_slot(self, job_id: int, worker_id: str, provider: str, until: float) -> int | None:
        """One more slot for this job at ``provider`` (failover, or a second call of a split job);
        None when that provider is full."""
        ...

    async def release_slots(
        self, job_id: int, provider: str | None = None, *, worker_id: str | None = None
    ) -> None:
        """Free the job's slots (at ``provider`` only, when given): it is done with the provider(s).
        Pass ``worker_id``: then only slots this worker took are freed, so a worker whose job was taken
        over (renew() said False) cannot free the new owner's slot by cleaning up. Wakes waiters."""
        ...

    async def release_and_claim(
        self,
        job_ids: Sequence[int],
        worker_id: str,
        providers: Sequence[str],
        now: float,
        lease_seconds: float,
        limit: int,
    ) -> list[Claim]:
        """:meth:`release_slots` of this worker's slots of the jobs (done with ``providers``), then up
        to ``limit`` claims as :meth:`claim_many` would make them, in one write: the slots go straight
        to the next jobs in the fair order, and the other workers are woken only for what is left free."""
        ...

    async def release_job(self, job_id: int, worker_id: str) -> bool:
        """Give an unfinished job back to the queue (shutdown): ``queued`` again, lease and slots freed.
        False if it was not this worker's."""
        ...

    async def set_queue_provider(self, job_id: int, provider: str) -> bool:
        """Which provider's slot the job waits for (set for jobs queued before this column existed)."""
        ...

    async def record_delivery(self, job_id: int, worker_id: str, delivery: str) -> bool:
        """Store what was posted (JSON) before settling, so a job taken over later is settled from it
        and never posted twice. False if the job is no longer this worker's."""
        ...

    # --- what users and operators see ---
    async def position(self, job_id: int) -> int | None:
        """1-based place of a queued job in claim order (None when it is not queued)."""
        ...

    async def depth(self) -> QueueDepth: ...

    # --- wake-ups ---
    async def notify(self) -> None:
        """Tell waiting workers there is work (PostgreSQL NOTIFY; on SQLite waiters poll)."""
        ...

    async def wait_for_work(self, timeout: float) -> bool:
        """Return when :meth:`notify` was called anywhere (True) or after ``timeout`` seconds (False).

        True means "look at the queue", not "there is a job": it is also returned at once by the first
        call (nothing was listened for before it), after the listening connection was re-opened, and for a
        notification that arrived since the previous call. Slots freed (release_slots, release_job),
        set_queue_provider and sync_slots notify by themselves."""
        ...

    async def aclose(self) -> None:
        """Close the listening connection, if any."""
        ...


@runtime_checkable
class HealthRepository(Protocol):
    """Circuit breakers and recent call figures per provider, shared by every worker."""

    async def allow(self, provider: str, now: float, *, cooldown: float, probe_timeout: float) -> bool:
        """Whether a call may go to ``provider`` now. Closed: yes. Open within ``cooldown``: no.
        Half-open: yes for exactly one caller across the deployment (it holds the probe until
        ``now + probe_timeout`` or until it records an outcome)."""
        ...

    async def record(
        self, provider: str, ok: bool, latency_s: float, now: float, *, failure_threshold: int
    ) -> None:
        """One call's outcome: success closes the breaker; ``failure_threshold`` consecutive failures (or
        a failed probe) open it. Also kept for the figures (pruned by age)."""
        ...

    async def release_probe(self, provider: str) -> None:
        """A probe ended without a verdict (the request itself was invalid)."""
        ...

    async def snapshot(self, now: float, *, cooldown: float, window: int = 50) -> list[ProviderHealthRow]: ...
