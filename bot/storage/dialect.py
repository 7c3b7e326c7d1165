"""What differs between SQLite and PostgreSQL, each piece in one place.

* The ledger's guards (:data:`LEDGER_TRIGGERS`): the database itself writes the ``reserve`` entry when a
  job is inserted and the ``commit``/``refund`` entries when it reaches a final status, refuses to change
  a finished job's status, and refuses any UPDATE/DELETE of ledger rows. SQLite triggers on one side,
  PL/pgSQL trigger functions on the other; the same names on both.
* Quota atomicity (:func:`lock_quota`): SQLite's ``BEGIN IMMEDIATE`` already serializes every writer of
  the file; PostgreSQL takes transaction-scoped advisory locks per user (and per guild when a pool limit
  applies), so two processes cannot both pass the check before either inserts.
* Migration exclusivity (:func:`lock_migrations`), upserts (:func:`insert`), sequences after a bulk copy
  (:func:`advance_sequences`) and switching the job triggers off for a verbatim copy
  (:func:`job_triggers_disabled`).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, TextClause, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.storage import sqlstats

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

_FINAL = "('done', 'failed', 'cancelled')"
_UNFINISHED = "('queued', 'running')"


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    table: str
    sqlite: str
    # PostgreSQL: the trigger function (CREATE OR REPLACE FUNCTION ...) and the trigger itself.
    pg_function: str
    pg_trigger: str


def _pg_raise(function: str, message: str) -> str:
    # integrity_constraint_violation (23000): SQLAlchemy raises IntegrityError, as for SQLite's RAISE(ABORT).
    return f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'integrity_constraint_violation';
END
$$"""


LEDGER_TRIGGERS: tuple[Trigger, ...] = (
    Trigger(
        "ledger_no_update",
        "ledger",
        """
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END""",
        _pg_raise("palette_ledger_append_only", "ledger is append-only"),
        "CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger "
        "FOR EACH ROW EXECUTE FUNCTION palette_ledger_append_only()",
    ),
    Trigger(
        "ledger_no_delete",
        "ledger",
        """
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END""",
        _pg_raise("palette_ledger_append_only", "ledger is append-only"),
        "CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger "
        "FOR EACH ROW EXECUTE FUNCTION palette_ledger_append_only()",
    ),
    Trigger(
        # SQLite has no TRUNCATE (DELETE without WHERE fires ledger_no_delete); PostgreSQL's bypasses row
        # triggers, so it gets its own statement trigger.
        "ledger_no_truncate",
        "ledger",
        "",
        _pg_raise("palette_ledger_append_only", "ledger is append-only"),
        "CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger "
        "FOR EACH STATEMENT EXECUTE FUNCTION palette_ledger_append_only()",
    ),
    Trigger(
        "jobs_ledger_reserve",
        "jobs",
        """
CREATE TRIGGER jobs_ledger_reserve AFTER INSERT ON jobs
BEGIN
    INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at)
    VALUES (NEW.id, NEW.user_id, NEW.guild_id, 'reserve', NEW.reserved, NEW.created_at);
END""",
        """
CREATE OR REPLACE FUNCTION palette_jobs_ledger_reserve() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at)
    VALUES (NEW.id, NEW.user_id, NEW.guild_id, 'reserve', NEW.reserved, NEW.created_at);
    RETURN NULL;
END
$$""",
        "CREATE TRIGGER jobs_ledger_reserve AFTER INSERT ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION palette_jobs_ledger_reserve()",
    ),
    Trigger(
        "jobs_final_status",
        "jobs",
        f"""
CREATE TRIGGER jobs_final_status BEFORE UPDATE OF status ON jobs
WHEN OLD.status IN {_FINAL} AND NEW.status IS NOT OLD.status
BEGIN
    SELECT RAISE(ABORT, 'a finished job cannot change status');
END""",
        _pg_raise("palette_jobs_final_status", "a finished job cannot change status"),
        "CREATE TRIGGER jobs_final_status BEFORE UPDATE OF status ON jobs FOR EACH ROW "
        f"WHEN (OLD.status IN {_FINAL} AND NEW.status IS DISTINCT FROM OLD.status) "
        "EXECUTE FUNCTION palette_jobs_final_status()",
    ),
    Trigger(
        "jobs_ledger_settle",
        "jobs",
        f"""
CREATE TRIGGER jobs_ledger_settle AFTER UPDATE OF status ON jobs
WHEN OLD.status IN {_UNFINISHED} AND NEW.status IN {_FINAL}
BEGIN
    INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at)
    VALUES (NEW.id, NEW.user_id, NEW.guild_id, 'commit', NEW.committed,
            COALESCE(NEW.finished_at, (julianday('now') - 2440587.5) * 86400.0));
    INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at)
    SELECT NEW.id, NEW.user_id, NEW.guild_id, 'refund', NEW.refunded,
           COALESCE(NEW.finished_at, (julianday('now') - 2440587.5) * 86400.0)
    WHERE NEW.refunded > 0;
END""",
        """
CREATE OR REPLACE FUNCTION palette_jobs_ledger_settle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at double precision := COALESCE(NEW.finished_at, extract(epoch FROM clock_timestamp()));
BEGIN
    INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at)
    VALUES (NEW.id, NEW.user_id, NEW.guild_id, 'commit', NEW.committed, at);
    IF NEW.refunded > 0 THEN
        INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at)
        VALUES (NEW.id, NEW.user_id, NEW.guild_id, 'refund', NEW.refunded, at);
    END IF;
    RETURN NULL;
END
$$""",
        "CREATE TRIGGER jobs_ledger_settle AFTER UPDATE OF status ON jobs FOR EACH ROW "
        f"WHEN (OLD.status IN {_UNFINISHED} AND NEW.status IN {_FINAL}) "
        "EXECUTE FUNCTION palette_jobs_ledger_settle()",
    ),
)

#: The triggers that write ledger entries when jobs change (off while a copy inserts jobs verbatim).
JOB_LEDGER_TRIGGERS = ("jobs_ledger_reserve", "jobs_ledger_settle")


def _trigger(name: str) -> Trigger:
    return next(t for t in LEDGER_TRIGGERS if t.name == name)


def create_trigger_statements(dialect_name: str, names: Sequence[str] | None = None) -> list[str]:
    """DDL creating the ledger guards (all, or the ones named) on this dialect."""
    chosen = [t for t in LEDGER_TRIGGERS if names is None or t.name in names]
    if dialect_name == SQLITE:
        return [t.sqlite.strip() for t in chosen if t.sqlite]
    if dialect_name == POSTGRESQL:
        statements: list[str] = []
        for t in chosen:
            statements += [t.pg_function.strip(), t.pg_trigger]
        return statements
    raise ValueError(f"unsupported database {dialect_name!r}")


def drop_trigger_statement(dialect_name: str, name: str) -> str:
    """DDL dropping one ledger guard (tests use it to play a broken database)."""
    if dialect_name == SQLITE:
        return f"DROP TRIGGER IF EXISTS {name}"
    return f"DROP TRIGGER IF EXISTS {name} ON {_trigger(name).table}"


@contextlib.asynccontextmanager
async def job_triggers_disabled(conn: AsyncConnection) -> AsyncIterator[None]:
    """Inside the caller's transaction: jobs can be inserted with their final numbers without the
    database adding ledger entries (the copied ledger already has them). Restored before the
    transaction ends; a rollback restores them too (DDL is transactional on both databases)."""
    name = conn.dialect.name
    if name == SQLITE:
        for trigger in JOB_LEDGER_TRIGGERS:
            await conn.exec_driver_sql(drop_trigger_statement(name, trigger))
        yield
        for statement in create_trigger_statements(name, JOB_LEDGER_TRIGGERS):
            await conn.exec_driver_sql(statement)
        return
    for trigger in JOB_LEDGER_TRIGGERS:
        await conn.exec_driver_sql(f"ALTER TABLE jobs DISABLE TRIGGER {trigger}")
    yield
    for trigger in JOB_LEDGER_TRIGGERS:
        await conn.exec_driver_sql(f"ALTER TABLE jobs ENABLE TRIGGER {trigger}")


# --- locks ----------------------------------------------------------------------------------------------


def advisory_key(kind: str, value: int | str) -> int:
    """A signed 64-bit advisory-lock key for ``(kind, value)``; distinct kinds never share keys by
    design (a hash collision only makes two unrelated transactions wait for each other)."""
    digest = hashlib.blake2b(f"palette:{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_LOCK2 = text("SELECT pg_advisory_xact_lock(:a), pg_advisory_xact_lock(:b)")


async def lock_quota(conn: AsyncConnection, user_id: int, guild_id: int | None) -> None:
    """Inside the reservation's transaction, before the quota check: make the check and the insert one
    step for this user (and this guild's pool when ``guild_id`` is given) across every process.

    SQLite: nothing to do, ``BEGIN IMMEDIATE`` holds the file's only write lock. PostgreSQL: advisory
    locks released at commit/rollback, always user first, then guild (one order: no deadlock)."""
    if conn.dialect.name != POSTGRESQL:
        return
    if guild_id is None:
        await conn.execute(_LOCK, {"key": advisory_key("user", user_id)})
    else:
        await conn.execute(_LOCK2, {"a": advisory_key("user", user_id), "b": advisory_key("guild", guild_id)})


def lock_migrations(sync_conn: Any) -> None:
    """Inside the migration's transaction: one process migrates, the others wait and then find nothing
    to do. SQLite's ``BEGIN IMMEDIATE`` already does this."""
    if sync_conn.dialect.name == POSTGRESQL:
        sync_conn.execute(_LOCK, {"key": advisory_key("migrations", 0)})


# --- statements -------------------------------------------------------------------------------------------


async def fetch(conn: AsyncConnection, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
    """The rows of a SQL text statement, for the reservation's hot path.

    SQLite: straight through aiosqlite (one trip to its thread; SQLAlchemy's cursor layer makes four),
    on the caller's connection and inside its transaction; the values come back as SQLite has them,
    which for the integer, real and text columns the callers read is what SQLAlchemy would return.
    PostgreSQL: an ordinary execute."""
    if conn.dialect.name == SQLITE:
        sqlstats.count("statements")
        sqlstats.count("sql: " + statement.text[:40])
        raw = await conn.get_raw_connection()
        try:
            return list(await raw.driver_connection.execute_fetchall(statement.text, params))  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            # The same exception classes as every other statement (IntegrityError, OperationalError...).
            raise DBAPIError.instance(statement.text, None, exc, sqlite3.Error, hide_parameters=True) from exc
    return list((await conn.execute(statement, params)).all())


def insert(dialect_name: str, table: Table) -> Any:
    """INSERT with ``on_conflict_do_update`` / ``on_conflict_do_nothing`` for this dialect (the two
    dialects spell the upsert the same way; SQLAlchemy has one construct for each)."""
    if dialect_name == POSTGRESQL:
        return postgresql.insert(table)
    return sqlite.insert(table)


async def advance_sequences(conn: AsyncConnection, tables: Sequence[Table]) -> None:
    """After rows were inserted with their ids: the next generated id follows the largest one.

    PostgreSQL sequences do not notice explicit ids; SQLite's AUTOINCREMENT (``sqlite_sequence``) and
    rowids do, so there is nothing to do there."""
    if conn.dialect.name != POSTGRESQL:
        return
    for table in tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or pk[0].autoincrement is False or not _is_integer(pk[0]):
            continue
        column = pk[0].name
        await conn.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column}'), "
            f"COALESCE((SELECT MAX({column}) FROM {table.name}), 1), "
            f"(SELECT MAX({column}) FROM {table.name}) IS NOT NULL) "
            f"WHERE pg_get_serial_sequence('{table.name}', '{column}') IS NOT NULL"
        )


def _is_integer(column: Any) -> bool:
    try:
        return column.type.python_type is int
    except NotImplementedError:
        return False
