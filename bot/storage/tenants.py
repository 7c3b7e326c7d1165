"""A server's own provider keys (stored encrypted) and its fallback setting.

The repository never sees a key in plain text: :mod:`bot.tenants` encrypts before :meth:`set_key` and
decrypts what :meth:`keys` returns. Every change bumps the server's moderation version in the same
transaction, so each process drops its cached view of that server (see
:meth:`bot.moderation.service.ModerationService.poll_changes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from bot.storage import schema
from bot.storage.dialect import insert

if TYPE_CHECKING:
    from bot.storage.db import Database

_keys = schema.guild_provider_keys
_settings = schema.guild_key_settings


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One provider key of a server, as stored: ``secret`` is the Fernet token, never the key."""

    guild_id: int
    provider: str
    secret: str
    added_by: int | None
    updated_at: float

    def __repr__(self) -> str:  # the token is not the key, but it has no business in a log line either
        return (
            f"StoredKey(guild_id={self.guild_id}, provider={self.provider!r}, updated_at={self.updated_at})"
        )


class SqlTenantRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        d = db.dialect
        key = insert(d, _keys)
        self._set_key = key.on_conflict_do_update(
            index_elements=[_keys.c.guild_id, _keys.c.provider],
            set_={c: key.excluded[c] for c in ("secret", "added_by", "updated_at")},
        )
        setting = insert(d, _settings)
        self._set_fallback = setting.on_conflict_do_update(
            index_elements=[_settings.c.guild_id],
            set_={c: setting.excluded[c] for c in ("operator_fallback", "updated_at")},
        )

    async def keys(self, guild_id: int) -> list[StoredKey]:
        rows = await self._db.fetchall(
            select(_keys.c.guild_id, _keys.c.provider, _keys.c.secret, _keys.c.added_by, _keys.c.updated_at)
            .where(_keys.c.guild_id == guild_id)
            .order_by(_keys.c.provider)
        )
        return [StoredKey(int(g), str(p), str(s), a, float(t)) for g, p, s, a, t in rows]

    async def providers(self, guild_id: int) -> tuple[frozenset[str], bool]:
        """The providers the server has keys for, and its fallback setting (one snapshot, no secrets)."""
        async with self._db.snapshot() as conn:
            names = (
                await conn.execute(select(_keys.c.provider).where(_keys.c.guild_id == guild_id))
            ).scalars()
            own = frozenset(str(n) for n in names)
            fallback = (
                await conn.execute(
                    select(_settings.c.operator_fallback).where(_settings.c.guild_id == guild_id)
                )
            ).scalar()
        return own, bool(fallback)

    async def fallback(self, guild_id: int) -> bool:
        value = await self._db.fetchval(
            select(_settings.c.operator_fallback).where(_settings.c.guild_id == guild_id)
        )
        return bool(value)

    async def set_key(
        self, guild_id: int, provider: str, secret: str, added_by: int | None, now: float
    ) -> None:
        values = {
            "guild_id": guild_id, "provider": provider, "secret": secret, "added_by": added_by,
            "updated_at": now,
        }  # fmt: skip
        async with self._db.transaction() as conn:
            await conn.execute(self._set_key, values)
            await self._db.moderation.bump_version(conn, guild_id)  # type: ignore[attr-defined]

    async def remove_key(self, guild_id: int, provider: str) -> bool:
        async with self._db.transaction() as conn:
            result = await conn.execute(
                delete(_keys).where(_keys.c.guild_id == guild_id, _keys.c.provider == provider)
            )
            if result.rowcount:
                await self._db.moderation.bump_version(conn, guild_id)  # type: ignore[attr-defined]
            return bool(result.rowcount)

    async def set_fallback(self, guild_id: int, enabled: bool, now: float) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                self._set_fallback, {"guild_id": guild_id, "operator_fallback": enabled, "updated_at": now}
            )
            await self._db.moderation.bump_version(conn, guild_id)  # type: ignore[attr-defined]
