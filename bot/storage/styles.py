"""Styles (issue 12): named prompt templates with reference images, personal or a server's.

One implementation for SQLite and PostgreSQL on :class:`bot.storage.db.Database` (``db.styles``). The
rules (names, templates, who may manage what) are :mod:`bot.styles`'; this module only stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sqlalchemy import and_, delete, func, or_, select

from bot.storage import schema

if TYPE_CHECKING:
    from bot.storage.db import Database

StyleScope = Literal["personal", "server"]

_styles = schema.styles
_refs = schema.style_references


@dataclass(frozen=True, slots=True)
class StyleRecord:
    """One row of ``styles``; ``owner_id`` is the user (personal) or the guild (server)."""

    id: int
    scope: str
    owner_id: int
    name: str
    template: str
    model: str | None
    aspect_ratio: str | None
    created_by: int
    created_at: float
    references: int = 0  # how many reference images it has


@dataclass(frozen=True, slots=True)
class StyleImage:
    mime_type: str | None
    data: bytes

    def __repr__(self) -> str:
        return f"StyleImage(mime_type={self.mime_type!r}, bytes={len(self.data)})"


_COLUMNS = (
    _styles.c.id, _styles.c.scope, _styles.c.owner_id, _styles.c.name, _styles.c.template, _styles.c.model,
    _styles.c.aspect_ratio, _styles.c.created_by, _styles.c.created_at,
)  # fmt: skip
_REF_COUNT = select(func.count()).select_from(_refs).where(_refs.c.style_id == _styles.c.id).scalar_subquery()


def _record(row: Sequence[object]) -> StyleRecord:
    return StyleRecord(*row)  # type: ignore[arg-type]


class SqlStyleRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def save(
        self,
        scope: StyleScope,
        owner_id: int,
        name: str,
        template: str,
        *,
        model: str | None,
        aspect_ratio: str | None,
        created_by: int,
        images: Sequence[StyleImage],
        now: float,
    ) -> StyleRecord:
        """Create the style, or replace the one of that name (template, defaults and images), in one
        transaction."""
        async with self._db.transaction() as conn:
            key = and_(_styles.c.scope == scope, _styles.c.owner_id == owner_id, _styles.c.name == name)
            existing = (await conn.execute(select(_styles.c.id).where(key))).scalar()
            values = {
                "template": template, "model": model, "aspect_ratio": aspect_ratio,
                "created_by": created_by, "created_at": now,
            }  # fmt: skip
            if existing is None:
                ins = _styles.insert().values(scope=scope, owner_id=owner_id, name=name, **values)
                style_id = int((await conn.execute(ins.returning(_styles.c.id))).scalar_one())
            else:
                style_id = int(existing)
                await conn.execute(_styles.update().where(_styles.c.id == style_id).values(**values))
                await conn.execute(delete(_refs).where(_refs.c.style_id == style_id))
            if images:
                await conn.execute(
                    _refs.insert(),
                    [
                        {"style_id": style_id, "position": i, "mime_type": img.mime_type, "data": img.data}
                        for i, img in enumerate(images)
                    ],
                )
            row = (await conn.execute(select(*_COLUMNS, _REF_COUNT).where(_styles.c.id == style_id))).one()
        return _record(row)

    async def count(self, scope: StyleScope, owner_id: int) -> int:
        query = select(func.count()).select_from(_styles)
        return int(
            await self._db.fetchval(query.where(_styles.c.scope == scope, _styles.c.owner_id == owner_id))
            or 0
        )

    async def get(self, scope: StyleScope, owner_id: int, name: str) -> StyleRecord | None:
        rows = await self._db.fetchall(
            select(*_COLUMNS, _REF_COUNT).where(
                _styles.c.scope == scope, _styles.c.owner_id == owner_id, _styles.c.name == name
            )
        )
        return _record(rows[0]) if rows else None

    async def usable(self, user_id: int, guild_id: int | None) -> list[StyleRecord]:
        """The user's personal styles and the server's (when ``guild_id``), personal first, by name."""
        where = and_(_styles.c.scope == "personal", _styles.c.owner_id == user_id)
        if guild_id is not None:
            where = or_(where, and_(_styles.c.scope == "server", _styles.c.owner_id == guild_id))
        rows = await self._db.fetchall(
            select(*_COLUMNS, _REF_COUNT).where(where).order_by(_styles.c.scope, _styles.c.name)
        )
        return [_record(r) for r in rows]

    async def images(self, style_id: int) -> list[StyleImage]:
        rows = await self._db.fetchall(
            select(_refs.c.mime_type, _refs.c.data)
            .where(_refs.c.style_id == style_id)
            .order_by(_refs.c.position)
        )
        return [StyleImage(mime_type=r[0], data=bytes(r[1])) for r in rows]

    async def delete(self, scope: StyleScope, owner_id: int, name: str) -> bool:
        async with self._db.transaction() as conn:
            key = and_(_styles.c.scope == scope, _styles.c.owner_id == owner_id, _styles.c.name == name)
            style_id = (await conn.execute(select(_styles.c.id).where(key))).scalar()
            if style_id is None:
                return False
            await conn.execute(delete(_refs).where(_refs.c.style_id == style_id))  # SQLite: no FK cascade
            await conn.execute(delete(_styles).where(_styles.c.id == style_id))
        return True
