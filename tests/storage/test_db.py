"""Database plumbing: migrations, pragmas, transactions, locking, backup, kv."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from bot.storage import (
    Database,
    HistoryRepository,
    JobRepository,
    KeyValueRepository,
    Limits,
    Storage,
    open_database,
)
from bot.storage.migrate import Migration, apply_migrations, discover_migrations

from .factories import NOW, new_job, reference

# --- migrations ---------------------------------------------------------------------------------------------


def test_discover_migrations_finds_the_initial_schema_in_order() -> None:
    migrations = discover_migrations()
    assert migrations[0].version == 1
    assert migrations[0].name == "initial"
    assert "CREATE TABLE jobs" in migrations[0].sql
    versions = [m.version for m in migrations]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


async def test_migrations_apply_once_and_reopen_is_idempotent(db_path: Path) -> None:
    db = await open_database(db_path)
    assert await asyncio.to_thread(db_path.is_file)
    rows = await db.fetchall("SELECT version, name, applied_at FROM schema_migrations")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in discover_migrations()]
    first_applied_at = rows[0]["applied_at"]
    await db.kv.set("survives", "reopen")
    await db.close()

    db = await open_database(db_path)
    try:
        rows = await db.fetchall("SELECT version, applied_at FROM schema_migrations")
        assert len(rows) == len(discover_migrations())
        assert rows[0]["applied_at"] == first_applied_at
        assert await db.kv.get("survives") == "reopen"
        assert await db.schema_version() == discover_migrations()[-1].version
    finally:
        await db.close()


async def test_apply_migrations_skips_applied_and_applies_new_ones(db_path: Path, db: Database) -> None:
    conn = await aiosqlite.connect(db_path, isolation_level=None)
    try:
        assert await apply_migrations(conn) == []
        extra = [*discover_migrations(), Migration(900, "extra", "CREATE TABLE extra (x INTEGER);")]
        assert await apply_migrations(conn, extra) == [900]
        assert await apply_migrations(conn, extra) == []
    finally:
        await conn.close()
    assert await db.schema_version() == 900


async def test_failing_migration_leaves_no_trace(db_path: Path, db: Database) -> None:
    bad = Migration(901, "bad", "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);")
    conn = await aiosqlite.connect(db_path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            await apply_migrations(conn, [*discover_migrations(), bad])
        assert not conn.in_transaction
    finally:
        await conn.close()
    assert await db.fetchval("SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'") == 0
    assert await db.fetchval("SELECT COUNT(*) FROM schema_migrations WHERE version = 901") == 0


# --- connection settings ------------------------------------------------------------------------------------


async def test_pragmas_are_set(db: Database) -> None:
    assert await db.pragma("journal_mode") == "wal"
    assert await db.pragma("busy_timeout") == 5000
    assert await db.pragma("foreign_keys") == 1
    assert await db.pragma("synchronous") == 1  # NORMAL


async def test_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "palette.db"
    db = await open_database(path)
    await db.close()
    assert path.is_file()


async def test_close_is_idempotent_and_later_use_fails(db_path: Path) -> None:
    db = await open_database(db_path)
    await db.close()
    await db.close()
    assert db.closed
    with pytest.raises(RuntimeError, match="closed"):
        await db.kv.get("x")


async def test_database_satisfies_the_protocols(db: Database) -> None:
    assert isinstance(db.jobs, JobRepository)
    assert isinstance(db.history, HistoryRepository)
    assert isinstance(db.kv, KeyValueRepository)
    assert isinstance(db, Storage)
    # The job operations are also shortcuts on the database itself.
    assert isinstance(db, JobRepository)
    job = await db.reserve_job(new_job(), Limits(), NOW)
    assert await db.get_job(job.id) == await db.jobs.get_job(job.id) == job


# --- transactions -------------------------------------------------------------------------------------------


async def test_exception_in_transaction_rolls_back(db: Database) -> None:
    with pytest.raises(ZeroDivisionError):
        async with db.transaction():
            await db.kv.set("a", "1")
            assert db.in_transaction
            _ = 1 / 0
    assert not db.in_transaction
    assert await db.kv.get("a") is None
    # The connection is usable afterwards.
    async with db.transaction():
        await db.kv.set("a", "2")
    assert await db.kv.get("a") == "2"


async def test_nested_transaction_is_a_savepoint(db: Database) -> None:
    async with db.transaction():
        await db.kv.set("outer", "1")
        with pytest.raises(KeyError):
            async with db.transaction():
                await db.kv.set("inner", "1")
                raise KeyError("inner fails")
        async with db.transaction():
            await db.kv.set("inner2", "1")
    assert await db.kv.get("outer") == "1"
    assert await db.kv.get("inner") is None
    assert await db.kv.get("inner2") == "1"


@pytest.mark.parametrize("commit", [True, False])
async def test_other_tasks_never_see_uncommitted_rows(db: Database, commit: bool) -> None:
    """A read from another coroutine waits for the transaction; it never sees rows that are rolled back."""
    entered = asyncio.Event()
    release = asyncio.Event()

    async def writer() -> None:
        async with db.transaction():
            await db.kv.set("k", "v")
            entered.set()
            await release.wait()
            if not commit:
                raise RuntimeError("abort")

    task = asyncio.create_task(writer())
    await entered.wait()
    reader = asyncio.create_task(db.kv.get("k"))
    await asyncio.sleep(0.05)
    assert not reader.done(), "a read ran inside another task's transaction"
    release.set()
    if commit:
        await task
    else:
        with pytest.raises(RuntimeError):
            await task
    assert await reader == ("v" if commit else None)


async def test_cancelled_transaction_rolls_back(db: Database) -> None:
    entered = asyncio.Event()

    async def writer() -> None:
        async with db.transaction():
            await db.kv.set("k", "v")
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(writer())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await db.kv.get("k") is None
    async with db.transaction():  # no transaction left open
        await db.kv.set("k", "after")
    assert await db.kv.get("k") == "after"


async def test_other_connection_waits_for_write_lock(db_path: Path, db: Database) -> None:
    """BEGIN IMMEDIATE holds SQLite's write lock; another connection with a busy timeout waits for it."""
    other = sqlite3.connect(db_path, timeout=5, isolation_level=None, check_same_thread=False)
    try:
        async with db.transaction():
            await db.kv.set("first", "1")
            blocked = asyncio.create_task(
                asyncio.to_thread(other.execute, "INSERT INTO kv VALUES ('second', '2', 0)")
            )
            await asyncio.sleep(0.1)
            assert not blocked.done()
        await blocked
        assert await db.kv.get("second") == "2"
    finally:
        other.close()


# --- backup -------------------------------------------------------------------------------------------------


async def test_backup_is_a_consistent_readable_copy(tmp_path: Path, db: Database) -> None:
    jobs = [
        await db.jobs.reserve_job(
            new_job(user_id=i, references=(reference(bytes([i]) * 1000),)), Limits(), NOW
        )
        for i in range(20)
    ]
    for job in jobs[:10]:
        await db.jobs.finish_job(job.id, 1, now=NOW + 1)
    await db.kv.set("k", "v")

    # Backup while more reservations are being written: the copy must still balance.
    target = tmp_path / "backups" / "copy.db"
    more = [db.jobs.reserve_job(new_job(user_id=1000 + i), Limits(), NOW) for i in range(50)]
    results = await asyncio.gather(db.backup(target), *more)
    assert results[0] == target

    copy = sqlite3.connect(target)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        copied_jobs = copy.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        assert 20 <= copied_jobs <= 70
        assert (
            copy.execute("SELECT COUNT(*) FROM ledger WHERE entry = 'reserve'").fetchone()[0] == copied_jobs
        )
        assert copy.execute("SELECT value FROM kv WHERE key = 'k'").fetchone()[0] == "v"
        assert copy.execute("SELECT COUNT(*) FROM job_references").fetchone()[0] == 20
    finally:
        copy.close()
    assert not list(target.parent.glob("*.tmp"))

    # Once writes are done, a second backup has exactly the source's rows, and opens as a Database.
    await db.backup(target)
    restored = await open_database(target)
    try:
        for table in ("jobs", "job_references", "ledger", "results", "kv", "schema_migrations"):
            query = f"SELECT * FROM {table} ORDER BY 1, 2"
            assert [tuple(r) for r in await restored.fetchall(query)] == [
                tuple(r) for r in await db.fetchall(query)
            ], table
        assert (await restored.jobs.ledger_balance()).balanced
    finally:
        await restored.close()
    # The source is still open and writable.
    await db.kv.set("after-backup", "1")
    assert await db.kv.get("after-backup") == "1"


# --- kv -----------------------------------------------------------------------------------------------------


async def test_kv_get_set_overwrite_delete(db: Database) -> None:
    assert await db.kv.get("missing") is None
    await db.kv.set("guild:1:model", "nano-banana")
    assert await db.kv.get("guild:1:model") == "nano-banana"
    await db.kv.set("guild:1:model", "gpt-image-2")
    assert await db.kv.get("guild:1:model") == "gpt-image-2"
    assert await db.fetchval("SELECT COUNT(*) FROM kv") == 1
    assert await db.kv.delete("guild:1:model") is True
    assert await db.kv.delete("guild:1:model") is False
    assert await db.kv.get("guild:1:model") is None
