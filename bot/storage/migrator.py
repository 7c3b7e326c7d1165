"""Bring a database to the newest schema with Alembic, from :meth:`bot.storage.db.Database.open`.

* The migrations live in the package (``bot/storage/alembic/``); no ``alembic.ini`` is read.
* One transaction for the whole upgrade, under a lock: SQLite's ``BEGIN IMMEDIATE`` (on a connection that
  waits up to :data:`MIGRATION_BUSY_TIMEOUT_MS` for it), PostgreSQL an advisory lock. Two processes
  starting at once: one migrates, the other waits and then finds nothing to do. A failing migration
  leaves the database as it was.
* A SQLite database made by the hand-written migrations of earlier versions (``schema_migrations`` with
  versions 1-3, no ``alembic_version``) has exactly the schema of revision ``0001``: it is stamped with it,
  then upgraded in place; nothing is copied or lost.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from bot.storage.dialect import lock_migrations
from bot.storage.engine import create_engine, sqlite_path

log = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).with_name("alembic")
#: The revision whose schema equals the hand-written migrations 001-003.
LEGACY_REVISION = "0001"
LEGACY_VERSIONS = {1, 2, 3}
MIGRATION_BUSY_TIMEOUT_MS = 10 * 60 * 1000


class LegacySchemaError(RuntimeError):
    """A database from the hand-written migrations, but not at their last version."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    return config


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(sync_conn: Any) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


def _upgrade(sync_conn: Any) -> tuple[str | None, str]:
    """Inside the caller's transaction: lock, stamp a legacy database, upgrade. Returns (before, after)."""
    lock_migrations(sync_conn)
    before = current_revision(sync_conn)
    config = alembic_config()
    config.attributes["connection"] = sync_conn
    if before is None:
        tables = set(inspect(sync_conn).get_table_names())
        if "schema_migrations" in tables:
            versions = {int(r[0]) for r in sync_conn.exec_driver_sql("SELECT version FROM schema_migrations")}
            if versions != LEGACY_VERSIONS:
                raise LegacySchemaError(
                    f"this database was made by an older Palette with migrations {sorted(versions)}; "
                    f"expected {sorted(LEGACY_VERSIONS)}: open it once with that version to finish them"
                )
            log.info("database from the hand-written migrations 1-3: stamping revision %s", LEGACY_REVISION)
            command.stamp(config, LEGACY_REVISION)
            before = LEGACY_REVISION
    if before != head_revision():
        command.upgrade(config, "head")
    return before, head_revision()


async def upgrade_database(engine: AsyncEngine) -> tuple[str | None, str]:
    """Migrate the database of ``engine`` to the newest revision; returns (revision before, revision now).

    A SQLite file is migrated through a connection of its own that waits up to
    :data:`MIGRATION_BUSY_TIMEOUT_MS` for another process's migration (the bot's connections give up after
    a few seconds); an in-memory database only exists on ``engine``'s one connection."""
    own: AsyncEngine | None = None
    if engine.dialect.name == "sqlite" and sqlite_path(engine.url) is not None:
        own = create_engine(engine.url, poolclass=NullPool, busy_timeout_ms=MIGRATION_BUSY_TIMEOUT_MS)
    try:
        async with (own or engine).connect() as conn:
            # Autobegin: BEGIN IMMEDIATE on SQLite (waits for another migrating process), BEGIN on PostgreSQL.
            revisions = await conn.run_sync(_upgrade)
            await conn.commit()
    finally:
        if own is not None:
            await own.dispose()
    if revisions[0] != revisions[1]:
        log.info("database migrated from revision %s to %s", revisions[0] or "(empty)", revisions[1])
    return revisions
