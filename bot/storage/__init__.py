"""Palette's storage layer: SQLite or PostgreSQL through SQLAlchemy (async Core), behind small repositories.

Usage::

    db = await open_database(settings.database_url)  # a DATABASE_URL; a plain path is a SQLite file
    job = await db.jobs.reserve_job(NewJob(...), Limits.from_settings(settings), now=time.time())
    # a worker claims it through the queue (bot.storage.queue_sql.SqlQueueRepository.claim)
    ...
    await db.jobs.finish_job(job.id, 2, results=[...], now=time.time())
    page = await db.history.history(user_id, limit=10)
    await db.close()

All SQL lives in this package. Callers see :class:`JobRepository` (``db.jobs``), :class:`HistoryRepository`
(``db.history``), :class:`KeyValueRepository` (``db.kv``) and :class:`ModerationRepository`
(``db.moderation``), the :class:`Storage` protocol; the same queries run on both databases, and what
differs between them lives in :mod:`bot.storage.dialect`. Migrations: :mod:`bot.storage.migrator`.
"""

from bot.storage.db import BackupNotSupported, Database, open_database
from bot.storage.errors import JobNotFound, QuotaExceeded, ReferencesTooLarge
from bot.storage.moderation import Ban, BlockEntry, GuildPolicy, PostedResult, Report, RoleLimit
from bot.storage.records import (
    FinalStatus,
    HistoryEntry,
    JobKind,
    JobRecord,
    JobStatus,
    LedgerDiscrepancy,
    LedgerReport,
    Limits,
    NewJob,
    NewReference,
    NewResult,
    ReferenceRecord,
    ResultRecord,
    UsageSnapshot,
)
from bot.storage.repository import (
    HistoryRepository,
    JobRepository,
    KeyValueRepository,
    ModerationRepository,
    Storage,
)

__all__ = [
    "BackupNotSupported",
    "Ban",
    "BlockEntry",
    "Database",
    "FinalStatus",
    "GuildPolicy",
    "HistoryEntry",
    "HistoryRepository",
    "JobKind",
    "JobNotFound",
    "JobRecord",
    "JobRepository",
    "JobStatus",
    "KeyValueRepository",
    "LedgerDiscrepancy",
    "LedgerReport",
    "Limits",
    "ModerationRepository",
    "NewJob",
    "NewReference",
    "NewResult",
    "PostedResult",
    "QuotaExceeded",
    "ReferenceRecord",
    "ReferencesTooLarge",
    "Report",
    "ResultRecord",
    "RoleLimit",
    "Storage",
    "UsageSnapshot",
    "open_database",
]
