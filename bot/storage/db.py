"""The database: a SQLAlchemy async engine (SQLite or PostgreSQL) and the repositories on top of it.

Concurrency model
-----------------
* Reads run on a pooled connection of their own, outside any transaction (one statement is atomic by
  itself), so they never wait for a writer: SQLite in WAL mode, PostgreSQL's MVCC. They see committed
  data only. :meth:`Database.snapshot` gives several reads one consistent view.
* Writes run in :meth:`Database.transaction`. On SQLite every transaction begins with ``BEGIN IMMEDIATE``
  (the file's write lock, taken up front: another process waits for it up to ``busy_timeout``); the
  writers of this process queue on an :class:`asyncio.Lock` first, so they wait for each other without
  polling SQLite's busy handler, and take turns on one kept connection. PostgreSQL transactions run
  side by side; what must not interleave (quota check + insert) takes an advisory lock
  (:mod:`bot.storage.dialect`).
* Inside ``async with db.transaction():`` every statement the same task runs through this database (the
  repositories included) goes to that transaction; nested use opens a SAVEPOINT. Do not
  ``asyncio.gather`` storage calls from inside a transaction: the child tasks are not part of it (on SQLite
  they would wait for the lock their parent holds).
* An in-memory SQLite database is one connection: every statement takes the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Executable, Row, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.storage.dialect import POSTGRESQL, SQLITE
from bot.storage.engine import (
    AUTOCOMMIT_READ,
    READ_ONLY,
    create_engine,
    database_url_for,
    parse_database_url,
    safe_url,
    sqlite_path,
    write_lock,
)
from bot.storage.groups import SqlGroupRepository
from bot.storage.history import SqlHistoryRepository
from bot.storage.jobs import SqlJobRepository
from bot.storage.kv import SqlKeyValueRepository
from bot.storage.migrator import current_revision, upgrade_database
from bot.storage.moderation import SqlModerationRepository
from bot.storage.repository import (
    HistoryRepository,
    JobRepository,
    KeyValueRepository,
    ModerationRepository,
)
from bot.storage.styles import SqlStyleRepository
from bot.storage.tenants import SqlTenantRepository
from bot.storage.usage import SqlUsageRepository
from bot.storage.web import SqlWebRepository

log = logging.getLogger(__name__)

# RETURNING (3.35) is used by the repositories.
MIN_SQLITE_VERSION = (3, 35, 0)
#: Default cap on the reference bytes stored with one job (``MAX_JOB_REFERENCE_BYTES``).
DEFAULT_MAX_JOB_REFERENCE_BYTES = 64 * 1024 * 1024

Statement = str | Executable
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


class BackupNotSupported(RuntimeError):
    """``backup`` writes a SQLite file; a PostgreSQL server is backed up with its own tools."""


@dataclass(slots=True)
class _Held:
    task: asyncio.Task[Any] | None
    conn: AsyncConnection
    depth: int = 0


def _statement(statement: Statement) -> Executable:
    return text(statement) if isinstance(statement, str) else statement


class Database(SqlJobRepository):
    """The engine, the repositories (``db.jobs``, ``db.history``, ``db.kv``, ``db.moderation``) and a few
    helpers. Together with :meth:`close` and :meth:`backup` that is the
    :class:`~bot.storage.repository.Storage` protocol. For convenience the job operations are also methods
    of the database itself (``db.get_job`` is ``db.jobs.get_job``).

    ``db.engine`` is the SQLAlchemy :class:`AsyncEngine` (for the queue); ``db.url`` the URL as it may be
    shown (no password); ``db.dialect`` ``"sqlite"`` or ``"postgresql"``; ``db.path`` the SQLite file
    (``None`` for PostgreSQL and ``:memory:``).

    Open with :func:`open_database` (or :meth:`Database.open`); close with :meth:`close` or ``async with``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        url: URL,
        *,
        max_job_reference_bytes: int = DEFAULT_MAX_JOB_REFERENCE_BYTES,
    ) -> None:
        self.engine = engine
        self.url = safe_url(url.set(drivername=url.get_backend_name()))
        self.dialect: str = engine.dialect.name
        self.path: Path | None = sqlite_path(url)
        self.max_job_reference_bytes = max_job_reference_bytes
        self._memory = self.dialect == SQLITE and self.path is None
        # SQLite: this process's writers queue here before BEGIN IMMEDIATE.
        self._write_lock = write_lock(engine)  # shared with the queue's writers (bot.storage.engine)
        self._writer: AsyncConnection | None = None
        self._held: contextvars.ContextVar[_Held | None] = contextvars.ContextVar(
            f"palette_db_{id(self)}", default=None
        )
        if self.dialect == SQLITE:
            self._reader = engine.execution_options(**{AUTOCOMMIT_READ: True})
            self._snapshot_reader = engine.execution_options(**{READ_ONLY: True})
        else:
            self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
            self._snapshot_reader = engine.execution_options(isolation_level="REPEATABLE READ")
        self._closed = False
        super().__init__(self)  # the inherited job operations run their statements through this object
        self.jobs: JobRepository = SqlJobRepository(self)
        self.history: HistoryRepository = SqlHistoryRepository(self)
        self.kv: KeyValueRepository = SqlKeyValueRepository(self)
        self.moderation: ModerationRepository = SqlModerationRepository(self)
        # Servers' own provider keys (encrypted) and the monthly usage report (issue 12).
        self.tenants = SqlTenantRepository(self)
        self.usage = SqlUsageRepository(self)
        #: The web gallery's sessions, logins and gallery queries (bot.web).
        self.web = SqlWebRepository(self)
        self.styles = SqlStyleRepository(self)
        self.groups = SqlGroupRepository(self)

    # --- lifecycle ---------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url_or_path: str | Path,
        *,
        max_job_reference_bytes: int = DEFAULT_MAX_JOB_REFERENCE_BYTES,
    ) -> Database:
        """Open the database at ``url_or_path`` (a ``DATABASE_URL``; a plain path is a SQLite file, its
        directory created if needed) and migrate it to the newest schema."""
        url = parse_database_url(database_url_for(url_or_path))
        if url.get_backend_name() == SQLITE and sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old; Palette needs "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer"
            )
        engine = create_engine(url)
        try:
            await upgrade_database(engine)
            db = cls(engine, url, max_job_reference_bytes=max_job_reference_bytes)
            await db.jobs.sweep_reference_blobs(time.time())  # type: ignore[attr-defined]
        except BaseException:
            await engine.dispose()
            raise
        return db

    async def close(self) -> None:
        """Wait for the running transaction (SQLite), then close every connection. Closing twice is
        harmless."""
        if self._closed:
            return
        if self._owned() is not None:
            raise RuntimeError("cannot close the database from inside one of its transactions")
        async with self._write_lock:
            if self._closed:
                return
            self._closed = True
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    await self._writer.close()
                self._writer = None
            if self.dialect == SQLITE:
                with contextlib.suppress(Exception):
                    async with self._reader.connect() as conn:
                        await conn.exec_driver_sql("PRAGMA optimize")
            await self.engine.dispose()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == SQLITE

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == POSTGRESQL

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    # --- connections and transactions ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the database is closed")

    def _owned(self) -> _Held | None:
        held = self._held.get()
        if held is not None and held.task is asyncio.current_task():
            return held
        return None

    @property
    def in_transaction(self) -> bool:
        """True when the calling task is inside :meth:`transaction`."""
        return self._owned() is not None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """``async with db.transaction() as conn:`` — one write transaction (``BEGIN IMMEDIATE`` on SQLite,
        serialized with this process's other writers). Any exception (cancellation included) rolls it back.
        Nested use in the same task opens a SAVEPOINT, which an exception rolls back on its own."""
        held = self._owned()
        if held is not None:
            held.depth += 1
            try:
                async with held.conn.begin_nested():
                    yield held.conn
            finally:
                held.depth -= 1
            return
        self._check_open()
        if self.dialect != SQLITE:
            async with self.engine.connect() as conn:
                token = self._held.set(_Held(asyncio.current_task(), conn))
                try:
                    async with conn.begin():
                        yield conn
                finally:
                    self._held.reset(token)
            return
        async with self._write_lock:
            self._check_open()
            conn = await self._writer_connection()
            token = self._held.set(_Held(asyncio.current_task(), conn))
            try:
                async with conn.begin():
                    yield conn
            finally:
                self._held.reset(token)

    async def _writer_connection(self) -> AsyncConnection:
        """SQLite: the one connection this process writes through (writers take turns on the lock anyway;
        keeping it saves a pool checkout and reset per transaction). Replaced if it broke."""
        conn = self._writer
        if conn is not None and (conn.closed or conn.invalidated):
            with contextlib.suppress(Exception):
                await conn.close()
            conn = None
        if conn is None:
            conn = self._writer = await self.engine.connect()
        return conn

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """Several reads that see one consistent state (a read transaction; never waits for writers)."""
        held = self._owned()
        if held is not None:
            yield held.conn
            return
        self._check_open()
        lock = self._write_lock if self._memory else contextlib.nullcontext()
        async with lock, self._snapshot_reader.connect() as conn:
            token = self._held.set(_Held(asyncio.current_task(), conn))
            try:
                async with conn.begin():
                    yield conn
            finally:
                self._held.reset(token)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one read statement (the caller's transaction, when there is one)."""
        held = self._owned()
        if held is not None:
            yield held.conn
            return
        self._check_open()
        if self._memory:
            async with self._write_lock, self._reader.connect() as conn:
                yield conn
            return
        async with self._reader.connect() as conn:
            yield conn

    # --- statement helpers (the repositories use them; tests too) -------------------------------------------

    async def fetchall(self, statement: Statement, params: Params = None) -> list[Row[Any]]:
        """Rows of one read statement (SQL text takes ``:named`` parameters)."""
        async with self.reading() as conn:
            return list((await conn.execute(_statement(statement), params)).all())

    async def fetchone(self, statement: Statement, params: Params = None) -> Row[Any] | None:
        rows = await self.fetchall(statement, params)
        return rows[0] if rows else None

    async def fetchval(self, statement: Statement, params: Params = None) -> Any:
        row = await self.fetchone(statement, params)
        return None if row is None else row[0]

    async def execute(self, statement: Statement, params: Params = None) -> int:
        """Run one writing statement in a transaction (the caller's, if any); the rows it changed."""
        async with self.transaction() as conn:
            return (await conn.execute(_statement(statement), params)).rowcount

    async def write_returning(self, statement: Statement, params: Params = None) -> list[Row[Any]]:
        """Run one writing statement with RETURNING in a transaction (the caller's, if any)."""
        async with self.transaction() as conn:
            return list((await conn.execute(_statement(statement), params)).all())

    async def executemany(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> int:
        if not rows:
            return 0
        async with self.transaction() as conn:
            return (await conn.execute(_statement(statement), list(rows))).rowcount

    async def pragma(self, name: str) -> Any:
        """The value of ``PRAGMA name`` (SQLite; for checks and tests)."""
        if self.dialect != SQLITE:
            raise RuntimeError("PRAGMA is SQLite's")
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad pragma name {name!r}")
        return await self.fetchval(f"PRAGMA {name}")

    async def schema_version(self) -> str | None:
        """The Alembic revision the database is at."""
        async with self.reading() as conn:
            return await conn.run_sync(current_revision)

    # --- backup --------------------------------------------------------------------------------------------

    async def backup(self, path: Path | str) -> Path:
        """Write a consistent copy of a SQLite database to ``path`` with SQLite's online backup API.

        The copy is written next to ``path`` and renamed into place, so ``path`` is never half-written; it
        is a self-contained rollback-journal database (no ``-wal`` file needed). Writers of this process
        wait while the copy runs; readers do not. On PostgreSQL use ``pg_dump`` (or ``copy-db``)."""
        if self.dialect != SQLITE:
            raise BackupNotSupported(
                f"backup writes a SQLite file; {self.url} is a PostgreSQL database: back it up with "
                "pg_dump (e.g. `pg_dump --format=custom --file=palette.dump DBNAME`), or copy it into a "
                "SQLite file with `python -m bot copy-db --to sqlite:///PATH`"
            )
        self._check_open()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        dest = await asyncio.to_thread(sqlite3.connect, str(tmp), check_same_thread=False)
        try:
            async with self._write_lock, self.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                await raw.driver_connection.backup(dest)  # type: ignore[union-attr]
            await asyncio.to_thread(_finish_backup_file, dest)
        except BaseException:
            dest.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        dest.close()
        os.replace(tmp, target)
        return target


def _finish_backup_file(dest: sqlite3.Connection) -> None:
    dest.execute("PRAGMA journal_mode = DELETE")
    result = dest.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise sqlite3.DatabaseError(f"backup failed its integrity check: {result}")


async def open_database(
    url_or_path: str | Path,
    *,
    max_job_reference_bytes: int = DEFAULT_MAX_JOB_REFERENCE_BYTES,
) -> Database:
    """Open the database at ``url_or_path`` (``Settings.database_url``; a plain path is a SQLite file),
    applying pending migrations."""
    return await Database.open(url_or_path, max_job_reference_bytes=max_job_reference_bytes)
