"""Job groups (issue 12, /compare): several jobs, one per model, that share one result message.

Each job of a group is an ordinary job (queue, lease, settlement); the group row only names the request
and holds a short lock that the worker adding its part to the shared message takes, so two workers in
any processes never edit that message at once (an edit keeps the attachments the message already has:
two concurrent edits would each drop the other's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select, update

from bot.storage import schema

if TYPE_CHECKING:
    from bot.storage.db import Database

_groups = schema.job_groups
_jobs = schema.jobs


@dataclass(frozen=True, slots=True)
class GroupMember:
    job_id: int
    model: str
    status: str
    delivered: bool  # its result was posted (recorded delivery, or settled as done)
    error: str | None = None


class SqlGroupRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, user_id: int, guild_id: int | None, size: int, now: float) -> int:
        async with self._db.transaction() as conn:
            ins = _groups.insert().values(user_id=user_id, guild_id=guild_id, size=size, created_at=now)
            return int((await conn.execute(ins.returning(_groups.c.id))).scalar_one())

    async def lock(self, group_id: int, owner: str, now: float, seconds: float) -> bool:
        """Take the group's message lock until ``now + seconds`` (free, expired, or already ours)."""
        free = or_(_groups.c.lock_owner.is_(None), _groups.c.lock_until < now, _groups.c.lock_owner == owner)
        changed = await self._db.execute(
            update(_groups)
            .where(_groups.c.id == group_id, free)
            .values(lock_owner=owner, lock_until=now + seconds)
        )
        return changed > 0

    async def unlock(self, group_id: int, owner: str) -> None:
        await self._db.execute(
            update(_groups)
            .where(and_(_groups.c.id == group_id, _groups.c.lock_owner == owner))
            .values(lock_owner=None, lock_until=None)
        )

    async def members(self, group_id: int) -> list[GroupMember]:
        rows = await self._db.fetchall(
            select(_jobs.c.id, _jobs.c.model, _jobs.c.status, _jobs.c.delivery, _jobs.c.error)
            .where(_jobs.c.group_id == group_id)
            .order_by(_jobs.c.id)
        )
        return [
            GroupMember(int(r[0]), str(r[1]), str(r[2]), r[3] is not None or r[2] == "done", r[4])
            for r in rows
        ]
