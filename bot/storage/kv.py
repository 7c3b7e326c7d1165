"""SQLite implementation of :class:`bot.storage.repository.KeyValueRepository`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.storage.db import Database


class SqliteKeyValueRepository:
    """A tiny persistent string map (feature flags, markers, last-run times)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        return await self._db.fetchval("SELECT value FROM kv WHERE key = ?", (key,))

    async def set(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, value, time.time()),
        )

    async def delete(self, key: str) -> bool:
        return await self._db.execute("DELETE FROM kv WHERE key = ?", (key,)) > 0
