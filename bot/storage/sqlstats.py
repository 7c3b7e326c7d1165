"""Opt-in counts of SQL statements and transactions per process, for the benchmark; off by default.

With ``PALETTE_LOOP_MONITOR=1`` (the benchmark's switch, see :mod:`bot.loopmonitor`) every engine made by
:func:`bot.storage.engine.create_engine` counts the statements it sends (by their first words, so a
report says *which* statements a job costs) and the transactions it begins (read-only or writing) and
commits. The loop monitor writes the counts with its report. Nothing is counted when it is off.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

from sqlalchemy import event

COUNTS: Counter[str] = Counter()
_SPACE = re.compile(r"\s+")
_KEY_CHARS = 72


def enabled() -> bool:
    return os.environ.get("PALETTE_LOOP_MONITOR", "").strip().lower() in ("1", "true", "yes")


_ON = enabled()


def count(key: str, n: int = 1) -> None:
    """Count something that does not go through an engine (e.g. the SQLite wake-up poll)."""
    if _ON:
        COUNTS[key] += n


_KEYS: dict[str, str] = {}


def _key(statement: str) -> str:
    key = _KEYS.get(statement)
    if key is None:
        key = _KEYS[statement] = "sql: " + _SPACE.sub(" ", statement).strip()[:_KEY_CHARS]
    return key


def instrument(engine: Any, read_only_option: str) -> None:
    """Count ``engine``'s statements and transactions into :data:`COUNTS`."""
    sync = engine.sync_engine

    @event.listens_for(sync, "before_cursor_execute")
    def _statement(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, many: bool) -> None:
        COUNTS["statements"] += 1
        COUNTS[_key(statement)] += 1

    @event.listens_for(sync, "begin")
    def _begin(conn: Any) -> None:
        read = bool(conn.get_execution_options().get(read_only_option))
        COUNTS["transactions (read)" if read else "transactions (write)"] += 1

    @event.listens_for(sync, "commit")
    def _commit(_conn: Any) -> None:
        COUNTS["commits"] += 1


def snapshot() -> dict[str, int]:
    return dict(COUNTS)
