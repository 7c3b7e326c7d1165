"""Numbered SQL migrations (``migrations/NNN_name.sql``), applied in order, each in its own transaction.

Applied versions are recorded in ``schema_migrations``; reopening a database applies only what is new.
A migration file is plain SQLite SQL (triggers and all); it must not contain BEGIN/COMMIT itself.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources

import aiosqlite

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "bot.storage.migrations"
_FILENAME = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def discover_migrations(package: str = MIGRATIONS_PACKAGE) -> list[Migration]:
    """Every ``NNN_name.sql`` in ``package``, sorted by version; duplicate versions are an error."""
    found: dict[int, Migration] = {}
    for entry in resources.files(package).iterdir():
        match = _FILENAME.match(entry.name)
        if not match or not entry.is_file():
            continue
        version, name = int(match.group(1)), match.group(2)
        if version in found:
            raise RuntimeError(f"two migrations share version {version}: {found[version].name} and {name}")
        found[version] = Migration(version, name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def applied_versions(conn: aiosqlite.Connection) -> set[int]:
    rows = await conn.execute_fetchall("SELECT version FROM schema_migrations")
    return {int(row[0]) for row in rows}


async def apply_migrations(
    conn: aiosqlite.Connection, migrations: list[Migration] | None = None
) -> list[int]:
    """Apply the migrations not yet recorded; returns the versions applied now.

    ``conn`` must be in autocommit mode (``isolation_level=None``) and not inside a transaction. Each
    migration and its ``schema_migrations`` row go in one ``BEGIN IMMEDIATE`` transaction, so a failing
    migration leaves no trace and a concurrent opener cannot apply the same one twice.
    """
    if migrations is None:
        migrations = discover_migrations()
    await conn.execute(_CREATE_VERSION_TABLE)
    done = await applied_versions(conn)
    unknown = done - {m.version for m in migrations}
    if unknown:
        log.warning("database has migrations this code does not know: %s", sorted(unknown))
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        # executescript() commits any open transaction first, so BEGIN/COMMIT live inside the script.
        script = (
            "BEGIN IMMEDIATE;\n"
            f"{migration.sql}\n;\n"
            "INSERT INTO schema_migrations (version, name, applied_at) "
            f"VALUES ({migration.version:d}, '{migration.name}', {time.time()!r});\n"
            "COMMIT;\n"
        )
        try:
            await conn.executescript(script)
        except sqlite3.Error:
            # OperationalError: the failure happened before BEGIN took effect; nothing to roll back.
            with contextlib.suppress(sqlite3.OperationalError):
                await conn.execute("ROLLBACK")
            # Another process may have applied it between our read and our BEGIN.
            if migration.version in await applied_versions(conn):
                continue
            log.exception("migration %03d_%s failed", migration.version, migration.name)
            raise
        log.info("applied migration %03d_%s", migration.version, migration.name)
        applied.append(migration.version)
    return applied
