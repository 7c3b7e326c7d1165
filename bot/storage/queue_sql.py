"""The queue and shared provider health in SQL: one implementation for SQLite and PostgreSQL.

See :mod:`bot.storage.queue` for the contract. Everything is SQLAlchemy Core; the few places where the
two databases differ are small functions whose names say so (``_insert_ignoring_conflicts``,
``_upsert``, the two wake-up classes ``_PostgresListener`` / ``_SqlitePoller``).

Claims and concurrency
----------------------
A claim reads the fair order first (one read-only statement: it ranks every unfinished job, the
expensive part, so it is read once for as many claims as the worker has room for, and never under the
write lock), then takes the candidates in one short transaction per :data:`CLAIM_BATCH` claims: lock
the job row (re-checking that it is still claimable) and one slot row, write both. Row locks are
taken with ``FOR UPDATE ... SKIP LOCKED`` (PostgreSQL), so two workers claiming at the same moment
never wait for each other and never take the same job or the same slot: the loser of a race simply
skips the locked row and takes the next candidate (or retries with a fresh candidate list). Since slots
are rows, a provider can never have more calls in flight than it has slot rows. A claim never *waits*
for a lock, so claims cannot deadlock with anything.

On SQLite, SQLAlchemy renders no ``FOR UPDATE``; the transaction begins with ``BEGIN IMMEDIATE`` (see
:mod:`bot.storage.engine`), which serializes writers (a candidate another worker took since the read
fails the re-check and is skipped). Within one process every write transaction of the queue, the
provider health and the repositories waits on one lock first (:func:`bot.storage.engine.begin_write`),
so they queue in order instead of in SQLite's busy handler.

Fair order: each unfinished job gets a level, its rank among its user's unfinished jobs (running ones
first, then queued ones oldest first); claims take the lowest level first, then the oldest job. That is
round-robin over users (A1, B1, C1, A2, A3... for users A with five jobs, B and C with one each) and it
holds across workers because it is computed from the database; :meth:`SqlQueueRepository.position`
ranks queued jobs the same way. Jobs whose provider has no free slot are passed over (their user's
level does not change), as the single-process dispatcher did.

An idle worker's claim costs one read-only statement (:func:`_claimable_providers`, driven by the
small ``provider_slots`` table): no write lock is taken when there is nothing to start.

Slots
-----
A slot is *free* when no job holds it, or when its lease ran out and its job is no longer running under
the worker that took the slot (finished, released, taken over: an orphan). A slot whose lease ran out
while its job still runs under the same worker is *not* given to another job: it goes, with the job, to
the worker that takes the job over. So a stalled worker that comes back and renews before anyone took
its job over loses nothing, and one that was taken over learns it from
:meth:`SqlQueueRepository.renew` (False).

When :meth:`SqlQueueRepository.sync_slots` lowers a provider's capacity while slots above it are busy,
those slots are renumbered negative ("retiring": ``slot = -slot - 1``): never claimed again, and deleted
instead of freed when their job lets go.

Wake-ups
--------
PostgreSQL: ``NOTIFY palette_jobs`` (inside the transaction that made work available where that is
this module's doing, so it is delivered on commit), ``LISTEN`` on one dedicated asyncpg connection per
repository. SQLite: an in-process event per database file, plus a 50 ms poll of ``PRAGMA data_version``
on one dedicated connection, which changes whenever another connection (this process's pool or another
process) commits. The poll is one tiny statement that reads no table; a change means "maybe work", and
the waiter's next claim decides (one indexed read when there is none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import fields
from statistics import median
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Integer,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from bot.storage import dialect, schema, sqlstats
from bot.storage.engine import READ_ONLY, begin_write, safe_url, sqlite_path
from bot.storage.queue import Claim, ProviderHealthRow, QueueDepth, WorkerInfo
from bot.storage.records import JobRecord

log = logging.getLogger(__name__)

CHANNEL = "palette_jobs"
# SQLite: how often a waiter looks for commits made by other connections (one PRAGMA, no table read).
SQLITE_POLL_INTERVAL = 0.05
# Candidates looked at per claim attempt, and attempts when other workers won every race (PostgreSQL).
CLAIM_CANDIDATES = 16
CLAIM_ATTEMPTS = 5
# Claims taken in one write transaction (a short hold of SQLite's one write lock).
CLAIM_BATCH = 8
# provider_calls rows kept per provider: by age, and at most this many newest.
CALLS_MAX_AGE = 3600.0
CALLS_MAX_ROWS = 1000

_jobs = schema.jobs
_slots = schema.provider_slots
_health = schema.provider_health
_calls = schema.provider_calls
_workers = schema.workers

_JOB_FIELDS = tuple(f.name for f in fields(JobRecord))


def _job_record(row: Any) -> JobRecord:
    mapping = row._mapping
    return JobRecord(**{name: mapping[name] for name in _JOB_FIELDS})


# --- the conditions and statements, built once ---------------------------------------------------------
#
# The claim path runs many times a second: its statements are module constants with bound parameters,
# so building and compiling them costs nothing per call (SQLAlchemy caches the compiled form).

_NOW = bindparam("b_now", type_=schema.Seconds)
_UNTIL = bindparam("b_until", type_=schema.Seconds)
_JOB_ID = bindparam("b_job_id", type_=schema.RowId)
_PROVIDER = bindparam("b_provider", type_=Text())
_WORKER = bindparam("b_worker_id", type_=Text())
# Literal values, so SQLite matches the partial index ``jobs_unfinished_user`` (it cannot with parameters).
_UNFINISHED = _jobs.c.status.in_([literal_column("'queued'"), literal_column("'running'")])


def _lease_expired(lease: Any, now: Any) -> ColumnElement[bool]:
    # A NULL lease (a running job from before leases existed) counts as expired.
    return or_(lease.is_(None), lease < now)


def _job_claimable_status(now: Any) -> ColumnElement[bool]:
    """Queued, or running under a lease that ran out (its worker died: take it over)."""
    return or_(
        _jobs.c.status == "queued",
        and_(_jobs.c.status == "running", _lease_expired(_jobs.c.lease_expires_at, now)),
    )


def _slot_free(now: Any | None) -> ColumnElement[bool]:
    """No job holds the slot, or it is an orphan: its job no longer runs under the slot's worker (and,
    when ``now`` is given, its lease ran out; acquire_slot has no clock and relies on ownership alone).
    Retiring (negative) slots are never free."""
    owner = _jobs.alias("slot_owner")
    still_owned = exists(
        select(literal(1))
        .select_from(owner)
        .where(
            owner.c.id == _slots.c.job_id,
            owner.c.status == "running",
            owner.c.worker_id == _slots.c.worker_id,
        )
    )
    orphaned: ColumnElement[bool] = not_(still_owned)
    if now is not None:
        orphaned = and_(_lease_expired(_slots.c.lease_expires_at, now), orphaned)
    return and_(_slots.c.slot >= 0, or_(_slots.c.job_id.is_(None), orphaned))


def _claimable_providers() -> Any:
    """A claim's first, read-only look (parameter ``b_now``): rows ``(provider, 1)`` for providers with a
    free slot and a queued job, ``(provider, 0)`` for providers of running jobs whose lease ran out.
    Driven by the few slot rows, so it costs next to nothing when every slot is busy, however long the
    queue; no rows means nothing can start (no write lock taken)."""
    with_free_slot = (
        select(_slots.c.provider, literal_column("1").label("free"))
        .where(
            _slot_free(_NOW),
            exists(
                select(literal(1))
                .select_from(_jobs)
                .where(_jobs.c.queue_provider == _slots.c.provider, _jobs.c.status == "queued")
            ),
        )
        .distinct()
    )
    expired = (
        select(_jobs.c.queue_provider, literal_column("0").label("free"))
        # Neither DISTINCT nor "queue_provider IS NOT NULL" here: with either, SQLite walks the
        # queue_provider index over the whole history instead of the few running jobs (jobs_status).
        # The caller drops NULL providers; there are at most as many rows as slots.
        .where(_jobs.c.status == "running", _lease_expired(_jobs.c.lease_expires_at, _NOW))
    )
    return union_all(with_free_slot, expired)


#: How far back a user's started jobs are looked for when counting how often they were served while
#: their oldest waiting job waited (a job is refunded after JOB_MAX_AGE anyway).
SERVED_HORIZON = 86_400.0


def _levelled(name: str) -> Any:
    """Unfinished jobs with their round-robin level. A user's queued jobs are numbered 1, 2, 3...
    oldest first, after the jobs of that user that *started* while their oldest queued job waited
    (running or finished since: the user was served in the meantime). Serving the lowest level first
    (then the oldest) is round-robin over users, as a rotation in which a served user goes to the back:
    a user whose first job just started, or just finished, has their next one behind every other
    waiting user's first. (Counting running jobs only would not be: once a user's first job finished,
    their second, older than later users' first jobs, would step ahead of them.) Running jobs (a
    taken-over claim) are numbered among themselves, first.

    How often a user was served is counted once per waiting *user*, on the row of their oldest queued
    job (a CASE evaluates its subquery only there), and handed to the user's other jobs by a window:
    with 1000 queued jobs of 200 users that is 200 index ranges instead of 1000 (a join to a per-user
    aggregate would be cheaper still in theory, but SQLite scans such a derived table once per row)."""
    queued = _jobs.c.status == literal_column("'queued'")
    ranked = (
        select(
            _jobs.c.id,
            _jobs.c.user_id,
            _jobs.c.status,
            _jobs.c.lease_expires_at,
            _jobs.c.queue_provider,
            _jobs.c.created_at,
            func.row_number()
            .over(partition_by=(_jobs.c.user_id, _jobs.c.status), order_by=(_jobs.c.created_at, _jobs.c.id))
            .label("nth"),
            # When the user's oldest queued job was queued.
            func.min(case((queued, _jobs.c.created_at)))
            .over(partition_by=_jobs.c.user_id)
            .label("first_wait"),
        )
        .where(_UNFINISHED)
        .subquery(f"{name}_ranked")
    )
    started = _jobs.alias(f"{name}_started")
    # One index range per waiting user (jobs_user_created), whatever the planner thinks of the row counts.
    served = (
        select(func.count())
        .where(
            started.c.user_id == ranked.c.user_id,
            started.c.created_at >= ranked.c.first_wait - SERVED_HORIZON,
            started.c.started_at >= ranked.c.first_wait,
        )
        .scalar_subquery()
    )
    is_queued = ranked.c.status == literal_column("'queued'")
    firsts = select(
        ranked.c.id,
        ranked.c.user_id,
        ranked.c.status,
        ranked.c.lease_expires_at,
        ranked.c.queue_provider,
        ranked.c.created_at,
        ranked.c.nth,
        case((and_(is_queued, ranked.c.nth == 1), served)).label("served"),
    ).subquery(f"{name}_firsts")
    level = case(
        (
            firsts.c.status == literal_column("'queued'"),
            func.max(firsts.c.served).over(partition_by=firsts.c.user_id) + firsts.c.nth,
        ),
        else_=firsts.c.nth,
    ).label("level")
    return select(
        firsts.c.id,
        firsts.c.status,
        firsts.c.lease_expires_at,
        firsts.c.queue_provider,
        firsts.c.created_at,
        level,
    ).subquery(name)


def _claim_candidates() -> Any:
    """The next jobs in fair order (level, then age), parameters ``b_now`` and ``b_free`` (providers with
    a free slot): queued jobs of those providers, and running jobs whose lease ran out (they may keep
    the slot they hold)."""
    eligible = _levelled("unfinished")
    claimable = or_(
        and_(
            eligible.c.status == "queued", eligible.c.queue_provider.in_(bindparam("b_free", expanding=True))
        ),
        and_(
            eligible.c.status == "running",
            _lease_expired(eligible.c.lease_expires_at, _NOW),
            eligible.c.queue_provider.is_not(None),
        ),
    )
    return (
        select(eligible.c.id, eligible.c.status, eligible.c.queue_provider)
        .where(claimable)
        .order_by(eligible.c.level, eligible.c.created_at, eligible.c.id)
        .limit(bindparam("b_limit", type_=Integer()))
    )


def _position() -> Any:
    """The 1-based places of jobs ``b_job_ids`` among queued jobs, in claim order: rows (id, place)."""
    unfinished = _levelled("unfinished")
    ranked = (
        select(
            unfinished.c.id,
            func.row_number()
            .over(order_by=(unfinished.c.level, unfinished.c.created_at, unfinished.c.id))
            .label("place"),
        )
        .where(unfinished.c.status == "queued")
        .subquery("ranked")
    )
    return select(ranked.c.id, ranked.c.place).where(ranked.c.id.in_(bindparam("b_job_ids", expanding=True)))


_CLAIMABLE_PROVIDERS = _claimable_providers()
_CLAIM_CANDIDATES = _claim_candidates()
_POSITION = _position()
# Lock the job if no other transaction holds it, and only if it is still claimable.
_LOCK_JOB = (
    select(_jobs.c.id)
    .where(_jobs.c.id == _JOB_ID, _job_claimable_status(_NOW), _jobs.c.queue_provider == _PROVIDER)
    .with_for_update(skip_locked=True, of=_jobs)
)
# One slot at the provider: the one the job holds already (taken over), else the lowest free one.
_LOCK_SLOT = (
    select(_slots.c.slot)
    .where(
        _slots.c.provider == _PROVIDER,
        _slots.c.slot >= 0,
        or_(_slots.c.job_id == _JOB_ID, _slot_free(_NOW)),
    )
    .order_by(case((_slots.c.job_id == _JOB_ID, 0), else_=1), _slots.c.slot)
    .limit(1)
    .with_for_update(skip_locked=True, of=_slots)
)
_TAKE_JOB = (
    update(_jobs)
    .where(_jobs.c.id == _JOB_ID)
    .values(
        status="running",
        worker_id=_WORKER,
        lease_expires_at=_UNTIL,
        started_at=func.coalesce(_jobs.c.started_at, _NOW),
    )
    .returning(*(_jobs.c[name] for name in _JOB_FIELDS), _jobs.c.delivery)
)
_TAKE_SLOT = (
    update(_slots)
    .where(_slots.c.provider == _PROVIDER, _slots.c.slot == bindparam("b_slot"))
    .values(job_id=_JOB_ID, worker_id=_WORKER, lease_expires_at=_UNTIL)
)
_OWNED = and_(_jobs.c.id == _JOB_ID, _jobs.c.worker_id == _WORKER, _jobs.c.status == "running")
_IS_OWNED = select(_jobs.c.id).where(_OWNED)
# acquire_slot has no clock: a slot counts as free by ownership alone (see _slot_free).
_LOCK_FREE_SLOT = (
    select(_slots.c.slot)
    .where(_slots.c.provider == _PROVIDER, _slot_free(None))
    .order_by(_slots.c.slot)
    .limit(1)
    .with_for_update(skip_locked=True, of=_slots)
)
_RENEW_JOB = update(_jobs).where(_OWNED).values(lease_expires_at=_UNTIL)
_RENEW_SLOTS = (
    update(_slots)
    .where(_slots.c.job_id == _JOB_ID, _slots.c.worker_id == _WORKER)
    .values(lease_expires_at=_UNTIL)
)


# --- dialect-specific statements ---------------------------------------------------------------------------


def _insert_ignoring_conflicts(dialect_name: str, table: Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for either database."""
    return dialect.insert(dialect_name, table).on_conflict_do_nothing()


def _upsert(dialect_name: str, table: Table, values: Mapping[str, Any], key: Sequence[str]) -> Any:
    """Insert ``values``, or update the row with the same ``key`` columns to them."""
    stmt: Any = dialect.insert(dialect_name, table).values(**values)
    changes = {name: stmt.excluded[name] for name in values if name not in key}
    return stmt.on_conflict_do_update(index_elements=list(key), set_=changes)


def _notify_statement(dialect_name: str) -> Any | None:
    """The statement that wakes listeners on commit (PostgreSQL only)."""
    if dialect_name == "postgresql":
        return select(func.pg_notify(CHANNEL, ""))
    return None


_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure

T = TypeVar("T")


def _retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in _RETRYABLE_SQLSTATES


async def _with_retries(operation: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Run ``operation`` again when PostgreSQL aborted it for a deadlock (statements that lock several
    slot rows in different orders, e.g. sync_slots against release_slots)."""
    for attempt in range(attempts):
        try:
            return await operation()
        except DBAPIError as exc:
            if attempt == attempts - 1 or not _retryable(exc):
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


# --- wake-ups -------------------------------------------------------------------------------------------

# SQLite: the repositories of this process per database, so notify() wakes waiters of any of them.
_sqlite_waiters: dict[str, weakref.WeakSet[SqlQueueRepository]] = {}


class _PostgresListener:
    """``LISTEN palette_jobs`` on one dedicated asyncpg connection (not from the pool: it lives as long
    as the repository and must not be reset or recycled), reopened when it drops."""

    def __init__(self, engine: AsyncEngine, wake: Callable[[], None]) -> None:
        self._engine = engine
        self._wake = wake
        self._conn: Any = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> None:
        import asyncpg

        await self.close()
        # Connection fields, not a DSN string: passwords with URL-special characters need no quoting.
        args = self._engine.url.translate_connect_args(username="user")
        conn = await asyncpg.connect(**args, timeout=10)
        try:
            await conn.add_listener(CHANNEL, self._on_notification)
            conn.add_termination_listener(self._on_termination)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    def _on_notification(self, *_args: Any) -> None:
        self._wake()

    def _on_termination(self, *_args: Any) -> None:
        # Wake the waiter: it reconnects and reports "maybe work" (notifications may have been missed).
        self._wake()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)


class _SqlitePoller:
    """``PRAGMA data_version`` on one dedicated connection: it moves when any *other* connection commits
    (another process, or this process's pool)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: Any = None
        self._version: int | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def connect(self) -> None:
        import aiosqlite

        await self.close()
        conn = await aiosqlite.connect(self._path, isolation_level=None)
        try:
            self._version = await self._read(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    @staticmethod
    async def _read(conn: Any) -> int:
        sqlstats.count("wake-up polls (PRAGMA data_version)")
        async with conn.execute("PRAGMA data_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0])

    async def changed(self) -> bool:
        """Whether another connection committed since the last look."""
        if self._conn is None:
            return False
        version = await self._read(self._conn)
        moved = version != self._version
        self._version = version
        return moved

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


# --- the queue ------------------------------------------------------------------------------------------


class SqlQueueRepository:
    """:class:`bot.storage.queue.QueueRepository` on SQLite or PostgreSQL (see the module docstring)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read_engine = engine.execution_options(**{READ_ONLY: True})
        self._dialect = engine.dialect.name
        self._wake: asyncio.Event | None = None
        self._listener: _PostgresListener | None = None
        self._poller: _SqlitePoller | None = None
        self._listening = False  # the first wait_for_work has set up the wake-ups
        self._closed = False
        # position(): the job ids asked for while a ranking runs, and that ranking.
        self._positions_wanted: dict[int, list[asyncio.Future[int | None]]] = {}
        self._positions_task: asyncio.Task[None] | None = None
        if self._dialect == "sqlite":
            path = sqlite_path(engine.url)
            self._sqlite_key = str(path.resolve()) if path is not None else f"memory:{id(engine)}"
            _sqlite_waiters.setdefault(self._sqlite_key, weakref.WeakSet()).add(self)

    # --- processes ---

    async def register_worker(self, worker_id: str, role: str, host: str, pid: int, now: float) -> None:
        values = {
            "worker_id": worker_id,
            "role": role,
            "host": host,
            "pid": pid,
            "started_at": now,
            "heartbeat_at": now,
        }
        async with begin_write(self._engine) as conn:
            await conn.execute(_upsert(self._dialect, _workers, values, ("worker_id",)))

    async def heartbeat(self, worker_id: str, now: float) -> None:
        async with begin_write(self._engine) as conn:
            await conn.execute(
                update(_workers).where(_workers.c.worker_id == worker_id).values(heartbeat_at=now)
            )

    async def remove_worker(self, worker_id: str) -> None:
        async with begin_write(self._engine) as conn:
            await conn.execute(delete(_workers).where(_workers.c.worker_id == worker_id))

    async def workers(self) -> list[WorkerInfo]:
        async with self._read_engine.connect() as conn:
            rows = await conn.execute(select(_workers).order_by(_workers.c.started_at, _workers.c.worker_id))
            return [WorkerInfo(**row._mapping) for row in rows]

    # --- slots ---

    async def sync_slots(self, capacity: Mapping[str, int]) -> None:
        async def run() -> None:
            async with begin_write(self._engine) as conn:
                for provider, cap in capacity.items():
                    await self._sync_provider_slots(conn, provider, max(0, int(cap)))
                await self._notify_on_commit(conn)

        await _with_retries(run)
        self._wake_local()

    async def _sync_provider_slots(self, conn: AsyncConnection, provider: str, cap: int) -> None:
        if cap > 0:
            rows = [{"provider": provider, "slot": n} for n in range(cap)]
            await conn.execute(_insert_ignoring_conflicts(self._dialect, _slots), rows)
        mine = _slots.c.provider == provider
        await conn.execute(delete(_slots).where(mine, _slots.c.slot >= cap, _slots.c.job_id.is_(None)))
        # Busy slots above the capacity retire: renumbered below every slot number in use (negative),
        # never claimed again, deleted when their job lets go.
        busy = (
            await conn.execute(
                select(_slots.c.slot).where(mine, _slots.c.slot >= cap).order_by(_slots.c.slot)
            )
        ).scalars()
        lowest = (await conn.execute(select(func.min(_slots.c.slot)).where(mine))).scalar()
        number = min(-1, (lowest or 0) - 1)
        for slot in list(busy):
            await conn.execute(update(_slots).where(mine, _slots.c.slot == slot).values(slot=number))
            number -= 1

    # --- claims ---

    async def claim(self, worker_id: str, now: float, lease_seconds: float) -> Claim | None:
        claims = await self.claim_many(worker_id, now, lease_seconds, 1)
        return claims[0] if claims else None

    async def claim_many(self, worker_id: str, now: float, lease_seconds: float, limit: int) -> list[Claim]:
        """Up to ``limit`` claims in fair order (see the protocol). The fair order is read once, before
        any write lock (it is the expensive statement: it ranks every unfinished job); the write
        transactions then only lock, re-check and take each candidate, :data:`CLAIM_BATCH` at a time.
        A candidate taken meanwhile by another worker fails the re-check and is skipped."""
        claims: list[Claim] = []
        limit = max(1, int(limit))
        for _attempt in range(CLAIM_ATTEMPTS):
            looked = await self._candidates(worker_id, now, lease_seconds, limit - len(claims))
            if looked is None:
                return claims  # the common idle case: one read, no write lock
            params, candidates = looked
            contended = False
            while candidates and len(claims) < limit:
                batch = min(CLAIM_BATCH, limit - len(claims))
                async with begin_write(self._engine) as conn:
                    got, candidates, busy = await self._claim_in(conn, params, candidates, batch)
                claims += got
                contended = contended or busy
                if not got:
                    break
            if len(claims) >= limit or not contended:
                return claims
        return claims

    async def _candidates(
        self, worker_id: str, now: float, lease_seconds: float, limit: int, freeing: Sequence[str] = ()
    ) -> tuple[dict[str, Any], list[Any]] | None:
        """A claim's read-only look: the parameters of its write and the jobs to try in fair order, or
        None when nothing can start (no provider has both a free slot and a queued job, counting those
        in ``freeing`` as free: the caller is releasing them in the same write)."""
        async with self._read_engine.connect() as conn:
            rows = [
                row for row in await conn.execute(_CLAIMABLE_PROVIDERS, {"b_now": now}) if row[0] is not None
            ]
            if not rows and not freeing:
                return None
            params = {
                "b_now": now,
                "b_until": now + lease_seconds,
                "b_worker_id": worker_id,
                "b_free": sorted({provider for provider, has_free in rows if has_free} | set(freeing)),
                "b_limit": limit + CLAIM_CANDIDATES,
            }
            return params, list((await conn.execute(_CLAIM_CANDIDATES, params)).all())

    async def release_and_claim(
        self,
        job_ids: Sequence[int],
        worker_id: str,
        providers: Sequence[str],
        now: float,
        lease_seconds: float,
        limit: int,
    ) -> list[Claim]:
        """See the protocol. The candidates are read as :meth:`claim_many` reads them, counting the
        providers being released as free; the release and the first batch of claims share one write
        transaction (a worker finishing a call used to release in one, wake up, rank and claim in
        another: ~80 ms a slot stood empty between calls at 32 in flight on SQLite)."""
        limit = max(0, int(limit))
        looked = await self._candidates(worker_id, now, lease_seconds, limit, providers) if limit else None
        params, candidates = looked if looked is not None else ({}, [])
        async with begin_write(self._engine) as conn:
            freed = await self._release_slots_in(
                conn, and_(_slots.c.job_id.in_(list(job_ids)), _slots.c.worker_id == worker_id)
            )
            claims: list[Claim] = []
            if candidates:
                claims, _rest, _busy = await self._claim_in(conn, params, candidates, min(CLAIM_BATCH, limit))
            # Slots left free are the other workers' to take: wake them only then.
            left = freed > len(claims)
            if left:
                await self._notify_on_commit(conn)
        if left:
            self._wake_local()
        return claims

    async def _claim_in(
        self, conn: AsyncConnection, params: dict[str, Any], candidates: list[Any], limit: int
    ) -> tuple[list[Claim], list[Any], bool]:
        """Take up to ``limit`` of ``candidates`` (in order) in one transaction. Returns the claims, the
        candidates not looked at yet, and whether a candidate was held or taken by another transaction
        (then a fresh look may find more)."""
        contended = False
        full: set[str] = set()
        claims: list[Claim] = []
        looked = 0
        for job_id, status, provider in candidates:
            looked += 1
            taken_over = status == "running"
            if provider in full and not taken_over:
                continue
            job_params = {**params, "b_job_id": job_id, "b_provider": provider}
            if (await conn.execute(_LOCK_JOB, job_params)).first() is None:
                contended = True  # another worker has it (or it changed): next candidate
                continue
            slot = (await conn.execute(_LOCK_SLOT, job_params)).scalar()
            if slot is None:
                if not taken_over:  # every free slot is taken (or being taken right now)
                    contended = True
                    full.add(provider)
                continue
            row = (await conn.execute(_TAKE_JOB, job_params)).one()
            await conn.execute(_TAKE_SLOT, {**job_params, "b_slot": slot})
            if taken_over:
                await self._free_stale_slots(conn, job_id, keep=(provider, slot))
            claims.append(
                Claim(
                    job=_job_record(row),
                    provider=provider,
                    slot=int(slot),
                    lease_expires_at=params["b_until"],
                    taken_over=taken_over,
                    delivery=row.delivery,
                )
            )
            if len(claims) >= limit:
                break
        rest = candidates[looked:]
        # Providers found full: their remaining candidates wait for the next look.
        return claims, [c for c in rest if c[2] not in full or c[1] == "running"], contended

    async def _free_stale_slots(self, conn: AsyncConnection, job_id: int, keep: tuple[str, int]) -> None:
        """The other slots a taken-over job's dead worker held (failover providers): free them. Rows
        another claim is taking right now are skipped (it overwrites them anyway)."""
        stale = (
            await conn.execute(
                select(_slots.c.provider, _slots.c.slot)
                .where(
                    _slots.c.job_id == job_id,
                    not_(and_(_slots.c.provider == keep[0], _slots.c.slot == keep[1])),
                )
                .with_for_update(skip_locked=True, of=_slots)
            )
        ).all()
        for provider, slot in stale:
            await self._let_go_of_slot(conn, provider, slot)

    async def _let_go_of_slot(self, conn: AsyncConnection, provider: str, slot: int) -> None:
        where = and_(_slots.c.provider == provider, _slots.c.slot == slot)
        if slot < 0:  # retiring: capacity was lowered while it was busy
            await conn.execute(delete(_slots).where(where))
        else:
            await conn.execute(
                update(_slots).where(where).values(job_id=None, worker_id=None, lease_expires_at=None)
            )

    async def renew(self, job_id: int, worker_id: str, until: float) -> bool:
        params = {"b_job_id": job_id, "b_worker_id": worker_id, "b_until": until}
        async with begin_write(self._engine) as conn:
            if (await conn.execute(_RENEW_JOB, params)).rowcount == 0:
                return False
            await conn.execute(_RENEW_SLOTS, params)
        return True

    async def acquire_slot(self, job_id: int, worker_id: str, provider: str, until: float) -> int | None:
        params = {"b_job_id": job_id, "b_worker_id": worker_id, "b_provider": provider, "b_until": until}
        async with begin_write(self._engine) as conn:
            if (await conn.execute(_IS_OWNED, params)).first() is None:
                return None
            slot = (await conn.execute(_LOCK_FREE_SLOT, params)).scalar()
            if slot is None:
                return None
            await conn.execute(_TAKE_SLOT, {**params, "b_slot": slot})
            return int(slot)

    async def release_slots(
        self, job_id: int, provider: str | None = None, *, worker_id: str | None = None
    ) -> None:
        async with begin_write(self._engine) as conn:
            where = [_slots.c.job_id == job_id]
            if provider is not None:
                where.append(_slots.c.provider == provider)
            if worker_id is not None:
                where.append(_slots.c.worker_id == worker_id)
            freed = await self._release_slots_in(conn, and_(*where))
            if freed:
                await self._notify_on_commit(conn)
        if freed:
            self._wake_local()

    async def _release_slots_in(self, conn: AsyncConnection, where: ColumnElement[bool]) -> int:
        retired = await conn.execute(delete(_slots).where(where, _slots.c.slot < 0))
        freed = await conn.execute(
            update(_slots).where(where).values(job_id=None, worker_id=None, lease_expires_at=None)
        )
        return int(retired.rowcount or 0) + int(freed.rowcount or 0)

    async def release_job(self, job_id: int, worker_id: str) -> bool:
        async with begin_write(self._engine) as conn:
            result = await conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id, _jobs.c.worker_id == worker_id, _jobs.c.status == "running")
                .values(status="queued", worker_id=None, lease_expires_at=None)
            )
            if result.rowcount == 0:
                return False
            await self._release_slots_in(
                conn, and_(_slots.c.job_id == job_id, _slots.c.worker_id == worker_id)
            )
            await self._notify_on_commit(conn)
        self._wake_local()
        return True

    async def set_queue_provider(self, job_id: int, provider: str) -> bool:
        async with begin_write(self._engine) as conn:
            result = await conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id, _jobs.c.status.in_(("queued", "running")))
                .values(queue_provider=provider)
            )
            if result.rowcount == 0:
                return False
            await self._notify_on_commit(conn)
        self._wake_local()
        return True

    async def record_delivery(self, job_id: int, worker_id: str, delivery: str) -> bool:
        async with begin_write(self._engine) as conn:
            result = await conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id, _jobs.c.worker_id == worker_id, _jobs.c.status == "running")
                .values(delivery=delivery)
            )
            return result.rowcount > 0

    # --- what users and operators see ---

    async def position(self, job_id: int) -> int | None:
        """See the protocol. Ranking the queue costs the same for one job as for many, and a burst of
        commands asks for many at once: the places asked for while one ranking runs are answered
        together by the next one (each answer is still the place at a moment after it was asked)."""
        loop = asyncio.get_running_loop()
        task = self._positions_task
        if task is not None and task.get_loop() is not loop:  # left over from another event loop
            task, self._positions_wanted = None, {}
        answer: asyncio.Future[int | None] = loop.create_future()
        self._positions_wanted.setdefault(job_id, []).append(answer)
        if task is None or task.done():
            self._positions_task = loop.create_task(self._rank_positions(), name="palette-queue-positions")
        return await answer

    async def _rank_positions(self) -> None:
        while self._positions_wanted:
            wanted, self._positions_wanted = self._positions_wanted, {}
            try:
                async with self._read_engine.connect() as conn:
                    rows = await conn.execute(_POSITION, {"b_job_ids": sorted(wanted)})
                    places = {int(job_id): int(place) for job_id, place in rows}
            except Exception as exc:
                for answers in wanted.values():
                    for answer in answers:
                        if not answer.done():
                            answer.set_exception(exc)
                continue
            for job_id, answers in wanted.items():
                for answer in answers:
                    if not answer.done():
                        answer.set_result(places.get(job_id))

    async def depth(self) -> QueueDepth:
        async with self._read_engine.connect() as conn:
            counts = dict(
                (
                    await conn.execute(
                        select(_jobs.c.status, func.count())
                        .where(_jobs.c.status.in_(("queued", "running")))
                        .group_by(_jobs.c.status)
                    )
                ).all()
            )
            slot_rows = await conn.execute(
                select(
                    _slots.c.provider,
                    func.count(_slots.c.job_id),
                    func.sum(case((_slots.c.slot >= 0, 1), else_=0)),
                ).group_by(_slots.c.provider)
            )
            slots = {provider: (int(used), int(total or 0)) for provider, used, total in slot_rows}
        return QueueDepth(
            queued=int(counts.get("queued", 0)), running=int(counts.get("running", 0)), slots=slots
        )

    # --- wake-ups ---

    def _wake_event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def _set_wake(self) -> None:
        self._wake_event().set()

    async def _notify_on_commit(self, conn: AsyncConnection) -> None:
        """PostgreSQL: NOTIFY inside ``conn``'s transaction (delivered when it commits). SQLite: nothing
        here; the caller calls :meth:`_wake_local` after the commit."""
        statement = _notify_statement(self._dialect)
        if statement is not None:
            await conn.execute(statement)

    def _wake_local(self) -> None:
        """SQLite: wake the waiters of this process on the same database (no-op on PostgreSQL)."""
        if self._dialect != "sqlite":
            return
        for repository in list(_sqlite_waiters.get(self._sqlite_key, ())):
            repository._set_wake()

    async def notify(self) -> None:
        statement = _notify_statement(self._dialect)
        if statement is None:
            self._wake_local()
            return
        async with begin_write(self._engine) as conn:
            await conn.execute(statement)

    async def wait_for_work(self, timeout: float) -> bool:
        """See :meth:`bot.storage.queue.QueueRepository.wait_for_work`. The first call (and the first
        after the listening connection dropped) returns True at once: notifications sent before it
        listened cannot be known, so the caller should look at the queue."""
        if self._closed:
            raise RuntimeError("the queue repository is closed")
        wake = self._wake_event()
        try:
            if await self._ensure_wakeups():
                return True
        except Exception as exc:  # the database is unreachable: behave like a plain timeout
            log.warning(
                "queue wake-ups unavailable (%s: %s); polling", type(exc).__name__, safe_url(self._engine.url)
            )
            await asyncio.sleep(timeout)
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if wake.is_set():
                wake.clear()
                return True
            if self._poller is not None and await self._poller.changed():
                return True
            if self._listener is not None and not self._listener.connected:
                return True  # dropped while waiting; the next call reconnects
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            step = remaining if self._poller is None else min(SQLITE_POLL_INTERVAL, remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), step)

    async def _ensure_wakeups(self) -> bool:
        """Open the listening connection if needed; True if it was (re)opened just now."""
        if self._dialect == "postgresql":
            if self._listener is None:
                self._listener = _PostgresListener(self._engine, self._set_wake)
            if self._listener.connected:
                return False
            await self._listener.connect()
            return True
        path = sqlite_path(self._engine.url)
        if path is None:  # :memory: lives in this process only: the event is enough
            opened, self._listening = not self._listening, True
            return opened
        if self._poller is None:
            self._poller = _SqlitePoller(str(path))
        if self._poller.connected:
            return False
        await self._poller.connect()
        return True

    async def aclose(self) -> None:
        self._closed = True
        if self._listener is not None:
            await self._listener.close()
        if self._poller is not None:
            await self._poller.close()
        if self._dialect == "sqlite":
            waiters = _sqlite_waiters.get(self._sqlite_key)
            if waiters is not None:
                waiters.discard(self)
                if not waiters:
                    _sqlite_waiters.pop(self._sqlite_key, None)


# --- provider health ------------------------------------------------------------------------------------


_H_PROVIDER = bindparam("b_provider", type_=Text())
_H_NOW = bindparam("b_now", type_=schema.Seconds)
_OPENED_AT = select(_health.c.opened_at).where(_health.c.provider == _H_PROVIDER)
_BREAKER = select(_health.c.opened_at, _health.c.consecutive_failures, _health.c.probe_until).where(
    _health.c.provider == _H_PROVIDER
)
# Half-open and nobody holds the probe (or its holder's time ran out): take it. The row count says
# whether this caller won; the condition is checked under the row lock, so exactly one does.
_TAKE_PROBE = (
    update(_health)
    .where(
        _health.c.provider == _H_PROVIDER,
        _health.c.opened_at.is_not(None),
        _health.c.opened_at <= _H_NOW - bindparam("b_cooldown", type_=schema.Seconds),
        or_(_health.c.probe_until.is_(None), _health.c.probe_until < _H_NOW),
    )
    .values(probe_until=bindparam("b_probe_until", type_=schema.Seconds), updated_at=_H_NOW)
)
_RECORD_SUCCESS = (
    update(_health)
    .where(_health.c.provider == _H_PROVIDER)
    .values(consecutive_failures=0, opened_at=None, probe_until=None, updated_at=_H_NOW)
)
# Right-hand sides see the row as it was: a failed probe, or the threshold reached, opens (again).
_RECORD_FAILURE = (
    update(_health)
    .where(_health.c.provider == _H_PROVIDER)
    .values(
        consecutive_failures=_health.c.consecutive_failures + 1,
        opened_at=case(
            (
                or_(
                    _health.c.consecutive_failures + 1 >= bindparam("b_threshold", type_=Integer()),
                    _health.c.probe_until.is_not(None),
                ),
                _H_NOW,
            ),
            else_=_health.c.opened_at,
        ),
        probe_until=None,
        updated_at=_H_NOW,
    )
)
_RELEASE_PROBE = update(_health).where(_health.c.provider == _H_PROVIDER).values(probe_until=None)
_INSERT_CALL = _calls.insert().values(
    provider=_H_PROVIDER,
    ok=bindparam("b_ok", type_=Boolean()),
    latency_s=bindparam("b_latency", type_=schema.Seconds),
    created_at=_H_NOW,
)
_PRUNE_OLD_CALLS = delete(_calls).where(
    _calls.c.provider == _H_PROVIDER, _calls.c.created_at < _H_NOW - CALLS_MAX_AGE
)
# Beyond the newest ``b_keep`` (no row at that offset: NULL, nothing deleted).
_PRUNE_EXCESS_CALLS = delete(_calls).where(
    _calls.c.provider == _H_PROVIDER,
    _calls.c.id
    <= select(_calls.c.id)
    .where(_calls.c.provider == _H_PROVIDER)
    .order_by(_calls.c.id.desc())
    .offset(bindparam("b_keep", type_=Integer()))
    .limit(1)
    .scalar_subquery(),
)
# The row cap is checked on one record in this many (the age limit on every one).
CALLS_PRUNE_EVERY = 50
# Successes that change nothing but the figures are written together, at most this long after.
HEALTH_FLUSH_SECONDS = 1.0


class SqlHealthRepository:
    """:class:`bot.storage.queue.HealthRepository` on SQLite or PostgreSQL.

    The breaker of :class:`bot.health.CircuitBreaker`, as a row: ``opened_at`` NULL = closed; open for
    ``cooldown`` seconds after ``opened_at``; then half-open, where one caller across the deployment
    takes the probe by setting ``probe_until`` in a conditional UPDATE (the row count says who won).
    A closed breaker costs :meth:`allow` one read-only primary-key lookup.

    Most calls succeed at a healthy provider, and such a success changes nothing in the breaker (closed,
    no failures, no probe: as :meth:`allow` just read it): only the figures. Those are kept in memory
    and written together (one transaction per ``flush_after`` seconds instead of one per call), before
    any failure this process records and before a snapshot. Everything else (failures, a probe's
    outcome, a success after failures) is written at once, as before. A delayed success never touches
    the breaker, so it cannot close one another worker opened meanwhile.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        keep_calls: int = CALLS_MAX_ROWS,
        prune_every: int = CALLS_PRUNE_EVERY,
        flush_after: float = HEALTH_FLUSH_SECONDS,
    ) -> None:
        """``keep_calls``: outcomes kept per provider (besides the age limit), checked on one
        :meth:`record` in ``prune_every``; ``flush_after``: how long figures may wait (0: never)."""
        self._engine = engine
        self._flush_after = flush_after
        # Providers whose breaker allow() last saw closed, without failures or a probe.
        self._quiet: set[str] = set()
        self._pending: list[dict[str, Any]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._read_engine = engine.execution_options(**{READ_ONLY: True})
        self._dialect = engine.dialect.name
        self._keep_calls = max(1, keep_calls)
        self._prune_every = max(1, prune_every)
        self._records = 0
        self._ensure_row = _insert_ignoring_conflicts(self._dialect, _health).values(
            provider=_H_PROVIDER, consecutive_failures=0, updated_at=_H_NOW
        )

    async def allow(self, provider: str, now: float, *, cooldown: float, probe_timeout: float) -> bool:
        async with self._read_engine.connect() as conn:
            breaker = (await conn.execute(_BREAKER, {"b_provider": provider})).first()
        opened_at = None if breaker is None else breaker.opened_at
        if breaker is None or (breaker.consecutive_failures == 0 and breaker.probe_until is None):
            self._quiet.add(provider)
        else:
            self._quiet.discard(provider)
        if opened_at is None:
            return True  # closed (or never seen)
        self._quiet.discard(provider)
        if now - opened_at < cooldown:
            return False
        params = {
            "b_provider": provider,
            "b_now": now,
            "b_cooldown": cooldown,
            "b_probe_until": now + probe_timeout,
        }
        async with begin_write(self._engine) as conn:
            if (await conn.execute(_TAKE_PROBE, params)).rowcount == 1:
                return True
            # Lost the probe to another caller, or the breaker closed meanwhile.
            opened_now = (await conn.execute(_OPENED_AT, params)).scalar()
        return opened_now is None

    async def record(
        self, provider: str, ok: bool, latency_s: float, now: float, *, failure_threshold: int
    ) -> None:
        params = {
            "b_provider": provider,
            "b_now": now,
            "b_ok": ok,
            "b_latency": latency_s,
            "b_threshold": max(1, failure_threshold),
            "b_keep": self._keep_calls,
        }
        if ok and provider in self._quiet and self._flush_after > 0:
            self._pending.append(params)  # nothing but figures: written with the next flush
            if self._flush_timer is None:
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(self._flush_after, self._start_flush)
            return
        if not ok:
            self._quiet.discard(provider)
        pending = self._take_pending()
        async with begin_write(self._engine) as conn:
            await self._write_calls(conn, pending)
            await conn.execute(self._ensure_row, params)
            await conn.execute(_RECORD_SUCCESS if ok else _RECORD_FAILURE, params)
            await self._write_calls(conn, [params])

    def _take_pending(self) -> list[dict[str, Any]]:
        pending, self._pending = self._pending, []
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        return pending

    async def _write_calls(self, conn: AsyncConnection, calls: list[dict[str, Any]]) -> None:
        """The figures of ``calls`` (record()'s parameters), and the pruning they are due."""
        if not calls:
            return
        await conn.execute(_INSERT_CALL, calls)
        providers = {params["b_provider"]: params for params in calls}
        for params in providers.values():
            await conn.execute(_PRUNE_OLD_CALLS, params)
        before, self._records = self._records, self._records + len(calls)
        if before // self._prune_every != self._records // self._prune_every:
            for params in providers.values():
                await conn.execute(_PRUNE_EXCESS_CALLS, params)

    def _start_flush(self) -> None:
        self._flush_timer = None
        self._flush_task = asyncio.get_running_loop().create_task(self.flush(), name="palette-health-flush")

    async def flush(self) -> None:
        """Write the figures kept in memory now (the timer does it; so do failures and snapshots)."""
        pending = self._take_pending()
        if not pending:
            return
        try:
            async with begin_write(self._engine) as conn:
                await self._write_calls(conn, pending)
        except Exception as exc:  # figures only: the next ones will do
            log.warning("could not write %d provider call figure(s) (%s)", len(pending), type(exc).__name__)

    async def aclose(self) -> None:
        """Write what is kept in memory (shutdown)."""
        await self.flush()

    async def release_probe(self, provider: str) -> None:
        async with begin_write(self._engine) as conn:
            await conn.execute(_RELEASE_PROBE, {"b_provider": provider})

    async def snapshot(self, now: float, *, cooldown: float, window: int = 50) -> list[ProviderHealthRow]:
        await self.flush()
        recent = (
            select(
                _calls.c.provider,
                _calls.c.ok,
                _calls.c.latency_s,
                func.row_number()
                .over(
                    partition_by=_calls.c.provider, order_by=(_calls.c.created_at.desc(), _calls.c.id.desc())
                )
                .label("n"),
            )
            .where(_calls.c.created_at >= now - CALLS_MAX_AGE)
            .subquery("recent")
        )
        async with self._read_engine.connect() as conn:
            states = (await conn.execute(select(_health))).all()
            calls = (
                await conn.execute(
                    select(recent.c.provider, recent.c.ok, recent.c.latency_s).where(
                        recent.c.n <= max(1, window)
                    )
                )
            ).all()
        outcomes: dict[str, list[tuple[bool, float]]] = {}
        for provider, ok, latency in calls:
            outcomes.setdefault(provider, []).append((bool(ok), float(latency)))
        breakers = {row.provider: row for row in states}
        rows: list[ProviderHealthRow] = []
        for provider in sorted(set(breakers) | set(outcomes)):
            breaker = breakers.get(provider)
            recent_calls = outcomes.get(provider, [])
            errors = sum(1 for ok, _ in recent_calls if not ok)
            latencies = [latency for ok, latency in recent_calls if ok]
            rows.append(
                ProviderHealthRow(
                    provider=provider,
                    state=_breaker_state(breaker.opened_at if breaker else None, now, cooldown),
                    consecutive_failures=int(breaker.consecutive_failures) if breaker else 0,
                    calls=len(recent_calls),
                    error_rate=errors / len(recent_calls) if recent_calls else 0.0,
                    median_latency_s=median(latencies) if latencies else None,
                )
            )
        return rows


def _breaker_state(opened_at: float | None, now: float, cooldown: float) -> str:
    if opened_at is None:
        return "closed"
    return "half-open" if now - opened_at >= cooldown else "open"


__all__ = ["CHANNEL", "SqlHealthRepository", "SqlQueueRepository"]
