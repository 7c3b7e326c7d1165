"""What the web gallery and dashboard read and write (:mod:`bot.web`), for SQLite and PostgreSQL.

Browser sessions and OAuth2 logins under way live here, not in a process's memory, so any number of web
processes can serve the same users. Gallery queries read ``results`` joined with ``jobs``: a result whose
job was cleared (``/history-clear``), deleted by its owner or removed by a moderator has no ``results`` row
any more and never shows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, insert, or_, select, update

from bot.storage import schema

if TYPE_CHECKING:
    from bot.storage.db import Database

_jobs = schema.jobs
_results = schema.results
_sessions = schema.web_sessions
_states = schema.oauth_states
_gallery = schema.gallery_settings
_reports = schema.reports
_blocked = schema.blocked_attempts

#: How a job's params (JSON) say "posted in a non-NSFW channel" (``bot.jobs.service.JobService`` writes
#: ``json.dumps``' default separators, :func:`bot.storage.records` compact ones). A job without it (older
#: rows, DMs) never reaches a server gallery: unknown counts as NSFW.
SFW_PARAMS = ('"nsfw_channel": false', '"nsfw_channel":false')

MAX_SEARCH_WORDS = 8


@dataclass(frozen=True, slots=True)
class WebSession:
    id: str
    user_id: int
    username: str
    access_token: str | None
    guilds: list[dict[str, Any]]
    guilds_at: float
    csrf: str
    created_at: float
    expires_at: float
    #: The user's Discord locale (``en-US``, ``de`` ...), when Discord said.
    locale: str | None = None


@dataclass(frozen=True, slots=True)
class GalleryImage:
    """One delivered image with what the gallery shows of its job."""

    result_id: int
    job_id: int
    user_id: int
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    filename: str
    width: int | None
    height: int | None
    created_at: float
    kind: str
    model: str
    prompt: str
    params: str
    parent_job_id: int | None

    @property
    def params_dict(self) -> dict[str, Any]:
        try:
            value = json.loads(self.params or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def sfw(self) -> bool:
        return self.params_dict.get("nsfw_channel") is False


@dataclass(frozen=True, slots=True)
class OpenReport:
    job_id: int
    reported_id: int
    reporters: int
    first_at: float
    prompt: str
    model: str
    result_id: int | None


@dataclass(frozen=True, slots=True)
class BlockedAttempt:
    id: int
    user_id: int
    channel_id: int | None
    prompt: str
    matched: str
    created_at: float


_IMAGE_COLUMNS = (
    _results.c.id,
    _results.c.job_id,
    _results.c.user_id,
    _results.c.guild_id,
    _results.c.channel_id,
    _results.c.message_id,
    _results.c.filename,
    _results.c.width,
    _results.c.height,
    _results.c.created_at,
    _jobs.c.kind,
    _jobs.c.model,
    _jobs.c.prompt,
    _jobs.c.params,
    _jobs.c.parent_job_id,
)


def _images() -> Any:
    return select(*_IMAGE_COLUMNS).select_from(_results.join(_jobs, _jobs.c.id == _results.c.job_id))


def search_words(query: str | None) -> list[str]:
    """The words of a search box, lower-cased, at most :data:`MAX_SEARCH_WORDS`."""
    return [w for w in (query or "").lower().split() if w][:MAX_SEARCH_WORDS]


class SqlWebRepository:
    """Sessions, OAuth states, galleries and dashboard lists on a :class:`~bot.storage.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------------ OAuth2 states

    async def add_state(self, state_hash: str, verifier: str, next_path: str, expires_at: float) -> None:
        await self._db.execute(
            insert(_states).values(
                id=state_hash, verifier=verifier, next_path=next_path, expires_at=expires_at
            )
        )

    async def take_state(self, state_hash: str, now: float) -> tuple[str, str] | None:
        """``(verifier, next_path)`` of a login under way, removed on the way (a state works once)."""
        rows = await self._db.write_returning(
            delete(_states)
            .where(_states.c.id == state_hash)
            .returning(_states.c.verifier, _states.c.next_path, _states.c.expires_at)
        )
        if not rows or rows[0][2] < now:
            return None
        return str(rows[0][0]), str(rows[0][1])

    # ------------------------------------------------------------------ sessions

    async def create_session(self, session: WebSession) -> None:
        await self._db.execute(
            insert(_sessions).values(
                id=session.id,
                user_id=session.user_id,
                username=session.username,
                access_token=session.access_token,
                guilds=json.dumps(session.guilds),
                guilds_at=session.guilds_at,
                csrf=session.csrf,
                created_at=session.created_at,
                expires_at=session.expires_at,
                locale=session.locale,
            )
        )

    async def get_session(self, session_id: str, now: float) -> WebSession | None:
        row = await self._db.fetchone(
            select(*_sessions.c).where(_sessions.c.id == session_id, _sessions.c.expires_at > now)
        )
        if row is None:
            return None
        try:
            guilds = json.loads(row.guilds)
        except ValueError:
            guilds = []
        return WebSession(
            row.id, int(row.user_id), row.username, row.access_token,
            guilds if isinstance(guilds, list) else [],
            float(row.guilds_at), row.csrf, float(row.created_at), float(row.expires_at), row.locale,
        )  # fmt: skip

    async def update_guilds(self, session_id: str, guilds: list[dict[str, Any]], now: float) -> None:
        await self._db.execute(
            update(_sessions)
            .where(_sessions.c.id == session_id)
            .values(guilds=json.dumps(guilds), guilds_at=now)
        )

    async def delete_session(self, session_id: str) -> bool:
        return bool(await self._db.execute(delete(_sessions).where(_sessions.c.id == session_id)))

    async def sweep(self, now: float) -> int:
        """Drop expired sessions and logins."""
        async with self._db.transaction() as conn:
            gone = (await conn.execute(delete(_sessions).where(_sessions.c.expires_at <= now))).rowcount
            gone += (await conn.execute(delete(_states).where(_states.c.expires_at <= now))).rowcount
        return int(gone)

    # ------------------------------------------------------------------ gallery switch

    async def gallery_enabled(self, guild_id: int) -> bool:
        value = await self._db.fetchval(select(_gallery.c.enabled).where(_gallery.c.guild_id == guild_id))
        return bool(value)

    async def enabled_galleries(self, guild_ids: Sequence[int]) -> set[int]:
        """Which of ``guild_ids`` have their gallery on (one statement, in chunks)."""
        found: set[int] = set()
        ids = list(guild_ids)
        for start in range(0, len(ids), 500):
            rows = await self._db.fetchall(
                select(_gallery.c.guild_id).where(
                    _gallery.c.guild_id.in_(ids[start : start + 500]), _gallery.c.enabled.is_(True)
                )
            )
            found.update(int(r[0]) for r in rows)
        return found

    async def set_gallery(self, guild_id: int, enabled: bool, actor_id: int | None, now: float) -> bool:
        """Turn the server's gallery on or off; returns what it was before."""
        async with self._db.transaction() as conn:
            before = await conn.scalar(select(_gallery.c.enabled).where(_gallery.c.guild_id == guild_id))
            if before is None:
                await conn.execute(
                    insert(_gallery).values(
                        guild_id=guild_id, enabled=enabled, updated_by=actor_id, updated_at=now
                    )
                )
            else:
                await conn.execute(
                    update(_gallery)
                    .where(_gallery.c.guild_id == guild_id)
                    .values(enabled=enabled, updated_by=actor_id, updated_at=now)
                )
        return bool(before)

    # ------------------------------------------------------------------ galleries

    def _filtered(
        self,
        stmt: Any,
        *,
        words: Sequence[str] = (),
        model: str | None = None,
        guild_id: int | None = None,
    ) -> Any:
        stmt = stmt.where(_jobs.c.purged_at.is_(None))
        for word in words:
            stmt = stmt.where(func.lower(_jobs.c.prompt).contains(word, autoescape=True))
        if model:
            stmt = stmt.where(_jobs.c.model == model)
        if guild_id is not None:
            stmt = stmt.where(_results.c.guild_id == guild_id)
        return stmt

    async def user_images(
        self,
        user_id: int,
        *,
        words: Sequence[str] = (),
        model: str | None = None,
        guild_id: int | None = None,
        limit: int = 24,
        offset: int = 0,
    ) -> tuple[list[GalleryImage], int]:
        """A page of the user's own images, newest first, and how many match in all."""
        where = _results.c.user_id == user_id
        return await self._page(
            where, words=words, model=model, guild_id=guild_id, limit=limit, offset=offset
        )

    async def guild_images(
        self,
        guild_id: int,
        *,
        words: Sequence[str] = (),
        model: str | None = None,
        limit: int = 24,
        offset: int = 0,
    ) -> tuple[list[GalleryImage], int]:
        """A page of a server's gallery: results posted in its non-NSFW channels, newest first."""
        sfw = or_(*(_jobs.c.params.contains(p, autoescape=True) for p in SFW_PARAMS))
        where = and_(_results.c.guild_id == guild_id, sfw)
        return await self._page(where, words=words, model=model, limit=limit, offset=offset)

    async def _page(
        self, where: Any, *, limit: int, offset: int, **filters: Any
    ) -> tuple[list[GalleryImage], int]:
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset cannot be negative")
        stmt = self._filtered(_images().where(where), **filters)
        rows = await self._db.fetchall(
            stmt.order_by(_results.c.created_at.desc(), _results.c.id.desc()).limit(limit).offset(offset)
        )
        count_stmt = self._filtered(
            select(func.count())
            .select_from(_results.join(_jobs, _jobs.c.id == _results.c.job_id))
            .where(where),
            **filters,
        )
        total = int(await self._db.fetchval(count_stmt) or 0)
        return [GalleryImage(*row) for row in rows], total

    async def user_models_and_guilds(self, user_id: int) -> tuple[list[str], list[int]]:
        """The models and servers the user's images came from (for the filters)."""
        rows = await self._db.fetchall(
            select(_jobs.c.model, _results.c.guild_id)
            .select_from(_results.join(_jobs, _jobs.c.id == _results.c.job_id))
            .where(_results.c.user_id == user_id, _jobs.c.purged_at.is_(None))
            .distinct()
        )
        models = sorted({r[0] for r in rows})
        guilds = sorted({int(r[1]) for r in rows if r[1] is not None})
        return models, guilds

    async def image(self, result_id: int) -> GalleryImage | None:
        row = await self._db.fetchone(self._filtered(_images().where(_results.c.id == result_id)))
        return GalleryImage(*row) if row is not None else None

    async def job_images(self, job_id: int) -> list[GalleryImage]:
        rows = await self._db.fetchall(
            self._filtered(_images().where(_results.c.job_id == job_id)).order_by(_results.c.id)
        )
        return [GalleryImage(*row) for row in rows]

    async def parent_chain(self, job_id: int, depth: int = 10) -> list[tuple[int, str, str, int | None]]:
        """``(job_id, kind, model, first result id)`` of the job's parents (re-roll, edit, upscale), nearest
        first; stops at a cleared or missing job."""
        chain: list[tuple[int, str, str, int | None]] = []
        current: int | None = job_id
        seen = {job_id}
        for _ in range(depth):
            row = await self._db.fetchone(select(_jobs.c.parent_job_id).where(_jobs.c.id == current))
            parent = row[0] if row is not None else None
            if parent is None or parent in seen:
                break
            seen.add(parent)
            info = await self._db.fetchone(
                select(
                    _jobs.c.id, _jobs.c.kind, _jobs.c.model, _jobs.c.purged_at,
                    select(func.min(_results.c.id)).where(_results.c.job_id == _jobs.c.id).scalar_subquery(),
                ).where(_jobs.c.id == parent)
            )  # fmt: skip
            if info is None or info[3] is not None:
                break
            chain.append((int(info[0]), info[1], info[2], info[4]))
            current = parent
        return chain

    async def forget_job(self, job_id: int, now: float) -> int:
        """Remove a job's results and content from Palette's records (its owner deleted it, or a
        moderator removed it): the results rows, references and prompt go; the numbers quota and ledger
        need stay. Returns how many results were removed."""
        async with self._db.transaction() as conn:
            removed = (await conn.execute(delete(_results).where(_results.c.job_id == job_id))).rowcount
            refs = schema.job_references
            await conn.execute(
                delete(schema.reference_blobs).where(
                    schema.reference_blobs.c.id.in_(
                        select(refs.c.blob_id).where(refs.c.job_id == job_id, refs.c.blob_id.is_not(None))
                    )
                )
            )
            await conn.execute(delete(refs).where(refs.c.job_id == job_id))
            await conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id, _jobs.c.status.not_in(("queued", "running")))
                .values(prompt="", params="{}", interaction_token=None, error=None, purged_at=now)
            )
        return int(removed)

    async def user_job_ids(self, user_id: int) -> list[int]:
        rows = await self._db.fetchall(
            select(_results.c.job_id).where(_results.c.user_id == user_id).distinct()
        )
        return [int(r[0]) for r in rows]

    # ------------------------------------------------------------------ dashboard

    async def open_reports(self, guild_id: int, limit: int = 50) -> list[OpenReport]:
        first_result = (
            select(func.min(_results.c.id)).where(_results.c.job_id == _reports.c.job_id).scalar_subquery()
        )
        rows = await self._db.fetchall(
            select(
                _reports.c.job_id,
                func.min(_reports.c.reported_id),
                func.count(),
                func.min(_reports.c.created_at),
                func.min(_jobs.c.prompt),
                func.min(_jobs.c.model),
                func.min(first_result),
            )
            .select_from(_reports.join(_jobs, _jobs.c.id == _reports.c.job_id))
            .where(_reports.c.guild_id == guild_id, _reports.c.resolved_at.is_(None))
            .group_by(_reports.c.job_id)
            .order_by(func.min(_reports.c.created_at))
            .limit(limit)
        )
        return [
            OpenReport(int(r[0]), int(r[1]), int(r[2]), float(r[3]), r[4] or "", r[5] or "",
                       int(r[6]) if r[6] is not None else None)
            for r in rows
        ]  # fmt: skip

    async def blocked_attempts(self, guild_id: int, limit: int = 50) -> list[BlockedAttempt]:
        rows = await self._db.fetchall(
            select(
                _blocked.c.id, _blocked.c.user_id, _blocked.c.channel_id, _blocked.c.prompt,
                _blocked.c.matched, _blocked.c.created_at,
            )
            .where(_blocked.c.guild_id == guild_id)
            .order_by(_blocked.c.created_at.desc(), _blocked.c.id.desc())
            .limit(limit)
        )  # fmt: skip
        return [BlockedAttempt(*row) for row in rows]

    async def report_job(self, guild_id: int, job_id: int) -> bool:
        """Whether ``job_id`` has a report in ``guild_id`` (moderators may see its image)."""
        value = await self._db.fetchval(
            select(func.count()).where(_reports.c.job_id == job_id, or_(_reports.c.guild_id == guild_id))
        )
        return bool(value)
