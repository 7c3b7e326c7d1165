"""The storage interface callers depend on.

Callers (job runner, cogs, CLI) use these protocols, never SQL: :class:`bot.storage.db.Database` provides
them as ``db.jobs``, ``db.history``, ``db.kv`` and ``db.moderation`` (the :class:`Storage` protocol), one
implementation for SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from bot.storage.moderation import (
    Ban,
    BlockEntry,
    BlockKind,
    BlockScope,
    GuildPolicy,
    PostedResult,
    Report,
    RoleLimit,
)
from bot.storage.records import (
    FinalStatus,
    HistoryEntry,
    JobRecord,
    LedgerReport,
    Limits,
    NewJob,
    NewResult,
    ReferenceRecord,
    ResultRecord,
    UsageSnapshot,
)


@runtime_checkable
class JobRepository(Protocol):
    """Jobs, their references, quota reservations and the ledger."""

    async def reserve_job(self, new_job: NewJob, limits: Limits, now: float) -> JobRecord:
        """Atomically check the user's (and guild's) quota and create the job as ``queued`` with
        ``reserved = count``, its references and a ``reserve`` ledger row.

        Raises :class:`bot.storage.errors.QuotaExceeded` (nothing is written) when a limit would be
        exceeded, and :class:`bot.storage.errors.ReferencesTooLarge` (nothing is written) when the
        references' bytes add up to more than the database keeps for one job."""
        ...

    async def usage(self, user_id: int, now: float, guild_id: int | None = None) -> UsageSnapshot:
        """The user's current usage (and the guild pool's, when ``guild_id`` is given)."""
        ...

    async def set_task(self, job_id: int, provider: str, provider_model: str | None, task_id: str) -> bool:
        """Remember the provider's async task id right after submit, so recovery can resume polling."""
        ...

    async def increment_attempts(self, job_id: int) -> int:
        """Add one attempt; returns the new count. Raises :class:`~bot.storage.errors.JobNotFound`."""
        ...

    async def set_status_message(self, job_id: int, message_id: int | None) -> bool: ...

    async def set_interaction(self, job_id: int, token: str | None, created_at: float | None) -> bool: ...

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
        """Settle the job in one transaction: commit ``delivered`` images, refund ``reserved -
        delivered``, set the final status (and the provider that served it, if given), record
        ``results``.

        Idempotent: returns False (and changes nothing) if the job was already finished. Raises
        :class:`~bot.storage.errors.JobNotFound` for an unknown job and ``ValueError`` if ``delivered`` is
        negative or larger than the reservation."""
        ...

    async def cancel_job(self, job_id: int, by: int, now: float, *, error: str = "cancelled") -> bool:
        """Settle an unfinished job whose result was not posted as ``cancelled`` (all refunded), recording
        ``by``; False (nothing changed) when it is finished or already posted."""
        ...

    async def job_status(self, job_id: int) -> str | None:
        """The job's status alone; None if unknown."""
        ...

    async def get_job(self, job_id: int) -> JobRecord | None: ...

    async def get_references(self, job_id: int) -> list[ReferenceRecord]:
        """The job's reference images in submission order."""
        ...

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (recovery after a restart)."""
        ...

    async def queued_jobs(self) -> list[JobRecord]:
        """Queued jobs, oldest first."""
        ...

    async def ledger_balance(self) -> LedgerReport:
        """Check that every reserved image is committed, refunded or still open."""
        ...


@runtime_checkable
class HistoryRepository(Protocol):
    """Delivered images, per user."""

    async def history(
        self, user_id: int, guild_id: int | None = None, limit: int = 10, offset: int = 0
    ) -> list[HistoryEntry]:
        """The user's ``done`` jobs, newest first (only those in ``guild_id`` when given)."""
        ...

    async def count_history(self, user_id: int, guild_id: int | None = None) -> int: ...

    async def results_for_job(self, job_id: int) -> list[ResultRecord]: ...

    async def delete_user_data(self, user_id: int, now: float | None = None) -> int:
        """Forget the user's finished jobs' content (prompts, parameters, references, results); the
        numbers quota and ledger need stay. Returns how many jobs were cleared."""
        ...


@runtime_checkable
class KeyValueRepository(Protocol):
    """Small persistent settings and markers (text values)."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str) -> None: ...

    async def delete(self, key: str) -> bool: ...


@runtime_checkable
class ModerationRepository(Protocol):
    """Per-server policy, role limits, blocklist, generation bans, blocked attempts and reports
    (records in :mod:`bot.storage.moderation`)."""

    async def get_policy(self, guild_id: int) -> GuildPolicy: ...

    async def save_policy(self, policy: GuildPolicy, now: float) -> None: ...

    async def role_limits(self, guild_id: int) -> list[RoleLimit]: ...

    async def set_role_limit(self, limit: RoleLimit, now: float) -> None: ...

    async def clear_role_limit(self, guild_id: int, role_id: int) -> bool: ...

    async def blocklist(self, guild_id: int) -> list[BlockEntry]: ...

    async def add_block(
        self,
        guild_id: int,
        kind: BlockKind,
        pattern: str,
        scope: BlockScope,
        added_by: int | None,
        now: float,
    ) -> bool: ...

    async def remove_block(self, guild_id: int, pattern: str) -> int: ...

    async def get_ban(self, guild_id: int, user_id: int) -> Ban | None: ...

    async def bans(self, guild_id: int) -> list[Ban]: ...

    async def ban(self, ban: Ban) -> None: ...

    async def unban(self, guild_id: int, user_id: int) -> bool: ...

    async def record_blocked(
        self,
        guild_id: int | None,
        user_id: int,
        channel_id: int | None,
        prompt: str,
        matched: str,
        now: float,
        *,
        window: float,
    ) -> int:
        """Store a refused prompt; returns the user's count in that server within ``window`` seconds."""
        ...

    async def add_report(
        self, guild_id: int | None, job_id: int, reporter_id: int, reported_id: int, now: float
    ) -> Report | None:
        """``None`` (nothing written) when ``reporter_id`` already reported ``job_id``."""
        ...

    async def resolve_reports(self, job_id: int, resolution: str, now: float) -> int: ...

    async def reports_for_job(self, job_id: int) -> list[Report]: ...

    async def result_messages(self, guild_id: int, user_id: int) -> list[PostedResult]: ...

    async def versions_since(self, updated_after: float) -> list[tuple[int, int, float]]:
        """``(guild_id, version, updated_at)`` of the servers whose moderation state (policy, role limits,
        blocklist, bans) changed after ``updated_after``: every such write bumps the server's version in
        the same transaction. For processes that cache moderation state."""
        ...


@runtime_checkable
class Storage(Protocol):
    """A whole storage backend: the repositories, backup and close."""

    jobs: JobRepository
    history: HistoryRepository
    kv: KeyValueRepository
    moderation: ModerationRepository

    async def close(self) -> None: ...

    async def backup(self, path: Path | str) -> Path:
        """Write a consistent copy of the whole database to ``path`` (SQLite; PostgreSQL raises
        :class:`bot.storage.db.BackupNotSupported`, pointing at ``pg_dump``)."""
        ...
