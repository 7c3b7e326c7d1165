"""SQLite statements in one trip to aiosqlite's thread instead of four.

aiosqlite runs each ``sqlite3`` connection on a thread of its own and hands it one call at a time
through a queue; each call's answer wakes the event loop through its self-pipe. SQLAlchemy's aiosqlite
adapter makes four such calls per statement (open a cursor, execute, fetch the rows, close the cursor).
Under load, those hand-offs were the single busiest line of a worker's loop (aiosqlite's
``SimpleQueue.put_nowait``, 15 % of its samples in a ``deploy_1k`` profile, see the README's fifth pass).

:class:`OneTripCursor` runs the four steps as one function on that thread and keeps what SQLAlchemy
reads afterwards (rows, description, rowcount, lastrowid). Everything else (transactions, the execute
mutex, error mapping, server-side cursors) is SQLAlchemy's own.

This leans on two private names, as SQLAlchemy's adapter itself does (it uses ``Connection._tx`` and
``Connection._conn``): ``aiosqlite.Connection._execute`` and ``_conn``. :func:`dbapi` checks that they
and the adapter's hooks are there and returns None otherwise, so the engine falls back to the stock
adapter (four trips, same results); ``tests/storage/test_sqlite_driver.py`` fails if the fast path is
not in use with the installed versions.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
from typing import Any

log = logging.getLogger(__name__)

try:  # SQLAlchemy 2.1 layout; anything else falls back to the stock adapter (see dbapi()).
    import aiosqlite
    from sqlalchemy.dialects.sqlite.aiosqlite import (
        AsyncAdapt_aiosqlite_connection,
        AsyncAdapt_aiosqlite_cursor,
        AsyncAdapt_aiosqlite_dbapi,
    )
except ImportError:  # pragma: no cover - depends on the installed versions
    AsyncAdapt_aiosqlite_cursor = None  # type: ignore[assignment,misc]


def _run(
    raw: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> tuple[Any, list[Any], int, int | None]:
    """On aiosqlite's thread: the whole statement, rows included."""
    cursor = raw.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


if AsyncAdapt_aiosqlite_cursor is not None:

    class OneTripCursor(AsyncAdapt_aiosqlite_cursor):  # type: ignore[misc,valid-type]
        """A buffered cursor whose statement is one call on aiosqlite's thread (see the module)."""

        __slots__ = ("_description", "_lastrowid", "_rowcount")
        _awaitable_cursor_close = False  # nothing stays open on the thread after a statement

        def __init__(self, adapt_connection: Any) -> None:
            # No driver cursor to open: the statement opens and closes its own on the thread.
            self._adapt_connection = adapt_connection
            self._connection = adapt_connection._connection
            self._cursor = None
            self._soft_closed_memoized = {}
            self._rows = collections.deque()
            self._description: Any = None
            self._rowcount = -1
            self._lastrowid: int | None = None

        @property
        def description(self) -> Any:
            return self._description

        @property
        def rowcount(self) -> int:
            return self._rowcount

        @property
        def lastrowid(self) -> Any:
            return self._lastrowid

        @property
        def arraysize(self) -> int:
            return 1

        @arraysize.setter
        def arraysize(self, value: int) -> None:
            pass  # rows are fetched all at once

        async def _execute_async(self, operation: Any, parameters: Any) -> Any:
            return await self._one_trip(operation, parameters, many=False)

        async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
            return await self._one_trip(operation, seq_of_parameters, many=True)

        async def _one_trip(self, operation: Any, parameters: Any, *, many: bool) -> None:
            async with self._adapt_connection._execute_mutex:
                driver = self._connection
                description, rows, rowcount, lastrowid = await driver._execute(
                    _run, driver._conn, operation, parameters, many
                )
            self._description, self._rowcount, self._lastrowid = description, rowcount, lastrowid
            self._rows = collections.deque(rows)

        def close(self) -> None:
            self._rows.clear()

        def nextset(self) -> None:
            self._rows.clear()  # one statement, one result set

    class OneTripConnection(AsyncAdapt_aiosqlite_connection):  # type: ignore[misc,valid-type]
        __slots__ = ()
        _cursor_cls = OneTripCursor

    class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):  # type: ignore[misc,valid-type]
        """The adapter module SQLAlchemy's aiosqlite dialect uses, with :class:`OneTripCursor`."""

        def connect(self, *arg: Any, **kw: Any) -> Any:
            stock = super().connect(*arg, **kw)
            return OneTripConnection(self, stock._connection)


def dbapi() -> Any | None:
    """The adapter module to hand ``create_async_engine(module=...)`` for SQLite, or None when the
    installed aiosqlite or SQLAlchemy do not look as this module expects (the stock adapter is used)."""
    if AsyncAdapt_aiosqlite_cursor is None:
        return None
    needed = (
        hasattr(aiosqlite.Connection, "_execute"),
        getattr(AsyncAdapt_aiosqlite_connection, "_cursor_cls", None) is AsyncAdapt_aiosqlite_cursor,
        hasattr(AsyncAdapt_aiosqlite_cursor, "_execute_async"),
    )
    if not all(needed):
        log.debug("stock aiosqlite adapter in use (unexpected aiosqlite/SQLAlchemy layout: %s)", needed)
        return None
    return OneTripDBAPI(aiosqlite, sqlite3)
