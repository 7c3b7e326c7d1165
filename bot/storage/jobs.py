"""SQLite implementation of :class:`bot.storage.repository.JobRepository`: jobs, quota and ledger."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from bot.storage.errors import JobNotFound, QuotaExceeded, QuotaScope
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
    NewResult,
    ReferenceRecord,
    UsageSnapshot,
)

if TYPE_CHECKING:
    from bot.storage.db import Database

# The column list follows JobRecord's fields, so rows map onto records positionally.
JOB_COLUMNS = ", ".join(f.name for f in fields(JobRecord))


def job_from_row(row: Sequence[Any]) -> JobRecord:
    """A :class:`JobRecord` from a row selected with :data:`JOB_COLUMNS` (in that order)."""
    return JobRecord(*row)


# One statement gives everything a reservation needs. The outer query walks the (user_id, created_at) index
# over the last 24 h; in-flight jobs come from the (user_id, status) index, whatever their age; the guild
# pool from (guild_id, created_at); data_version is explained in reserve_job.
_USAGE_SQL = """
SELECT
    COALESCE(SUM(reserved - refunded), 0) AS daily_used,
    COALESCE(SUM(CASE WHEN created_at > :hour_start THEN reserved - refunded ELSE 0 END), 0) AS hourly_used,
    MIN(CASE WHEN reserved > refunded THEN created_at END) AS daily_oldest,
    MIN(CASE WHEN created_at > :hour_start AND reserved > refunded THEN created_at END) AS hourly_oldest,
    (SELECT COUNT(*) FROM jobs WHERE user_id = :user_id AND status IN ('queued', 'running')) AS in_flight,
    (SELECT COALESCE(SUM(reserved - refunded), 0) FROM jobs
        WHERE :guild_id IS NOT NULL AND guild_id = :guild_id AND created_at > :day_start) AS pool_used,
    (SELECT MIN(created_at) FROM jobs
        WHERE :guild_id IS NOT NULL AND guild_id = :guild_id AND created_at > :day_start
          AND reserved > refunded) AS pool_oldest,
    (SELECT data_version FROM pragma_data_version()) AS data_version
FROM jobs
WHERE user_id = :user_id AND created_at > :day_start
"""

# Oldest counted jobs of a window, to find when enough of them have expired for a request to fit.
_WINDOW_USER_SQL = """
SELECT created_at, reserved - refunded FROM jobs
WHERE user_id = ? AND created_at > ? AND reserved > refunded
ORDER BY created_at LIMIT ?
"""
_WINDOW_GUILD_SQL = """
SELECT created_at, reserved - refunded FROM jobs
WHERE guild_id = ? AND created_at > ? AND reserved > refunded
ORDER BY created_at LIMIT ?
"""

# Inserts nothing if another connection committed since the quota check read ``:data_version``.
_INSERT_JOB_SQL = f"""
INSERT INTO jobs (
    user_id, guild_id, channel_id, kind, model, prompt, params, count, status, reserved,
    interaction_token, interaction_created_at, status_message_id, parent_job_id, created_at
)
SELECT :user_id, :guild_id, :channel_id, :kind, :model, :prompt, :params, :count, 'queued', :count,
       :interaction_token, :interaction_created_at, :status_message_id, :parent_job_id, :now
WHERE :data_version IS NULL OR (SELECT data_version FROM pragma_data_version()) = :data_version
RETURNING {JOB_COLUMNS}
"""

_INSERT_REFERENCE_SQL = """
INSERT INTO job_references (job_id, position, mime_type, data, url, source_attachment_id)
VALUES (?, ?, ?, ?, ?, ?)
"""

_FINISH_SQL = """
UPDATE jobs SET
    status = :status,
    committed = :delivered,
    refunded = reserved - :delivered,
    finished_at = :now,
    error = :error,
    error_kind = :error_kind,
    result_message_id = COALESCE(:result_message_id, result_message_id),
    provider = COALESCE(:provider, provider),
    provider_model = COALESCE(:provider_model, provider_model)
WHERE id = :id AND status IN ('queued', 'running') AND reserved >= :delivered
RETURNING user_id, guild_id, channel_id, provider, result_message_id
"""

_INSERT_RESULT_SQL = """
INSERT INTO results (
    job_id, user_id, guild_id, channel_id, message_id, attachment_id, filename, sha256, width, height,
    mime_type, size_bytes, provider, created_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_LEDGER_PER_JOB_CTE = """
WITH l AS (
    SELECT job_id,
           SUM(CASE WHEN entry = 'reserve' THEN amount ELSE 0 END) AS r,
           SUM(CASE WHEN entry = 'commit' THEN amount ELSE 0 END) AS c,
           SUM(CASE WHEN entry = 'refund' THEN amount ELSE 0 END) AS f,
           SUM(entry = 'reserve') AS nr,
           SUM(entry = 'commit') AS nc,
           SUM(entry = 'refund') AS nf
    FROM ledger GROUP BY job_id
)
"""

_LEDGER_TOTALS_SQL = (
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

_LEDGER_DISCREPANCIES_SQL = (
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


def _describe(row: sqlite3.Row) -> str:
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


class SqliteJobRepository:
    """Jobs, references, quota reservations and the ledger, on a :class:`~bot.storage.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- quota ---------------------------------------------------------------------------------------------

    async def _usage_row(self, user_id: int, now: float, guild_id: int | None) -> sqlite3.Row:
        row = await self._db.fetchone(
            _USAGE_SQL,
            {"user_id": user_id, "guild_id": guild_id, "day_start": now - DAY, "hour_start": now - HOUR},
        )
        assert row is not None  # an aggregate query always returns one row
        return row

    async def usage(self, user_id: int, now: float, guild_id: int | None = None) -> UsageSnapshot:
        row = await self._usage_row(user_id, now, guild_id)
        return UsageSnapshot(
            daily_used=row["daily_used"],
            hourly_used=row["hourly_used"],
            in_flight=row["in_flight"],
            daily_resets_at=None if row["daily_oldest"] is None else row["daily_oldest"] + DAY,
            hourly_resets_at=None if row["hourly_oldest"] is None else row["hourly_oldest"] + HOUR,
            guild_pool_used=row["pool_used"] if guild_id is not None else None,
            guild_pool_resets_at=None if row["pool_oldest"] is None else row["pool_oldest"] + DAY,
        )

    async def _resets_at(
        self, scope: QuotaScope, owner_id: int, oldest: float | None, excess: int, now: float
    ) -> float | None:
        """When enough counted images have left the window for ``excess`` more to fit.

        Every counted job holds at least one image, so for ``excess == 1`` the oldest one is enough;
        otherwise walk the oldest jobs (at most ``excess`` rows) until they add up."""
        window = HOUR if scope == "hourly" else DAY
        if oldest is None:
            return None
        if excess <= 1:
            return oldest + window
        sql = _WINDOW_GUILD_SQL if scope == "pool" else _WINDOW_USER_SQL
        rows = await self._db.fetchall(sql, (owner_id, now - window, excess))
        freed = 0
        for created_at, amount in rows:
            freed += amount
            if freed >= excess:
                return created_at + window
        return None

    async def _check_limits(self, new_job: NewJob, limits: Limits, now: float) -> int | None:
        """Raise :class:`QuotaExceeded` for the first limit (daily, pool, hourly, concurrent) the new job
        would break; otherwise return the ``data_version`` the check saw. The caller holds the connection
        (:meth:`Database.exclusive`), so no other coroutine of this process writes meanwhile."""
        guild_id = new_job.guild_id if limits.guild_daily_pool is not None else None
        row = await self._usage_row(new_job.user_id, now, guild_id)
        want = new_job.count
        checks: list[tuple[QuotaScope, int | None, int, float | None, int]] = [
            ("daily", limits.daily, row["daily_used"], row["daily_oldest"], new_job.user_id),
            ("pool", limits.guild_daily_pool if guild_id is not None else None, row["pool_used"],
             row["pool_oldest"], guild_id or 0),
            ("hourly", limits.hourly, row["hourly_used"], row["hourly_oldest"], new_job.user_id),
        ]  # fmt: skip
        for scope, limit, used, oldest, owner_id in checks:
            if limit is None or used + want <= limit:
                continue
            resets_at = None
            if want <= limit:
                resets_at = await self._resets_at(scope, owner_id, oldest, used + want - limit, now)
            raise QuotaExceeded(scope, limit=limit, used=used, requested=want, resets_at=resets_at, now=now)
        if limits.max_concurrent is not None and row["in_flight"] >= limits.max_concurrent:
            raise QuotaExceeded(
                "concurrent", limit=limits.max_concurrent, used=row["in_flight"], requested=want, now=now
            )
        return row["data_version"]

    async def reserve_job(self, new_job: NewJob, limits: Limits, now: float) -> JobRecord:
        """Check the quota and create the job, atomically.

        The check runs before ``BEGIN IMMEDIATE`` while this task holds the connection, so a refusal costs
        one statement and never takes SQLite's write lock. Another *process* could still commit between
        the check and the transaction: the insert is conditional on ``PRAGMA data_version`` (which changes
        only when another connection commits) being what the check saw; if it changed, the check runs
        again inside the transaction, where nobody else can write.

        The ``reserve`` ledger entry is written by the ``jobs_ledger_reserve`` trigger, in the same
        transaction. Cost: 4 round trips to the connection's thread for a grant (5 with references), 1
        for a refusal."""
        values = {
            "user_id": new_job.user_id, "guild_id": new_job.guild_id, "channel_id": new_job.channel_id,
            "kind": new_job.kind, "model": new_job.model, "prompt": new_job.prompt,
            "params": new_job.params_json, "count": new_job.count,
            "interaction_token": new_job.interaction_token,
            "interaction_created_at": new_job.interaction_created_at,
            "status_message_id": new_job.status_message_id,
            "parent_job_id": new_job.parent_job_id, "now": now,
        }  # fmt: skip
        limited = limits != _UNLIMITED
        db = self._db
        async with db.exclusive():
            data_version = await self._check_limits(new_job, limits, now) if limited else None
            async with db.transaction():
                rows = await db.fetchall(_INSERT_JOB_SQL, {**values, "data_version": data_version})
                if not rows:  # another connection committed since the check: check again, in here
                    await self._check_limits(new_job, limits, now)
                    rows = await db.fetchall(_INSERT_JOB_SQL, {**values, "data_version": None})
                job = job_from_row(rows[0])
                if new_job.references:
                    await db.executemany(
                        _INSERT_REFERENCE_SQL,
                        [
                            (
                                job.id,
                                index if ref.position is None else ref.position,
                                ref.mime_type,
                                ref.data,
                                ref.url,
                                ref.source_attachment_id,
                            )
                            for index, ref in enumerate(new_job.references)
                        ],
                    )
        return job

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def mark_running(self, job_id: int, now: float, *, provider: str | None = None) -> bool:
        changed = await self._db.execute(
            "UPDATE jobs SET status = 'running', provider = COALESCE(?, provider), "
            "started_at = COALESCE(started_at, ?) WHERE id = ? AND status IN ('queued', 'running')",
            (provider, now, job_id),
        )
        return changed > 0

    async def set_task(self, job_id: int, provider: str, provider_model: str | None, task_id: str) -> bool:
        changed = await self._db.execute(
            "UPDATE jobs SET provider = ?, provider_model = ?, task_id = ? WHERE id = ?",
            (provider, provider_model, task_id, job_id),
        )
        return changed > 0

    async def increment_attempts(self, job_id: int) -> int:
        value = await self._db.fetchval(
            "UPDATE jobs SET attempts = attempts + 1 WHERE id = ? RETURNING attempts", (job_id,)
        )
        if value is None:
            raise JobNotFound(job_id)
        return int(value)

    async def set_status_message(self, job_id: int, message_id: int | None) -> bool:
        changed = await self._db.execute(
            "UPDATE jobs SET status_message_id = ? WHERE id = ?", (message_id, job_id)
        )
        return changed > 0

    async def set_interaction(self, job_id: int, token: str | None, created_at: float | None) -> bool:
        changed = await self._db.execute(
            "UPDATE jobs SET interaction_token = ?, interaction_created_at = ? WHERE id = ?",
            (token, created_at, job_id),
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
        if status not in FINAL_STATUSES:
            raise ValueError(f"not a final status: {status!r}")
        if delivered < 0:
            raise ValueError(f"delivered cannot be negative: {delivered}")
        db = self._db
        async with db.transaction():
            rows = await db.fetchall(
                _FINISH_SQL,
                {
                    "id": job_id, "status": status, "delivered": delivered, "now": now, "error": error,
                    "error_kind": error_kind, "result_message_id": result_message_id, "provider": provider,
                    "provider_model": provider_model,
                },
            )  # fmt: skip
            if not rows:
                current = await db.fetchone("SELECT status, reserved FROM jobs WHERE id = ?", (job_id,))
                if current is None:
                    raise JobNotFound(job_id)
                if current["status"] in FINAL_STATUSES:
                    return False  # already settled: never charge or refund twice
                raise ValueError(f"job {job_id} reserved {current['reserved']} images, not {delivered}")
            # The jobs_ledger_settle trigger has written the 'commit' and 'refund' entries.
            user_id, guild_id, channel_id, job_provider, message_id = tuple(rows[0])
            if results:
                await db.executemany(
                    _INSERT_RESULT_SQL,
                    [
                        (
                            job_id, user_id, guild_id,
                            r.channel_id if r.channel_id is not None else channel_id,
                            r.message_id if r.message_id is not None else message_id,
                            r.attachment_id, r.filename, r.sha256, r.width, r.height, r.mime_type,
                            r.size_bytes, r.provider or job_provider, now,
                        )
                        for r in results
                    ],
                )  # fmt: skip
        return True

    # --- reads ---------------------------------------------------------------------------------------------

    async def get_job(self, job_id: int) -> JobRecord | None:
        row = await self._db.fetchone(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else job_from_row(row)

    async def get_references(self, job_id: int) -> list[ReferenceRecord]:
        rows = await self._db.fetchall(
            "SELECT job_id, position, mime_type, data, url, source_attachment_id FROM job_references "
            "WHERE job_id = ? ORDER BY position",
            (job_id,),
        )
        return [ReferenceRecord(*row) for row in rows]

    async def unfinished_jobs(self) -> list[JobRecord]:
        rows = await self._db.fetchall(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id"
        )
        return [job_from_row(row) for row in rows]

    async def queued_jobs(self) -> list[JobRecord]:
        rows = await self._db.fetchall(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY created_at, id"
        )
        return [job_from_row(row) for row in rows]

    # --- audit ---------------------------------------------------------------------------------------------

    async def ledger_balance(self) -> LedgerReport:
        db = self._db
        # One transaction: the totals and the per-job check see the same state.
        async with db.transaction():
            totals = await db.fetchone(_LEDGER_TOTALS_SQL)
            bad = await db.fetchall(_LEDGER_DISCREPANCIES_SQL)
        assert totals is not None
        reserved, committed, refunded, open_ = (int(v) for v in totals)
        discrepancies = tuple(
            LedgerDiscrepancy(
                job_id=row[0], status=row[1], problem=_describe(row),
                job_reserved=row[2], job_committed=row[3], job_refunded=row[4],
                ledger_reserved=row[5], ledger_committed=row[6], ledger_refunded=row[7],
            )
            for row in bad
        )  # fmt: skip
        return LedgerReport(reserved, committed, refunded, open_, discrepancies)


_UNLIMITED = Limits()
