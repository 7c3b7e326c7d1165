"""Jobs, quota and ledger (:class:`bot.storage.repository.JobRepository`), one implementation for SQLite
and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Float, Integer, Text, bindparam, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause

from bot.storage import schema
from bot.storage.dialect import fetch, lock_quota
from bot.storage.errors import JobNotFound, QuotaExceeded, QuotaScope, ReferencesTooLarge
from bot.storage.records import (
    DAY,
    FINAL_STATUSES,
    HOUR,
    FinalStatus,
    JobRecord,
    LedgerDiscrepancy,
    LedgerReport,
    Limits,
    NewJob,
    NewReference,
    NewResult,
    ReferenceRecord,
    UsageSnapshot,
)

if TYPE_CHECKING:
    from bot.storage.db import Database

#: JobRecord's fields in order: rows selected with these columns map onto records positionally.
JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(JobRecord))
JOB_COLUMNS = ", ".join(JOB_FIELDS)
JOB_SELECT = [schema.jobs.c[name] for name in JOB_FIELDS]

#: Unreferenced reference bytes older than this are swept (a refused reservation, a process that died).
ORPHAN_BLOB_AGE = 3600.0


def job_from_row(row: Sequence[Any]) -> JobRecord:
    """A :class:`JobRecord` from a row selected with :data:`JOB_COLUMNS` (in that order)."""
    return JobRecord(*row)


def sql(statement: str, **types: Any) -> TextClause:
    """SQL text with typed parameters (PostgreSQL needs a type where the statement does not imply one)."""
    return text(statement).bindparams(*(bindparam(name, type_=type_) for name, type_ in types.items()))


# One statement gives everything a reservation needs. The outer query walks the (user_id, created_at) index
# over the last 24 h; in-flight jobs come from the (user_id, status) index, whatever their age; the guild
# pool from (guild_id, created_at).
_USAGE_SELECT = """
SELECT
    COALESCE(SUM(reserved - refunded), 0) AS daily_used,
    COALESCE(SUM(CASE WHEN created_at > :hour_start THEN reserved - refunded ELSE 0 END), 0) AS hourly_used,
    MIN(CASE WHEN reserved > refunded THEN created_at END) AS daily_oldest,
    MIN(CASE WHEN created_at > :hour_start AND reserved > refunded THEN created_at END) AS hourly_oldest,
    (SELECT COUNT(*) FROM jobs WHERE user_id = :user_id AND status IN ('queued', 'running')) AS in_flight,
    {pool}
FROM jobs
WHERE user_id = :user_id AND created_at > :day_start
"""
_USAGE_SQL = _USAGE_SELECT.format(
    pool="""(SELECT COALESCE(SUM(reserved - refunded), 0) FROM jobs
        WHERE guild_id = :guild_id AND created_at > :day_start) AS pool_used,
    (SELECT MIN(created_at) FROM jobs
        WHERE guild_id = :guild_id AND created_at > :day_start AND reserved > refunded) AS pool_oldest"""
)
_USAGE_NO_GUILD_SQL = _USAGE_SELECT.format(pool="0 AS pool_used, NULL AS pool_oldest")
_USAGE_TYPES = {"user_id": BigInteger(), "day_start": Float(), "hour_start": Float()}
_USAGE = sql(_USAGE_SQL, guild_id=BigInteger(), **_USAGE_TYPES)
_USAGE_NO_GUILD = sql(_USAGE_NO_GUILD_SQL, **_USAGE_TYPES)

# Oldest counted jobs of a window, to find when enough of them have expired for a request to fit.
_WINDOW_USER = sql(
    "SELECT created_at, reserved - refunded FROM jobs "
    "WHERE user_id = :owner AND created_at > :start AND reserved > refunded ORDER BY created_at LIMIT :n",
    owner=BigInteger(), start=Float(), n=Integer(),
)  # fmt: skip
_WINDOW_GUILD = sql(
    "SELECT created_at, reserved - refunded FROM jobs "
    "WHERE guild_id = :owner AND created_at > :start AND reserved > refunded ORDER BY created_at LIMIT :n",
    owner=BigInteger(), start=Float(), n=Integer(),
)  # fmt: skip

_INSERT_JOB_COLUMNS = (
    "user_id", "guild_id", "channel_id", "kind", "model", "prompt", "params", "count", "reserved",
    "interaction_token", "interaction_created_at", "status_message_id", "parent_job_id", "created_at",
    "queue_provider", "group_id",
)  # fmt: skip
_INSERT_JOB = text(
    f"INSERT INTO jobs ({', '.join(_INSERT_JOB_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _INSERT_JOB_COLUMNS)}) RETURNING {JOB_COLUMNS}"
)
_INSERT_REFERENCE = insert(schema.job_references)
_INSERT_BLOB = insert(schema.reference_blobs).returning(schema.reference_blobs.c.id)
_INSERT_RESULT = insert(schema.results)

_FINISH = sql(
    """
UPDATE jobs SET
    status = :status,
    committed = :delivered,
    refunded = reserved - :delivered,
    finished_at = :now,
    error = :error,
    error_kind = :error_kind,
    result_message_id = COALESCE(:result_message_id, result_message_id),
    provider = COALESCE(:provider, provider),
    provider_model = COALESCE(:provider_model, provider_model),
    worker_id = NULL,
    lease_expires_at = NULL
WHERE id = :id AND status IN ('queued', 'running') AND reserved >= :delivered
RETURNING user_id, guild_id, channel_id, provider, result_message_id
""",
    id=BigInteger(), status=Text(), delivered=Integer(), now=Float(), error=Text(), error_kind=Text(),
    result_message_id=BigInteger(), provider=Text(), provider_model=Text(),
)  # fmt: skip
# Cancelling: settled like a failure (everything refunded) in one statement, unless the result was already
# posted (a recorded delivery: then the job is the worker's to settle as delivered).
_CANCEL = sql(
    """
UPDATE jobs SET
    status = 'cancelled',
    committed = 0,
    refunded = reserved,
    finished_at = :now,
    error = :error,
    error_kind = 'Cancelled',
    cancelled_by = :by,
    worker_id = NULL,
    lease_expires_at = NULL
WHERE id = :id AND status IN ('queued', 'running') AND delivery IS NULL
RETURNING id
""",
    id=BigInteger(), now=Float(), error=Text(), by=BigInteger(),
)  # fmt: skip
_FREE_SLOTS = sql(
    "UPDATE provider_slots SET job_id = NULL, worker_id = NULL, lease_expires_at = NULL WHERE job_id = :id",
    id=BigInteger(),
)
_DELETE_JOB_BLOBS = sql(
    "DELETE FROM reference_blobs WHERE id IN "
    "(SELECT blob_id FROM job_references WHERE job_id = :id AND blob_id IS NOT NULL)",
    id=BigInteger(),
)
_DELETE_JOB_REFERENCES = sql("DELETE FROM job_references WHERE job_id = :id", id=BigInteger())
_JOB_STATE = sql("SELECT status, reserved FROM jobs WHERE id = :id", id=BigInteger())
_SWEEP_BLOBS = sql(
    "DELETE FROM reference_blobs WHERE created_at < :before AND NOT EXISTS "
    "(SELECT 1 FROM job_references r WHERE r.blob_id = reference_blobs.id)",
    before=Float(),
)

_SET_TASK = sql(
    "UPDATE jobs SET provider = :provider, provider_model = :provider_model, task_id = :task_id "
    "WHERE id = :id",
    provider=Text(), provider_model=Text(), task_id=Text(), id=BigInteger(),
)  # fmt: skip
_INCREMENT_ATTEMPTS = sql(
    "UPDATE jobs SET attempts = attempts + 1 WHERE id = :id RETURNING attempts", id=BigInteger()
)
_SET_STATUS_MESSAGE = sql(
    "UPDATE jobs SET status_message_id = :message_id WHERE id = :id", message_id=BigInteger(), id=BigInteger()
)
_SET_INTERACTION = sql(
    "UPDATE jobs SET interaction_token = :token, interaction_created_at = :created_at WHERE id = :id",
    token=Text(), created_at=Float(), id=BigInteger(),
)  # fmt: skip

_JOB_STATUS = sql("SELECT status FROM jobs WHERE id = :id", id=BigInteger())
_GET_JOB = sql(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id", id=BigInteger())
_GET_REFERENCES = sql(
    "SELECT r.job_id, r.position, r.mime_type, COALESCE(r.data, b.data), r.url, r.source_attachment_id "
    "FROM job_references r LEFT JOIN reference_blobs b ON b.id = r.blob_id "
    "WHERE r.job_id = :id ORDER BY r.position",
    id=BigInteger(),
)
_UNFINISHED = text(
    f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id"
)
_QUEUED = text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY created_at, id")

_LEDGER_PER_JOB_CTE = """
WITH l AS (
    SELECT job_id,
           SUM(CASE WHEN entry = 'reserve' THEN amount ELSE 0 END) AS r,
           SUM(CASE WHEN entry = 'commit' THEN amount ELSE 0 END) AS c,
           SUM(CASE WHEN entry = 'refund' THEN amount ELSE 0 END) AS f,
           SUM(CASE WHEN entry = 'reserve' THEN 1 ELSE 0 END) AS nr,
           SUM(CASE WHEN entry = 'commit' THEN 1 ELSE 0 END) AS nc,
           SUM(CASE WHEN entry = 'refund' THEN 1 ELSE 0 END) AS nf
    FROM ledger GROUP BY job_id
)
"""

_LEDGER_TOTALS = text(
    _LEDGER_PER_JOB_CTE
    + """
SELECT
    (SELECT COALESCE(SUM(r), 0) FROM l),
    (SELECT COALESCE(SUM(c), 0) FROM l),
    (SELECT COALESCE(SUM(f), 0) FROM l),
    (SELECT COALESCE(SUM(l.r - l.c - l.f), 0) FROM l JOIN jobs j ON j.id = l.job_id
        WHERE j.status IN ('queued', 'running'))
"""
)

_LEDGER_DISCREPANCIES = text(
    _LEDGER_PER_JOB_CTE
    + """
SELECT j.id, j.status, j.reserved, j.committed, j.refunded,
       COALESCE(l.r, 0), COALESCE(l.c, 0), COALESCE(l.f, 0),
       COALESCE(l.nr, 0), COALESCE(l.nc, 0), COALESCE(l.nf, 0)
FROM jobs j LEFT JOIN l ON l.job_id = j.id
WHERE l.job_id IS NULL
   OR l.r != j.reserved OR l.c != j.committed OR l.f != j.refunded
   OR l.nr != 1 OR l.nc > 1 OR l.nf > 1
   OR (j.status IN ('done', 'failed', 'cancelled') AND (j.committed + j.refunded != j.reserved OR l.nc != 1))
   OR (j.status IN ('queued', 'running') AND (j.committed != 0 OR j.refunded != 0 OR l.nc + l.nf != 0))
UNION ALL
SELECT l.job_id, NULL, 0, 0, 0, l.r, l.c, l.f, l.nr, l.nc, l.nf
FROM l LEFT JOIN jobs j ON j.id = l.job_id
WHERE j.id IS NULL
ORDER BY 1
"""
)


def _describe(row: Sequence[Any]) -> str:
    """Human wording of what is wrong with one job's ledger."""
    _job_id, status, reserved, committed, refunded, lr, lc, lf, nr, nc, nf = tuple(row)
    if status is None:
        return "ledger rows for a job that does not exist"
    if nr + nc + nf == 0:
        return "job has no ledger rows"
    problems: list[str] = []
    if nr != 1:
        problems.append(f"{nr} reserve entries")
    if nc > 1 or nf > 1:
        problems.append(f"{nc} commit and {nf} refund entries")
    if lr != reserved:
        problems.append(f"ledger reserved {lr}, job reserved {reserved}")
    if lc != committed:
        problems.append(f"ledger committed {lc}, job committed {committed}")
    if lf != refunded:
        problems.append(f"ledger refunded {lf}, job refunded {refunded}")
    if status in FINAL_STATUSES:
        if committed + refunded != reserved:
            problems.append(f"finished job settles {committed + refunded} of {reserved} reserved")
        if nc != 1:
            problems.append("finished job has no commit entry")
    elif committed or refunded or nc or nf:
        problems.append("unfinished job already committed or refunded")
    return "; ".join(problems) or "inconsistent"


class SqlJobRepository:
    """Jobs, references, quota reservations and the ledger, on a :class:`~bot.storage.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- quota ---------------------------------------------------------------------------------------------

    async def _usage_row(self, conn: AsyncConnection, user_id: int, now: float, guild_id: int | None) -> Any:
        """(daily_used, hourly_used, daily_oldest, hourly_oldest, in_flight, pool_used, pool_oldest)."""
        params: dict[str, Any] = {"user_id": user_id, "day_start": now - DAY, "hour_start": now - HOUR}
        if guild_id is None:
            return (await fetch(conn, _USAGE_NO_GUILD, params))[0]
        return (await fetch(conn, _USAGE, {**params, "guild_id": guild_id}))[0]

    async def usage(self, user_id: int, now: float, guild_id: int | None = None) -> UsageSnapshot:
        async with self._db.reading() as conn:
            row = await self._usage_row(conn, user_id, now, guild_id)
        daily_used, hourly_used, daily_oldest, hourly_oldest, in_flight, pool_used, pool_oldest = row
        return UsageSnapshot(
            daily_used=int(daily_used),
            hourly_used=int(hourly_used),
            in_flight=int(in_flight),
            daily_resets_at=None if daily_oldest is None else daily_oldest + DAY,
            hourly_resets_at=None if hourly_oldest is None else hourly_oldest + HOUR,
            guild_pool_used=int(pool_used) if guild_id is not None else None,
            guild_pool_resets_at=None if pool_oldest is None else pool_oldest + DAY,
        )

    async def _resets_at(
        self,
        conn: AsyncConnection,
        scope: QuotaScope,
        owner_id: int,
        oldest: float | None,
        excess: int,
        now: float,
    ) -> float | None:
        """When enough counted images have left the window for ``excess`` more to fit.

        Every counted job holds at least one image, so for ``excess == 1`` the oldest one is enough;
        otherwise walk the oldest jobs (at most ``excess`` rows) until they add up."""
        window = HOUR if scope == "hourly" else DAY
        if oldest is None:
            return None
        if excess <= 1:
            return oldest + window
        statement = _WINDOW_GUILD if scope == "pool" else _WINDOW_USER
        rows = (await conn.execute(statement, {"owner": owner_id, "start": now - window, "n": excess})).all()
        freed = 0
        for created_at, amount in rows:
            freed += amount
            if freed >= excess:
                return created_at + window
        return None

    async def _check_limits(self, conn: AsyncConnection, new_job: NewJob, limits: Limits, now: float) -> None:
        """Raise :class:`QuotaExceeded` for the first limit (daily, pool, hourly, concurrent) the new job
        would break. Atomic with the insert only inside the reservation's transaction, after
        :func:`~bot.storage.dialect.lock_quota`."""
        guild_id = new_job.guild_id if limits.guild_daily_pool is not None else None
        row = await self._usage_row(conn, new_job.user_id, now, guild_id)
        daily_used, hourly_used, daily_oldest, hourly_oldest, in_flight, pool_used, pool_oldest = row
        want = new_job.count
        checks: list[tuple[QuotaScope, int | None, int, float | None, int]] = [
            ("daily", limits.daily, int(daily_used), daily_oldest, new_job.user_id),
            ("pool", limits.guild_daily_pool if guild_id is not None else None, int(pool_used), pool_oldest,
             guild_id or 0),
            ("hourly", limits.hourly, int(hourly_used), hourly_oldest, new_job.user_id),
        ]  # fmt: skip
        for scope, limit, used, oldest, owner_id in checks:
            if limit is None or used + want <= limit:
                continue
            resets_at = None
            if want <= limit:
                resets_at = await self._resets_at(conn, scope, owner_id, oldest, used + want - limit, now)
            raise QuotaExceeded(scope, limit=limit, used=used, requested=want, resets_at=resets_at, now=now)
        in_flight = int(in_flight)
        if limits.max_concurrent is not None and in_flight >= limits.max_concurrent:
            raise QuotaExceeded(
                "concurrent", limit=limits.max_concurrent, used=in_flight, requested=want, now=now
            )

    async def reserve_job(self, new_job: NewJob, limits: Limits, now: float) -> JobRecord:
        """Check the quota and create the job, atomically; its references with it.

        The check and the insert run in one write transaction: SQLite's ``BEGIN IMMEDIATE`` keeps every
        other writer (of any process) out; on PostgreSQL :func:`~bot.storage.dialect.lock_quota` takes
        the user's (and the guild pool's) advisory lock first. A grant is BEGIN, the usage query, the
        INSERT ... RETURNING and COMMIT (plus one INSERT of the reference rows); the ``reserve`` ledger
        entry is written by the ``jobs_ledger_reserve`` trigger in the same statement.

        Reference bytes are written before that transaction, each image in a short transaction of its own
        (``reference_blobs``), so storing a few hundred MiB never holds the write lock for long: the
        reservation itself only links them. The job becomes visible (and claimable) with every reference
        in place. Refused (or failed) reservations delete the bytes they staged; what a dead process
        staged is swept later. Over-large references are refused before anything is written
        (:class:`~bot.storage.errors.ReferencesTooLarge`); with references a quota refusal is also
        checked before their bytes are written."""
        db = self._db
        total = new_job.reference_bytes
        if total > db.max_job_reference_bytes:
            raise ReferencesTooLarge(total, db.max_job_reference_bytes)
        limited = limits != _UNLIMITED
        values = {
            "user_id": new_job.user_id, "guild_id": new_job.guild_id, "channel_id": new_job.channel_id,
            "kind": new_job.kind, "model": new_job.model, "prompt": new_job.prompt,
            "params": new_job.params_json, "count": new_job.count, "reserved": new_job.count,
            "interaction_token": new_job.interaction_token,
            "interaction_created_at": new_job.interaction_created_at,
            "status_message_id": new_job.status_message_id,
            "parent_job_id": new_job.parent_job_id, "created_at": now,
            "queue_provider": new_job.queue_provider, "group_id": new_job.group_id,
        }  # fmt: skip
        blob_ids: list[int | None] = []
        if total:
            if limited:  # a refusal should not cost writing the bytes first
                async with db.reading() as conn:
                    await self._check_limits(conn, new_job, limits, now)
            blob_ids = await self._stage_references(new_job.references, now)
        try:
            async with db.transaction() as conn:
                if limited:
                    pool_guild = new_job.guild_id if limits.guild_daily_pool is not None else None
                    await lock_quota(conn, new_job.user_id, pool_guild)
                    await self._check_limits(conn, new_job, limits, now)
                job = job_from_row((await fetch(conn, _INSERT_JOB, values))[0])
                if new_job.references:
                    await conn.execute(
                        _INSERT_REFERENCE,
                        [
                            {
                                "job_id": job.id,
                                "position": index if ref.position is None else ref.position,
                                "mime_type": ref.mime_type,
                                "data": None,
                                "url": ref.url,
                                "source_attachment_id": ref.source_attachment_id,
                                "blob_id": blob_ids[index] if blob_ids else None,
                            }
                            for index, ref in enumerate(new_job.references)
                        ],
                    )
        except BaseException:
            staged = [b for b in blob_ids if b is not None]
            if staged:
                with contextlib.suppress(Exception):
                    await self._drop_blobs(staged)
            raise
        return job

    async def _stage_references(self, references: Sequence[NewReference], now: float) -> list[int | None]:
        """The blob id of each reference with bytes (None for URL-only ones), each written on its own."""
        ids: list[int | None] = []
        try:
            for ref in references:
                ids.append(None if ref.data is None else await self._stage_blob(ref.data, now))
        except BaseException:
            staged = [b for b in ids if b is not None]
            if staged:
                with contextlib.suppress(Exception):
                    await self._drop_blobs(staged)
            raise
        return ids

    async def _stage_blob(self, data: bytes, now: float) -> int:
        """One reference image's bytes in a short transaction of its own; its id."""
        async with self._db.transaction() as conn:
            return int((await conn.execute(_INSERT_BLOB, {"data": data, "created_at": now})).scalar_one())

    async def _drop_blobs(self, blob_ids: Sequence[int]) -> None:
        blobs = schema.reference_blobs
        async with self._db.transaction() as conn:
            await conn.execute(blobs.delete().where(blobs.c.id.in_(list(blob_ids))))

    async def sweep_reference_blobs(self, now: float, max_age: float = ORPHAN_BLOB_AGE) -> int:
        """Delete reference bytes no job points to, staged more than ``max_age`` seconds ago."""
        async with self._db.transaction() as conn:
            return (await conn.execute(_SWEEP_BLOBS, {"before": now - max_age})).rowcount

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def set_task(self, job_id: int, provider: str, provider_model: str | None, task_id: str) -> bool:
        changed = await self._db.execute(
            _SET_TASK,
            {"provider": provider, "provider_model": provider_model, "task_id": task_id, "id": job_id},
        )
        return changed > 0

    async def increment_attempts(self, job_id: int) -> int:
        rows = await self._db.write_returning(_INCREMENT_ATTEMPTS, {"id": job_id})
        if not rows:
            raise JobNotFound(job_id)
        return int(rows[0][0])

    async def set_status_message(self, job_id: int, message_id: int | None) -> bool:
        return await self._db.execute(_SET_STATUS_MESSAGE, {"message_id": message_id, "id": job_id}) > 0

    async def set_interaction(self, job_id: int, token: str | None, created_at: float | None) -> bool:
        changed = await self._db.execute(
            _SET_INTERACTION, {"token": token, "created_at": created_at, "id": job_id}
        )
        return changed > 0

    async def finish_job(
        self,
        job_id: int,
        delivered: int,
        *,
        status: FinalStatus = "done",
        error: str | None = None,
        error_kind: str | None = None,
        result_message_id: int | None = None,
        results: Sequence[NewResult] = (),
        provider: str | None = None,
        provider_model: str | None = None,
        now: float,
    ) -> bool:
        """Settle the job (see the protocol). In the same transaction: its lease and provider slots are
        freed, and its reference images are deleted (nothing reads them once a job is settled: Re-roll,
        Edit and Upscale take the images of the result message)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"not a final status: {status!r}")
        if delivered < 0:
            raise ValueError(f"delivered cannot be negative: {delivered}")
        async with self._db.transaction() as conn:
            row = (
                await conn.execute(
                    _FINISH,
                    {
                        "id": job_id,
                        "status": status,
                        "delivered": delivered,
                        "now": now,
                        "error": error,
                        "error_kind": error_kind,
                        "result_message_id": result_message_id,
                        "provider": provider,
                        "provider_model": provider_model,
                    },
                )
            ).first()
            if row is None:
                current = (await conn.execute(_JOB_STATE, {"id": job_id})).first()
                if current is None:
                    raise JobNotFound(job_id)
                if current.status in FINAL_STATUSES:
                    return False  # already settled: never charge or refund twice
                raise ValueError(f"job {job_id} reserved {current.reserved} images, not {delivered}")
            # The jobs_ledger_settle trigger has written the 'commit' and 'refund' entries.
            user_id, guild_id, channel_id, job_provider, message_id = tuple(row)
            if results:
                await conn.execute(
                    _INSERT_RESULT,
                    [
                        {
                            "job_id": job_id, "user_id": user_id, "guild_id": guild_id,
                            "channel_id": r.channel_id if r.channel_id is not None else channel_id,
                            "message_id": r.message_id if r.message_id is not None else message_id,
                            "attachment_id": r.attachment_id, "filename": r.filename, "sha256": r.sha256,
                            "width": r.width, "height": r.height, "mime_type": r.mime_type,
                            "size_bytes": r.size_bytes, "provider": r.provider or job_provider,
                            "created_at": now,
                        }
                        for r in results
                    ],
                )  # fmt: skip
            await conn.execute(_FREE_SLOTS, {"id": job_id})
            await conn.execute(_DELETE_JOB_BLOBS, {"id": job_id})
            await conn.execute(_DELETE_JOB_REFERENCES, {"id": job_id})
        return True

    async def cancel_job(self, job_id: int, by: int, now: float, *, error: str = "cancelled") -> bool:
        """Settle an unfinished, not yet posted job as ``cancelled``: every reserved image refunded (the
        ledger trigger writes it), its lease, slots and references freed, ``cancelled_by`` recorded.

        False (nothing changed) when the job is finished or its result was already posted. Idempotent with
        :meth:`finish_job`: whichever settles first wins, the other changes nothing."""
        async with self._db.transaction() as conn:
            row = (await conn.execute(_CANCEL, {"id": job_id, "now": now, "error": error, "by": by})).first()
            if row is None:
                if (await conn.execute(_JOB_STATE, {"id": job_id})).first() is None:
                    raise JobNotFound(job_id)
                return False
            await conn.execute(_FREE_SLOTS, {"id": job_id})
            await conn.execute(_DELETE_JOB_BLOBS, {"id": job_id})
            await conn.execute(_DELETE_JOB_REFERENCES, {"id": job_id})
        return True

    async def job_status(self, job_id: int) -> str | None:
        """The job's status alone (a cheap look: has it been cancelled meanwhile?); None if unknown."""
        async with self._db.reading() as conn:
            rows = await fetch(conn, _JOB_STATUS, {"id": job_id})
        return str(rows[0][0]) if rows else None

    # --- reads ---------------------------------------------------------------------------------------------

    async def get_job(self, job_id: int) -> JobRecord | None:
        async with self._db.reading() as conn:
            rows = await fetch(conn, _GET_JOB, {"id": job_id})
        return job_from_row(rows[0]) if rows else None

    async def get_references(self, job_id: int) -> list[ReferenceRecord]:
        rows = await self._db.fetchall(_GET_REFERENCES, {"id": job_id})
        return [ReferenceRecord(*row) for row in rows]

    async def unfinished_jobs(self) -> list[JobRecord]:
        return [job_from_row(row) for row in await self._db.fetchall(_UNFINISHED)]

    async def queued_jobs(self) -> list[JobRecord]:
        return [job_from_row(row) for row in await self._db.fetchall(_QUEUED)]

    # --- audit ---------------------------------------------------------------------------------------------

    async def ledger_balance(self) -> LedgerReport:
        # One snapshot: the totals and the per-job check see the same state.
        async with self._db.snapshot() as conn:
            totals = (await conn.execute(_LEDGER_TOTALS)).one()
            bad = (await conn.execute(_LEDGER_DISCREPANCIES)).all()
        reserved, committed, refunded, open_ = (int(v) for v in totals)
        discrepancies = tuple(
            LedgerDiscrepancy(
                job_id=int(row[0]), status=row[1], problem=_describe([_int(v) for v in row]),
                job_reserved=int(row[2]), job_committed=int(row[3]), job_refunded=int(row[4]),
                ledger_reserved=int(row[5]), ledger_committed=int(row[6]), ledger_refunded=int(row[7]),
            )
            for row in bad
        )  # fmt: skip
        return LedgerReport(reserved, committed, refunded, open_, discrepancies)


def _int(value: Any) -> Any:
    """Sums come back as Decimal from PostgreSQL; everything numeric here is a whole number."""
    return value if value is None or isinstance(value, str | int) else int(value)


_UNLIMITED = Limits()
