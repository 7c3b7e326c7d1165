"""Moderation records and their SQLite repository (server policy, role limits, blocklist, bans, reports).

The records are plain dataclasses (no SQL, no Discord); :mod:`bot.moderation` holds the decisions made
with them. Writes are single statements or short transactions; nothing here is cached, so a change is
visible to the next read at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Literal

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
    guild_id: int
    user_id: int
    expires_at: float | None
    reason: str | None
    banned_by: int | None
    automatic: bool
    created_at: float

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
    "guild_id, daily_limit, hourly_limit, daily_pool, max_resolution, max_images, allowed_channels, "
    "allowed_models, default_model, mod_role_id, modlog_channel_id, nsfw_mode, builtin_blocklist, "
    "autoban_hits, autoban_window, autoban_duration, denied_channels"
)
_BAN_COLUMNS = "guild_id, user_id, expires_at, reason, banned_by, automatic, created_at"
_REPORT_COLUMNS = "id, guild_id, job_id, reporter_id, reported_id, created_at, resolved_at, resolution"


class SqliteModerationRepository:
    """Moderation data on a :class:`~bot.storage.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- policy ---------------------------------------------------------------------------------------

    async def get_policy(self, guild_id: int) -> GuildPolicy:
        row = await self._db.fetchone(
            f"SELECT {_POLICY_COLUMNS} FROM guild_policy WHERE guild_id = ?", (guild_id,)
        )
        if row is None:
            return GuildPolicy(guild_id)
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
        )

    async def save_policy(self, policy: GuildPolicy, now: float) -> None:
        p = policy
        await self._db.execute(
            f"INSERT OR REPLACE INTO guild_policy ({_POLICY_COLUMNS}, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                p.guild_id,
                p.daily_limit,
                p.hourly_limit,
                p.daily_pool,
                p.max_resolution,
                p.max_images,
                json.dumps(sorted(set(p.allowed_channels))),
                json.dumps(sorted(set(p.allowed_models))),
                p.default_model,
                p.mod_role_id,
                p.modlog_channel_id,
                p.nsfw_mode,
                int(p.builtin_blocklist),
                p.autoban_hits,
                p.autoban_window,
                p.autoban_duration,
                json.dumps(sorted(set(p.denied_channels))),
                now,
            ),
        )

    # --- role overrides -------------------------------------------------------------------------------

    async def role_limits(self, guild_id: int) -> list[RoleLimit]:
        rows = await self._db.fetchall(
            "SELECT guild_id, role_id, daily_limit, hourly_limit FROM role_limits WHERE guild_id = ? "
            "ORDER BY role_id",
            (guild_id,),
        )
        return [RoleLimit(*row) for row in rows]

    async def set_role_limit(self, limit: RoleLimit, now: float) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO role_limits (guild_id, role_id, daily_limit, hourly_limit, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (limit.guild_id, limit.role_id, limit.daily_limit, limit.hourly_limit, now),
        )

    async def clear_role_limit(self, guild_id: int, role_id: int) -> bool:
        return (
            await self._db.execute(
                "DELETE FROM role_limits WHERE guild_id = ? AND role_id = ?", (guild_id, role_id)
            )
            > 0
        )

    # --- blocklist ------------------------------------------------------------------------------------

    async def blocklist(self, guild_id: int) -> list[BlockEntry]:
        rows = await self._db.fetchall(
            "SELECT id, guild_id, kind, pattern, scope, added_by, created_at FROM blocklist "
            "WHERE guild_id = ? ORDER BY id",
            (guild_id,),
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
        changed = await self._db.execute(
            "INSERT OR IGNORE INTO blocklist (guild_id, kind, pattern, scope, added_by, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (guild_id, kind, pattern, scope, added_by, now),
        )
        return changed > 0

    async def remove_block(self, guild_id: int, pattern: str) -> int:
        return await self._db.execute(
            "DELETE FROM blocklist WHERE guild_id = ? AND pattern = ?", (guild_id, pattern)
        )

    # --- bans -----------------------------------------------------------------------------------------

    async def get_ban(self, guild_id: int, user_id: int) -> Ban | None:
        row = await self._db.fetchone(
            f"SELECT {_BAN_COLUMNS} FROM bans WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        return None if row is None else Ban(*row[:5], bool(row[5]), row[6])

    async def bans(self, guild_id: int) -> list[Ban]:
        """Every ban of the server, expired ones included (callers compare ``expires_at`` with now)."""
        rows = await self._db.fetchall(f"SELECT {_BAN_COLUMNS} FROM bans WHERE guild_id = ?", (guild_id,))
        return [Ban(*row[:5], bool(row[5]), row[6]) for row in rows]

    async def ban(self, ban: Ban) -> None:
        await self._db.execute(
            f"INSERT OR REPLACE INTO bans ({_BAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                ban.guild_id,
                ban.user_id,
                ban.expires_at,
                ban.reason,
                ban.banned_by,
                int(ban.automatic),
                ban.created_at,
            ),
        )

    async def unban(self, guild_id: int, user_id: int) -> bool:
        return (
            await self._db.execute("DELETE FROM bans WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
            > 0
        )

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
        async with self._db.transaction():
            await self._db.execute(
                "INSERT INTO blocked_attempts (guild_id, user_id, channel_id, prompt, matched, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (guild_id, user_id, channel_id, prompt, matched, now),
            )
            return int(
                await self._db.fetchval(
                    "SELECT COUNT(*) FROM blocked_attempts WHERE guild_id IS ? AND user_id = ? "
                    "AND created_at > ?",
                    (guild_id, user_id, now - window),
                )
            )

    # --- reports --------------------------------------------------------------------------------------

    async def add_report(
        self, guild_id: int | None, job_id: int, reporter_id: int, reported_id: int, now: float
    ) -> Report | None:
        """Record a report; ``None`` (nothing written) when this member already reported this job.

        One statement, so two clicks on the shared connection cannot both insert. (A unique index on
        ``(job_id, reporter_id)`` is the lasting guarantee, for any backend.)"""
        row = await self._db.fetchone(
            "INSERT INTO reports (guild_id, job_id, reporter_id, reported_id, created_at) "
            "SELECT :g, :j, :r, :u, :now WHERE NOT EXISTS "
            "(SELECT 1 FROM reports WHERE job_id = :j AND reporter_id = :r) "
            f"RETURNING {_REPORT_COLUMNS}",
            {"g": guild_id, "j": job_id, "r": reporter_id, "u": reported_id, "now": now},
        )
        return None if row is None else Report(*row)

    async def resolve_reports(self, job_id: int, resolution: str, now: float) -> int:
        return await self._db.execute(
            "UPDATE reports SET resolved_at = ?, resolution = ? WHERE job_id = ? AND resolved_at IS NULL",
            (now, resolution, job_id),
        )

    async def reports_for_job(self, job_id: int) -> list[Report]:
        rows = await self._db.fetchall(
            f"SELECT {_REPORT_COLUMNS} FROM reports WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [Report(*row) for row in rows]

    # --- purge ----------------------------------------------------------------------------------------

    async def result_messages(self, guild_id: int, user_id: int) -> list[PostedResult]:
        """Every message carrying ``user_id``'s results in ``guild_id`` (results rows and the jobs' own
        result message, which survives ``/history-clear``)."""
        rows = await self._db.fetchall(
            """
            SELECT channel_id, message_id, job_id FROM results
             WHERE guild_id = :g AND user_id = :u AND message_id IS NOT NULL AND channel_id IS NOT NULL
            UNION
            SELECT channel_id, result_message_id, id FROM jobs
             WHERE guild_id = :g AND user_id = :u AND result_message_id IS NOT NULL
               AND channel_id IS NOT NULL
            ORDER BY 2
            """,
            {"g": guild_id, "u": user_id},
        )
        merged: dict[tuple[int, int], set[int]] = {}
        for channel_id, message_id, job_id in rows:
            merged.setdefault((channel_id, message_id), set()).add(job_id)
        return [PostedResult(c, m, tuple(sorted(j))) for (c, m), j in merged.items()]
