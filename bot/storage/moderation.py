"""Moderation records and their repository (server policy, role limits, blocklist, bans, reports).

The records are plain dataclasses (no SQL, no Discord); :mod:`bot.moderation` holds the decisions made
with them. Writes are short transactions; nothing here is cached, so a change is visible to the next read
at once. Every change of a server's moderation state (policy, role limits, blocklist, bans) also bumps
that server's row in ``moderation_versions`` in the same transaction: processes that cache moderation
state poll :meth:`SqlModerationRepository.versions_since` and drop what moved.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import BigInteger, Float, Text, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.storage import schema
from bot.storage.dialect import insert
from bot.storage.jobs import sql

if TYPE_CHECKING:
    from bot.storage.db import Database

NsfwMode = Literal["same", "relaxed"]
BlockKind = Literal["word", "regex"]
BlockScope = Literal["all", "sfw"]


@dataclass(frozen=True, slots=True)
class GuildPolicy:
    """A server's policy. Limits: ``None`` = the global default from the settings, ``0`` = unlimited.

    ``allowed_channels`` / ``allowed_models`` empty = all allowed."""

    guild_id: int
    daily_limit: int | None = None
    hourly_limit: int | None = None
    daily_pool: int | None = None
    max_resolution: str | None = None
    max_images: int | None = None
    allowed_channels: tuple[int, ...] = ()
    # Used when ``allowed_channels`` is empty (every channel): these few are switched off.
    denied_channels: tuple[int, ...] = ()
    allowed_models: tuple[str, ...] = ()
    default_model: str | None = None
    mod_role_id: int | None = None
    modlog_channel_id: int | None = None
    nsfw_mode: NsfwMode = "same"
    builtin_blocklist: bool = False
    autoban_hits: int = 3
    autoban_window: float = 600.0
    autoban_duration: float = 3600.0
    #: The language of the server's public posts (a shipped Discord locale); ``None`` = guild_locale.
    locale: str | None = None

    def changed(self, **changes: object) -> GuildPolicy:
        return replace(self, **changes)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "guild_id"}


@dataclass(frozen=True, slots=True)
class RoleLimit:
    guild_id: int
    role_id: int
    daily_limit: int | None = None
    hourly_limit: int | None = None


@dataclass(frozen=True, slots=True)
class BlockEntry:
    id: int
    guild_id: int
    kind: BlockKind
    pattern: str
    scope: BlockScope = "all"
    added_by: int | None = None
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Ban:
    """A generation ban. ``reason`` is text as typed by a moderator, or the English of a reason that
    Palette wrote itself; for the latter ``reason_code`` and ``reason_values`` say what it was, so that
    :func:`bot.moderation.bans.ban_reason` words it in each reader's language."""

    guild_id: int
    user_id: int
    expires_at: float | None
    reason: str | None
    banned_by: int | None
    automatic: bool
    created_at: float
    reason_code: str | None = None
    reason_values: Mapping[str, Any] | None = field(default=None, hash=False)

    def active(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class Report:
    id: int
    guild_id: int | None
    job_id: int
    reporter_id: int
    reported_id: int
    created_at: float
    resolved_at: float | None = None
    resolution: str | None = None


@dataclass(frozen=True, slots=True)
class PostedResult:
    """A message that carries a user's generated images."""

    channel_id: int
    message_id: int
    job_ids: tuple[int, ...] = field(default=())


_POLICY_COLUMNS = (
    "guild_id", "daily_limit", "hourly_limit", "daily_pool", "max_resolution", "max_images",
    "allowed_channels", "allowed_models", "default_model", "mod_role_id", "modlog_channel_id", "nsfw_mode",
    "builtin_blocklist", "autoban_hits", "autoban_window", "autoban_duration", "denied_channels", "locale",
)  # fmt: skip
_BAN_COLUMNS = (
    "guild_id", "user_id", "expires_at", "reason", "banned_by", "automatic", "created_at", "reason_code",
    "reason_values",
)  # fmt: skip
_REPORT_COLUMNS = (
    "id", "guild_id", "job_id", "reporter_id", "reported_id", "created_at", "resolved_at", "resolution",
)  # fmt: skip

_policy = schema.guild_policy
_roles = schema.role_limits
_blocks = schema.blocklist
_bans = schema.bans
_attempts = schema.blocked_attempts
_reports = schema.reports
_versions = schema.moderation_versions

_RESULT_MESSAGES = sql(
    """
    SELECT channel_id, message_id, job_id FROM results
     WHERE guild_id = :g AND user_id = :u AND message_id IS NOT NULL AND channel_id IS NOT NULL
    UNION
    SELECT channel_id, result_message_id, id FROM jobs
     WHERE guild_id = :g AND user_id = :u AND result_message_id IS NOT NULL
       AND channel_id IS NOT NULL
    ORDER BY 2
    """,
    g=BigInteger(), u=BigInteger(),
)  # fmt: skip
_COUNT_BLOCKED = sql(
    "SELECT COUNT(*) FROM blocked_attempts WHERE guild_id = :g AND user_id = :u AND created_at > :since",
    g=BigInteger(), u=BigInteger(), since=Float(),
)  # fmt: skip
_COUNT_BLOCKED_DM = sql(
    "SELECT COUNT(*) FROM blocked_attempts WHERE guild_id IS NULL AND user_id = :u AND created_at > :since",
    u=BigInteger(), since=Float(),
)  # fmt: skip
_RESOLVE = sql(
    "UPDATE reports SET resolved_at = :now, resolution = :resolution "
    "WHERE job_id = :job_id AND resolved_at IS NULL",
    now=Float(), resolution=Text(), job_id=BigInteger(),
)  # fmt: skip
_VERSIONS_SINCE = sql(
    "SELECT guild_id, version, updated_at FROM moderation_versions WHERE updated_at > :after "
    "ORDER BY updated_at, guild_id",
    after=Float(),
)


def _policy_from_row(row: Any) -> GuildPolicy:
    return GuildPolicy(
        guild_id=row[0],
        daily_limit=row[1],
        hourly_limit=row[2],
        daily_pool=row[3],
        max_resolution=row[4],
        max_images=row[5],
        allowed_channels=tuple(int(c) for c in json.loads(row[6] or "[]")),
        allowed_models=tuple(str(m) for m in json.loads(row[7] or "[]")),
        default_model=row[8],
        mod_role_id=row[9],
        modlog_channel_id=row[10],
        nsfw_mode=row[11],
        builtin_blocklist=bool(row[12]),
        autoban_hits=row[13],
        autoban_window=row[14],
        autoban_duration=row[15],
        denied_channels=tuple(int(c) for c in json.loads(row[16] or "[]")),
        locale=row[17],
    )


def _ban_from_row(row: Any) -> Ban:
    return Ban(*row[:5], bool(row[5]), row[6], row[7], _reason_values(row[8]))


def _reason_values(raw: str | None) -> Mapping[str, Any] | None:
    """The stored values of a coded reason; ``None`` when absent or unreadable (the English text is
    shown then)."""
    if not raw:
        return None
    try:
        values = json.loads(raw)
    except ValueError:
        return None
    return values if isinstance(values, dict) else None


class SqlModerationRepository:
    """Moderation data on a :class:`~bot.storage.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db
        d = db.dialect
        policy = insert(d, _policy)
        self._save_policy = policy.on_conflict_do_update(
            index_elements=[_policy.c.guild_id],
            set_={c: policy.excluded[c] for c in (*_POLICY_COLUMNS[1:], "updated_at")},
        )
        role = insert(d, _roles)
        self._set_role = role.on_conflict_do_update(
            index_elements=[_roles.c.guild_id, _roles.c.role_id],
            set_={c: role.excluded[c] for c in ("daily_limit", "hourly_limit", "updated_at")},
        )
        ban = insert(d, _bans)
        self._ban = ban.on_conflict_do_update(
            index_elements=[_bans.c.guild_id, _bans.c.user_id],
            set_={c: ban.excluded[c] for c in _BAN_COLUMNS[2:]},
        )
        self._add_block = insert(d, _blocks).on_conflict_do_nothing(
            index_elements=[_blocks.c.guild_id, _blocks.c.kind, _blocks.c.pattern]
        )
        self._add_report = (
            insert(d, _reports)
            .on_conflict_do_nothing(index_elements=[_reports.c.job_id, _reports.c.reporter_id])
            .returning(*(_reports.c[c] for c in _REPORT_COLUMNS))
        )
        version = insert(d, _versions)
        self._bump = version.on_conflict_do_update(
            index_elements=[_versions.c.guild_id],
            set_={"version": _versions.c.version + 1, "updated_at": version.excluded.updated_at},
        )

    async def _bump_version(self, conn: AsyncConnection, guild_id: int) -> None:
        """Inside the change's transaction: the server's moderation state moved. ``updated_at`` is this
        process's wall clock (pollers should look back a few seconds and compare versions)."""
        await conn.execute(self._bump, {"guild_id": guild_id, "version": 1, "updated_at": time.time()})

    async def bump_version(self, conn: AsyncConnection, guild_id: int) -> None:
        """:meth:`_bump_version` for other repositories whose server state is cached with the moderation
        state (a server's own provider keys): every process drops that server's cache when it moves."""
        await self._bump_version(conn, guild_id)

    async def versions_since(self, updated_after: float) -> list[tuple[int, int, float]]:
        """``(guild_id, version, updated_at)`` of every server whose moderation state changed after
        ``updated_after`` (unix seconds), oldest change first."""
        rows = await self._db.fetchall(_VERSIONS_SINCE, {"after": updated_after})
        return [(int(g), int(v), float(t)) for g, v, t in rows]

    # --- policy ---------------------------------------------------------------------------------------

    async def get_policy(self, guild_id: int) -> GuildPolicy:
        row = await self._db.fetchone(
            select(*(_policy.c[c] for c in _POLICY_COLUMNS)).where(_policy.c.guild_id == guild_id)
        )
        return GuildPolicy(guild_id) if row is None else _policy_from_row(row)

    async def save_policy(self, policy: GuildPolicy, now: float) -> None:
        p = policy
        values = {
            "guild_id": p.guild_id, "daily_limit": p.daily_limit, "hourly_limit": p.hourly_limit,
            "daily_pool": p.daily_pool, "max_resolution": p.max_resolution, "max_images": p.max_images,
            "allowed_channels": json.dumps(sorted(set(p.allowed_channels))),
            "allowed_models": json.dumps(sorted(set(p.allowed_models))),
            "default_model": p.default_model, "mod_role_id": p.mod_role_id,
            "modlog_channel_id": p.modlog_channel_id, "nsfw_mode": p.nsfw_mode,
            "builtin_blocklist": int(p.builtin_blocklist), "autoban_hits": p.autoban_hits,
            "autoban_window": p.autoban_window, "autoban_duration": p.autoban_duration,
            "denied_channels": json.dumps(sorted(set(p.denied_channels))), "locale": p.locale,
            "updated_at": now,
        }  # fmt: skip
        async with self._db.transaction() as conn:
            await conn.execute(self._save_policy, values)
            await self._bump_version(conn, p.guild_id)

    # --- role overrides -------------------------------------------------------------------------------

    async def role_limits(self, guild_id: int) -> list[RoleLimit]:
        rows = await self._db.fetchall(
            select(_roles.c.guild_id, _roles.c.role_id, _roles.c.daily_limit, _roles.c.hourly_limit)
            .where(_roles.c.guild_id == guild_id)
            .order_by(_roles.c.role_id)
        )
        return [RoleLimit(*row) for row in rows]

    async def set_role_limit(self, limit: RoleLimit, now: float) -> None:
        values = {
            "guild_id": limit.guild_id, "role_id": limit.role_id, "daily_limit": limit.daily_limit,
            "hourly_limit": limit.hourly_limit, "updated_at": now,
        }  # fmt: skip
        async with self._db.transaction() as conn:
            await conn.execute(self._set_role, values)
            await self._bump_version(conn, limit.guild_id)

    async def clear_role_limit(self, guild_id: int, role_id: int) -> bool:
        statement = _roles.delete().where(_roles.c.guild_id == guild_id, _roles.c.role_id == role_id)
        return await self._change(guild_id, statement) > 0

    async def _change(self, guild_id: int, statement: Any, params: Any = None) -> int:
        """One change of the server's state and its version bump (only when a row changed)."""
        async with self._db.transaction() as conn:
            changed = (await conn.execute(statement, params)).rowcount
            if changed > 0:
                await self._bump_version(conn, guild_id)
        return changed

    # --- blocklist ------------------------------------------------------------------------------------

    async def blocklist(self, guild_id: int) -> list[BlockEntry]:
        b = _blocks.c
        rows = await self._db.fetchall(
            select(b.id, b.guild_id, b.kind, b.pattern, b.scope, b.added_by, b.created_at)
            .where(b.guild_id == guild_id)
            .order_by(b.id)
        )
        return [BlockEntry(*row) for row in rows]

    async def add_block(
        self,
        guild_id: int,
        kind: BlockKind,
        pattern: str,
        scope: BlockScope,
        added_by: int | None,
        now: float,
    ) -> bool:
        """False when the same entry is already there."""
        values = {"guild_id": guild_id, "kind": kind, "pattern": pattern, "scope": scope,
                  "added_by": added_by, "created_at": now}  # fmt: skip
        return await self._change(guild_id, self._add_block, values) > 0

    async def remove_block(self, guild_id: int, pattern: str) -> int:
        statement = _blocks.delete().where(_blocks.c.guild_id == guild_id, _blocks.c.pattern == pattern)
        return await self._change(guild_id, statement)

    # --- bans -----------------------------------------------------------------------------------------

    async def get_ban(self, guild_id: int, user_id: int) -> Ban | None:
        row = await self._db.fetchone(
            select(*(_bans.c[c] for c in _BAN_COLUMNS)).where(
                _bans.c.guild_id == guild_id, _bans.c.user_id == user_id
            )
        )
        return None if row is None else _ban_from_row(row)

    async def bans(self, guild_id: int) -> list[Ban]:
        """Every ban of the server, expired ones included (callers compare ``expires_at`` with now)."""
        rows = await self._db.fetchall(
            select(*(_bans.c[c] for c in _BAN_COLUMNS)).where(_bans.c.guild_id == guild_id)
        )
        return [_ban_from_row(row) for row in rows]

    async def ban(self, ban: Ban) -> None:
        coded = None if ban.reason_values is None else json.dumps(dict(ban.reason_values), sort_keys=True)
        values = {
            "guild_id": ban.guild_id, "user_id": ban.user_id, "expires_at": ban.expires_at,
            "reason": ban.reason, "banned_by": ban.banned_by, "automatic": int(ban.automatic),
            "created_at": ban.created_at, "reason_code": ban.reason_code, "reason_values": coded,
        }  # fmt: skip
        async with self._db.transaction() as conn:
            await conn.execute(self._ban, values)
            await self._bump_version(conn, ban.guild_id)

    async def unban(self, guild_id: int, user_id: int) -> bool:
        statement = _bans.delete().where(_bans.c.guild_id == guild_id, _bans.c.user_id == user_id)
        return await self._change(guild_id, statement) > 0

    # --- blocked attempts -----------------------------------------------------------------------------

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
        """Store a refused prompt; returns how many the user had in this server within ``window``."""
        values = {"guild_id": guild_id, "user_id": user_id, "channel_id": channel_id, "prompt": prompt,
                  "matched": matched, "created_at": now}  # fmt: skip
        async with self._db.transaction() as conn:
            await conn.execute(_attempts.insert(), values)
            if guild_id is None:
                count = await conn.scalar(_COUNT_BLOCKED_DM, {"u": user_id, "since": now - window})
            else:
                count = await conn.scalar(
                    _COUNT_BLOCKED, {"g": guild_id, "u": user_id, "since": now - window}
                )
        return int(count or 0)

    # --- reports --------------------------------------------------------------------------------------

    async def add_report(
        self, guild_id: int | None, job_id: int, reporter_id: int, reported_id: int, now: float
    ) -> Report | None:
        """Record a report; ``None`` (nothing written) when this member already reported this job (the
        unique index on ``(job_id, reporter_id)`` decides, whatever process the clicks reach)."""
        rows = await self._db.write_returning(
            self._add_report,
            {"guild_id": guild_id, "job_id": job_id, "reporter_id": reporter_id,
             "reported_id": reported_id, "created_at": now},
        )  # fmt: skip
        return Report(*rows[0]) if rows else None

    async def resolve_reports(self, job_id: int, resolution: str, now: float) -> int:
        return await self._db.execute(_RESOLVE, {"now": now, "resolution": resolution, "job_id": job_id})

    async def reports_for_job(self, job_id: int) -> list[Report]:
        rows = await self._db.fetchall(
            select(*(_reports.c[c] for c in _REPORT_COLUMNS))
            .where(_reports.c.job_id == job_id)
            .order_by(_reports.c.id)
        )
        return [Report(*row) for row in rows]

    # --- purge ----------------------------------------------------------------------------------------

    async def result_messages(self, guild_id: int, user_id: int) -> list[PostedResult]:
        """Every message carrying ``user_id``'s results in ``guild_id`` (results rows and the jobs' own
        result message, which survives ``/history-clear``)."""
        rows = await self._db.fetchall(_RESULT_MESSAGES, {"g": guild_id, "u": user_id})
        merged: dict[tuple[int, int], set[int]] = {}
        for channel_id, message_id, job_id in rows:
            merged.setdefault((channel_id, message_id), set()).add(job_id)
        return [PostedResult(c, m, tuple(sorted(j))) for (c, m), j in merged.items()]
