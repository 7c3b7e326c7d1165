"""Database URLs and engines: SQLite (aiosqlite) by default, PostgreSQL (asyncpg) for several machines.

``DATABASE_URL`` takes ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite:///:memory:``,
``postgresql://user:password@host:port/dbname`` or ``postgres://...``; the async driver is chosen here.
:func:`safe_url` is the only form of a URL that may reach a log line or an error (no password).

SQLite transactions start with ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two writers
wait for each other through ``busy_timeout`` instead of failing half-way); a connection opened with the
``palette_read_only`` execution option begins a deferred transaction instead, so plain reads never wait
for a writer (WAL); ``palette_autocommit_read`` begins none at all (a single read statement is atomic on
its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, util
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from bot.storage import sqlite_driver, sqlstats

# Awaits inside SQLAlchemy's sync layer (its greenlet); renamed in SQLAlchemy 2.1.
_await: Any = getattr(util, "await_", None) or util.await_only

BUSY_TIMEOUT_MS = 5000
READ_ONLY = "palette_read_only"
# A read of one statement needs no transaction: skip BEGIN (SQLite), each statement is atomic on its own.
AUTOCOMMIT_READ = "palette_autocommit_read"


class DatabaseUrlError(ValueError):
    """DATABASE_URL is not a SQLite or PostgreSQL URL (the message never quotes a password)."""


def database_url_for(value: str | Path) -> str:
    """A ``DATABASE_URL`` for ``value``: a URL stays as it is; a plain path (or ``:memory:``) means a
    SQLite file."""
    text = str(value).strip()
    if isinstance(value, Path) or "://" not in text:
        return f"sqlite:///{text}"
    return text


def parse_database_url(url: str) -> URL:
    """The SQLAlchemy URL (with the async driver) for a ``DATABASE_URL`` value."""
    text = url.strip()
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://") :]
    try:
        parsed = make_url(text)
    except Exception as exc:
        raise DatabaseUrlError(
            "DATABASE_URL must look like sqlite:///data/palette.db or postgresql://user@host:5432/db"
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    raise DatabaseUrlError(f"DATABASE_URL: unsupported database {backend!r} (use sqlite or postgresql)")


def safe_url(url: str | URL) -> str:
    """The URL as it may be shown: password masked."""
    parsed = url if isinstance(url, URL) else parse_database_url(url)
    return parsed.render_as_string(hide_password=True)


def is_sqlite(url: str | URL) -> bool:
    parsed = url if isinstance(url, URL) else parse_database_url(url)
    return parsed.get_backend_name() == "sqlite"


def sqlite_path(url: str | URL) -> Path | None:
    """The database file of a SQLite URL (None for PostgreSQL and for ``:memory:``)."""
    parsed = url if isinstance(url, URL) else parse_database_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def create_engine(url: str | URL, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, **options: Any) -> AsyncEngine:
    """An async engine for ``url`` with Palette's connection settings (see the module docstring).

    Statement parameters (interaction tokens among them) never appear in SQLAlchemy's log lines or in the
    text of its exceptions (``hide_parameters``)."""
    parsed = url if isinstance(url, URL) else parse_database_url(url)
    options.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed, busy_timeout_ms=busy_timeout_ms, **options)
    else:
        options.setdefault("pool_size", 10)
        options.setdefault("max_overflow", 10)
        options.setdefault("pool_pre_ping", True)
        # The password must not end up in tracebacks: SQLAlchemy renders URLs with it hidden already.
        engine = create_async_engine(parsed, **options)
    if sqlstats.enabled():
        sqlstats.instrument(engine, READ_ONLY)
    return engine


def _journal_mode(cursor: Any) -> str:
    cursor.execute("PRAGMA journal_mode")
    row = cursor.fetchone()
    return str(row[0]).lower() if row else ""


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (it stays so: the mode is kept in the file). Switching takes the file's
    exclusive lock and SQLite does not wait for it through busy_timeout, so a process opening a new file
    while another one, which has just switched it, migrates gets "database is locked": then the mode it
    wanted is already there."""
    if _journal_mode(cursor) == "wal":
        return
    try:
        cursor.execute("PRAGMA journal_mode = WAL")
    except Exception:
        if _journal_mode(cursor) != "wal":
            raise


def _sqlite_engine(parsed: URL, *, busy_timeout_ms: int, **options: Any) -> AsyncEngine:
    path = sqlite_path(parsed)
    if path is None:
        # One shared connection, or every connection would see its own empty database.
        options.setdefault("poolclass", StaticPool)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    # Connections come back rolled back already (AsyncConnection.close() ends what is open); a second
    # ROLLBACK on return would be one more trip to aiosqlite's thread for every read.
    options.setdefault("pool_reset_on_return", None)
    connect_args = options.pop("connect_args", {})
    connect_args.setdefault("timeout", busy_timeout_ms / 1000)
    one_trip = sqlite_driver.dbapi()  # one trip to aiosqlite's thread per statement (see the module)
    if one_trip is not None:
        options.setdefault("module", one_trip)
    engine = create_async_engine(parsed, connect_args=connect_args, **options)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms:d}")
            if path is not None:
                _use_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA temp_store = MEMORY")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get(AUTOCOMMIT_READ):
            return
        # Straight to aiosqlite: one trip to its thread (a statement through the cursor layer takes four).
        driver = conn.connection.driver_connection
        _await(driver.execute("BEGIN" if options.get(READ_ONLY) else "BEGIN IMMEDIATE"))

    return engine


# SQLite has one writer per file. The write transactions of one process take turns on this lock (one per
# engine) before ``BEGIN IMMEDIATE``, so they wait for each other in order instead of in SQLite's busy
# handler, which sleeps up to 100 ms between tries and lets a waiter starve (the queue, the provider
# health and the repositories of :class:`bot.storage.db.Database` all share it).
_write_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def write_lock(engine: AsyncEngine) -> asyncio.Lock:
    """This process's write lock for ``engine``'s database (see above; created on first use)."""
    key = engine.sync_engine
    lock = _write_locks.get(key)
    if lock is None:
        lock = _write_locks[key] = asyncio.Lock()
    return lock


@contextlib.asynccontextmanager
async def begin_write(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """``engine.begin()`` for a write transaction; on SQLite after this process's other writers."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    async with write_lock(engine), engine.begin() as conn:
        yield conn
