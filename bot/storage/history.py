"""SQLite implementation of :class:`bot.storage.repository.HistoryRepository`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

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
WHERE j.user_id = :user_id AND j.status = 'done' AND j.purged_at IS NULL
  AND (:guild_id IS NULL OR j.guild_id = :guild_id)
ORDER BY j.created_at DESC, j.id DESC
LIMIT :limit OFFSET :offset
"""

_COUNT_SQL = """
SELECT COUNT(*) FROM jobs
WHERE user_id = :user_id AND status = 'done' AND purged_at IS NULL
  AND (:guild_id IS NULL OR guild_id = :guild_id)
"""

_RESULT_COLUMNS = (
    "id, job_id, user_id, guild_id, channel_id, message_id, attachment_id, filename, sha256, width, height, "
    "mime_type, size_bytes, provider, created_at"
)

_FINISHED = "status NOT IN ('queued', 'running')"


class SqliteHistoryRepository:
    """Delivered images and per-user history on a :class:`~bot.storage.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def history(
        self, user_id: int, guild_id: int | None = None, limit: int = 10, offset: int = 0
    ) -> list[HistoryEntry]:
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset cannot be negative")
        rows = await self._db.fetchall(
            _HISTORY_SQL, {"user_id": user_id, "guild_id": guild_id, "limit": limit, "offset": offset}
        )
        return [HistoryEntry(*row) for row in rows]

    async def count_history(self, user_id: int, guild_id: int | None = None) -> int:
        return int(await self._db.fetchval(_COUNT_SQL, {"user_id": user_id, "guild_id": guild_id}))

    async def results_for_job(self, job_id: int) -> list[ResultRecord]:
        rows = await self._db.fetchall(
            f"SELECT {_RESULT_COLUMNS} FROM results WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [ResultRecord(*row) for row in rows]

    async def delete_user_data(self, user_id: int, now: float | None = None) -> int:
        """Clear the content of the user's finished jobs; unfinished jobs keep what they need to run.

        Prompts, parameters, interaction tokens, errors, references and results go; the rows and their
        numbers stay, so clearing history neither resets quota windows nor unbalances the ledger."""
        now = time.time() if now is None else now
        db = self._db
        async with db.transaction():
            await db.execute("DELETE FROM results WHERE user_id = ?", (user_id,))
            await db.execute(
                f"DELETE FROM job_references WHERE job_id IN "
                f"(SELECT id FROM jobs WHERE user_id = ? AND {_FINISHED})",
                (user_id,),
            )
            return await db.execute(
                "UPDATE jobs SET prompt = '', params = '{}', interaction_token = NULL, error = NULL, "
                f"purged_at = ? WHERE user_id = ? AND {_FINISHED} AND purged_at IS NULL",
                (now, user_id),
            )
