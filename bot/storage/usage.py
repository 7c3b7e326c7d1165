"""Monthly usage of servers (``/palette usage``, ``python -m bot usage``): images charged, from the jobs.

A job's ``committed`` count is what the ledger charged for it (its ``commit`` entry; see
:mod:`bot.storage.dialect`), so the sums here agree with the ledger. The same statements run on SQLite
and PostgreSQL; only reading the resolution out of the job's JSON parameters is spelled per dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, literal_column, select

from bot.storage import schema
from bot.storage.dialect import POSTGRESQL

if TYPE_CHECKING:
    from bot.storage.db import Database

_jobs = schema.jobs


@dataclass(frozen=True, slots=True)
class ModelUsageRow:
    guild_id: int | None
    model: str
    resolution: str | None
    provider: str | None
    provider_model: str | None
    images: int
    jobs: int


@dataclass(frozen=True, slots=True)
class MemberUsageRow:
    guild_id: int | None
    user_id: int
    images: int


class SqlUsageRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _resolution(self) -> Any:
        if self._db.dialect == POSTGRESQL:
            return literal_column("(jobs.params::json ->> 'resolution')")
        return func.json_extract(_jobs.c.params, "$.resolution")

    def _where(self, start: float, end: float, guild_id: int | None) -> list[Any]:
        conditions = [_jobs.c.created_at >= start, _jobs.c.created_at < end, _jobs.c.committed > 0]
        if guild_id is not None:
            conditions.append(_jobs.c.guild_id == guild_id)
        return conditions

    async def by_model(self, start: float, end: float, guild_id: int | None = None) -> list[ModelUsageRow]:
        """Images charged per server, model, resolution and provider for jobs created in [start, end)."""
        resolution = self._resolution().label("resolution")
        keys = (_jobs.c.guild_id, _jobs.c.model, resolution, _jobs.c.provider, _jobs.c.provider_model)
        query = (
            select(*keys, func.sum(_jobs.c.committed), func.count())
            .where(*self._where(start, end, guild_id))
            .group_by(*keys)
            .order_by(_jobs.c.guild_id, _jobs.c.model, resolution, _jobs.c.provider, _jobs.c.provider_model)
        )
        rows = await self._db.fetchall(query)
        return [ModelUsageRow(g, str(m), r, p, pm, int(n), int(c)) for g, m, r, p, pm, n, c in rows]

    async def by_member(self, start: float, end: float, guild_id: int | None = None) -> list[MemberUsageRow]:
        """Images charged per server and member for jobs created in [start, end), most first."""
        total = func.sum(_jobs.c.committed)
        query = (
            select(_jobs.c.guild_id, _jobs.c.user_id, total)
            .where(*self._where(start, end, guild_id))
            .group_by(_jobs.c.guild_id, _jobs.c.user_id)
            .order_by(_jobs.c.guild_id, total.desc(), _jobs.c.user_id)
        )
        rows = await self._db.fetchall(query)
        return [MemberUsageRow(g, int(u), int(n)) for g, u, n in rows]
