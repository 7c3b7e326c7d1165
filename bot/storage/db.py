"""The SQLite database: one aiosqlite connection shared by the whole bot.

Concurrency model
-----------------
aiosqlite runs every statement on one worker thread, in submission order. Statements from different
coroutines would interleave, so an open transaction of one coroutine would swallow another's writes (and
expose its uncommitted rows to another's reads). :class:`Database` therefore serializes access with an
:class:`asyncio.Lock`:

* :meth:`Database.transaction` holds the lock from ``BEGIN IMMEDIATE`` to ``COMMIT``/``ROLLBACK``. Inside
  it, the owning task runs statements directly; nesting in the same task uses a SAVEPOINT.
* :meth:`Database.exclusive` holds the lock without a transaction (check, then maybe open one).
* The single-statement helpers (:meth:`fetchall`, :meth:`execute`...) take the lock for that one
  statement unless the calling task already holds it.

Do not ``asyncio.gather`` storage calls from *inside* a transaction: the child tasks would wait for the
lock their parent holds.

``BEGIN IMMEDIATE`` takes SQLite's write lock up front, so other processes (a CLI, a backup script) wait up
to ``busy_timeout`` instead of failing half-way; WAL lets them read meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from bot.storage.history import SqliteHistoryRepository
from bot.storage.jobs import SqliteJobRepository
from bot.storage.kv import SqliteKeyValueRepository
from bot.storage.migrate import apply_migrations
from bot.storage.moderation import SqliteModerationRepository
from bot.storage.repository import (
    HistoryRepository,
    JobRepository,
    KeyValueRepository,
    ModerationRepository,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
# RETURNING (3.35) is used by the repositories.
MIN_SQLITE_VERSION = (3, 35, 0)

Params = Sequence[Any] | dict[str, Any]


class Database(SqliteJobRepository):
    """One SQLite connection with WAL, a write lock and migrations, and the repositories on top of it.

    Callers use ``db.jobs`` (:class:`~bot.storage.repository.JobRepository`), ``db.history``
    (:class:`~bot.storage.repository.HistoryRepository`) and ``db.kv``
    (:class:`~bot.storage.repository.KeyValueRepository`); together with :meth:`close` and :meth:`backup`
    that is the :class:`~bot.storage.repository.Storage` protocol. For convenience the job operations are
    also methods of the database itself (``db.get_job`` is ``db.jobs.get_job``).

    Open with :func:`open_database` (or :meth:`Database.open`); close with :meth:`close` or ``async with``.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path | str) -> None:
        self._conn = conn
        self.path = path if path == ":memory:" else Path(path)
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0
        self._closed = False
        super().__init__(self)  # the inherited job operations run their statements through this object
        self.jobs: JobRepository = SqliteJobRepository(self)
        self.history: HistoryRepository = SqliteHistoryRepository(self)
        self.kv: KeyValueRepository = SqliteKeyValueRepository(self)
        self.moderation: ModerationRepository = SqliteModerationRepository(self)

    # --- lifecycle ---------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path | str) -> Database:
        """Open (creating file and parent directory if needed), configure and migrate the database."""
        if str(path) != ":memory:":
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old; Palette needs "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer"
            )
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            # busy_timeout first, so switching to WAL waits for other connections instead of failing.
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            mode = next(iter(await conn.execute_fetchall("PRAGMA journal_mode = WAL")))[0]
            if mode != "wal" and str(path) != ":memory:":
                log.warning("SQLite refused WAL mode for %s (journal_mode=%s)", path, mode)
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA temp_store = MEMORY")
            applied = await apply_migrations(conn)
            if applied:
                log.info("database %s migrated to version %d", path, applied[-1])
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path)

    async def close(self) -> None:
        """Wait for the running transaction, then close the connection. Closing twice is harmless."""
        if self._closed:
            return
        if self._owns_connection():
            raise RuntimeError("cannot close the database from inside one of its transactions")
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                await self._conn.execute("PRAGMA optimize")
            await self._conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- transactions --------------------------------------------------------------------------------------

    def _owns_connection(self) -> bool:
        return self._owner is not None and self._owner is asyncio.current_task()

    @property
    def in_transaction(self) -> bool:
        """True when the calling task is inside :meth:`transaction`."""
        return self._owns_connection() and self._depth > 0

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[Database]:
        """Hold the connection for several statements without opening a transaction: no other coroutine
        of this process runs a statement meanwhile, and reads see committed data only. Reentrant within
        a task; :meth:`transaction` can be opened inside."""
        if self._owns_connection():
            yield self
            return
        async with self._lock:
            self._check_open()
            self._owner = asyncio.current_task()
            try:
                yield self
            finally:
                self._owner = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        """``async with db.transaction():`` — one ``BEGIN IMMEDIATE`` transaction, serialized with every
        other writer of this process. Any exception (including cancellation) rolls it back. Nested use in
        the same task opens a SAVEPOINT, which an exception rolls back on its own."""
        async with self.exclusive():
            if self._depth > 0:
                async with self._savepoint():
                    yield self
                return
            self._depth = 1
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                yield self
                await self._conn.execute("COMMIT")
            except BaseException:
                await self._rollback_quietly()
                raise
            finally:
                self._depth = 0

    @contextlib.asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        self._depth += 1
        name = f"sp{self._depth}"
        try:
            await self._conn.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                await self._conn.execute(f"ROLLBACK TO {name}")
                await self._conn.execute(f"RELEASE {name}")
                raise
            await self._conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    async def _rollback_quietly(self) -> None:
        # Awaiting aiosqlite's execute() queues the statement before the first suspension point, and the
        # worker thread runs statements in order: this ROLLBACK lands after anything already sent and before
        # the next lock holder's BEGIN, even if we are cancelled while waiting for it. "No transaction is
        # active" (BEGIN or COMMIT failed) is fine.
        try:
            await self._conn.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass
        except Exception:  # pragma: no cover - logged, the original error matters more
            log.exception("rollback failed")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the database is closed")

    @contextlib.asynccontextmanager
    async def _statement(self) -> AsyncIterator[None]:
        """Exclusive use of the connection for one statement (no-op if this task already holds it)."""
        if self._owns_connection():
            yield
            return
        async with self._lock:
            self._check_open()
            yield

    # --- statement helpers (used by the repositories; SQL stays in this package) ---------------------------

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self._statement():
            return list(await self._conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        async with self._statement():
            cursor = await self._conn.execute(sql, params)
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        async with self._statement():
            cursor = await self._conn.executemany(sql, rows)
            return cursor.rowcount

    async def pragma(self, name: str) -> Any:
        """The value of ``PRAGMA name`` (for checks and tests)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad pragma name {name!r}")
        return await self.fetchval(f"PRAGMA {name}")

    async def schema_version(self) -> int:
        """Highest applied migration version (0 for an empty database)."""
        return int(await self.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    # --- backup --------------------------------------------------------------------------------------------

    async def backup(self, path: Path | str) -> Path:
        """Write a consistent copy of the database to ``path`` with SQLite's online backup API.

        The copy is written next to ``path`` and renamed into place, so ``path`` is never half-written; it
        is a self-contained rollback-journal database (no ``-wal`` file needed). Writers of this process
        wait while the copy runs; readers in other processes do not.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        dest = await asyncio.to_thread(sqlite3.connect, str(tmp), check_same_thread=False)
        try:
            async with self._statement():
                await self._conn.backup(dest)
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


async def open_database(path: Path | str) -> Database:
    """Open the database at ``path`` (e.g. ``Settings.database_path``), applying pending migrations."""
    return await Database.open(path)
