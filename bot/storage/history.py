"""Delivered images and per-user history (:class:`bot.storage.repository.HistoryRepository`), for SQLite
and PostgreSQL."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Float, Integer

from bot.storage.jobs import sql
from bot.storage.records import HistoryEntry, ResultRecord

if TYPE_CHECKING:
    from bot.storage.db import Database

# The first result of each job comes from a correlated lookup on results(job_id): one statement per page,
# one index probe per row, no query per entry.
_HISTORY_SQL = """
SELECT j.id, j.kind, j.model, j.prompt, j.created_at, j.finished_at, j.guild_id, j.channel_id,
       COALESCE(r.message_id, j.result_message_id), r.attachment_id, r.sha256, r.size_bytes,
       (SELECT COUNT(*) FROM results c WHERE c.job_id = j.id)
FROM jobs j
LEFT JOIN results r ON r.id = (SELECT MIN(m.id) FROM results m WHERE m.job_id = j.id)
WHERE j.user_id = :user_id AND j.status = 'done' AND j.purged_at IS NULL {guild}
ORDER BY j.created_at DESC, j.id DESC
LIMIT :limit OFFSET :offset
"""
_PAGE_TYPES = {"user_id": BigInteger(), "limit": Integer(), "offset": Integer()}
_HISTORY = sql(_HISTORY_SQL.format(guild=""), **_PAGE_TYPES)
_HISTORY_IN_GUILD = sql(_HISTORY_SQL.format(guild="AND j.guild_id = :guild_id"), guild_id=BigInteger(),
                        **_PAGE_TYPES)  # fmt: skip

_COUNT_SQL = (
    "SELECT COUNT(*) FROM jobs WHERE user_id = :user_id AND status = 'done' AND purged_at IS NULL {guild}"
)
_COUNT = sql(_COUNT_SQL.format(guild=""), user_id=BigInteger())
_COUNT_IN_GUILD = sql(_COUNT_SQL.format(guild="AND guild_id = :guild_id"), user_id=BigInteger(),
                      guild_id=BigInteger())  # fmt: skip

_RESULT_COLUMNS = (
    "id, job_id, user_id, guild_id, channel_id, message_id, attachment_id, filename, sha256, width, height, "
    "mime_type, size_bytes, provider, created_at"
)
_RESULTS_FOR_JOB = sql(
    f"SELECT {_RESULT_COLUMNS} FROM results WHERE job_id = :id ORDER BY id", id=BigInteger()
)

_FINISHED = "status NOT IN ('queued', 'running')"
_DELETE_RESULTS = sql("DELETE FROM results WHERE user_id = :user_id", user_id=BigInteger())
_FINISHED_JOBS = f"SELECT id FROM jobs WHERE user_id = :user_id AND {_FINISHED}"
_DELETE_BLOBS = sql(
    "DELETE FROM reference_blobs WHERE id IN (SELECT blob_id FROM job_references "
    f"WHERE blob_id IS NOT NULL AND job_id IN ({_FINISHED_JOBS}))",
    user_id=BigInteger(),
)
_DELETE_REFERENCES = sql(
    f"DELETE FROM job_references WHERE job_id IN ({_FINISHED_JOBS})", user_id=BigInteger()
)
_PURGE_JOBS = sql(
    "UPDATE jobs SET prompt = '', params = '{}', interaction_token = NULL, error = NULL, "
    f"purged_at = :now WHERE user_id = :user_id AND {_FINISHED} AND purged_at IS NULL",
    now=Float(), user_id=BigInteger(),
)  # fmt: skip


class SqlHistoryRepository:
    """Delivered images and per-user history on a :class:`~bot.storage.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def history(
        self, user_id: int, guild_id: int | None = None, limit: int = 10, offset: int = 0
    ) -> list[HistoryEntry]:
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset cannot be negative")
        params = {"user_id": user_id, "limit": limit, "offset": offset}
        if guild_id is None:
            rows = await self._db.fetchall(_HISTORY, params)
        else:
            rows = await self._db.fetchall(_HISTORY_IN_GUILD, {**params, "guild_id": guild_id})
        return [HistoryEntry(*row[:12], int(row[12])) for row in rows]

    async def count_history(self, user_id: int, guild_id: int | None = None) -> int:
        if guild_id is None:
            return int(await self._db.fetchval(_COUNT, {"user_id": user_id}))
        return int(await self._db.fetchval(_COUNT_IN_GUILD, {"user_id": user_id, "guild_id": guild_id}))

    async def results_for_job(self, job_id: int) -> list[ResultRecord]:
        rows = await self._db.fetchall(_RESULTS_FOR_JOB, {"id": job_id})
        return [ResultRecord(*row) for row in rows]

    async def delete_user_data(self, user_id: int, now: float | None = None) -> int:
        """Clear the content of the user's finished jobs; unfinished jobs keep what they need to run.

        Prompts, parameters, interaction tokens, errors, references and results go; the rows and their
        numbers stay, so clearing history neither resets quota windows nor unbalances the ledger."""
        now = time.time() if now is None else now
        async with self._db.transaction() as conn:
            await conn.execute(_DELETE_RESULTS, {"user_id": user_id})
            await conn.execute(_DELETE_BLOBS, {"user_id": user_id})
            await conn.execute(_DELETE_REFERENCES, {"user_id": user_id})
            return (await conn.execute(_PURGE_JOBS, {"now": now, "user_id": user_id})).rowcount
