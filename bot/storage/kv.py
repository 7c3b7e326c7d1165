"""A tiny persistent string map (:class:`bot.storage.repository.KeyValueRepository`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.storage import schema
from bot.storage.dialect import insert

if TYPE_CHECKING:
    from bot.storage.db import Database

_kv = schema.kv


class SqlKeyValueRepository:
    """A tiny persistent string map (feature flags, markers, last-run times)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        upsert = insert(db.dialect, _kv)
        self._set = upsert.on_conflict_do_update(
            index_elements=[_kv.c.key],
            set_={"value": upsert.excluded.value, "updated_at": upsert.excluded.updated_at},
        )

    async def get(self, key: str) -> str | None:
        return await self._db.fetchval(select(_kv.c.value).where(_kv.c.key == key))

    async def set(self, key: str, value: str) -> None:
        await self._db.execute(self._set, {"key": key, "value": value, "updated_at": time.time()})

    async def delete(self, key: str) -> bool:
        return await self._db.execute(_kv.delete().where(_kv.c.key == key)) > 0
