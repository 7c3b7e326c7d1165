"""Database plumbing: migrations (and upgrading a database made by earlier versions), pragmas,
transactions, locking, backup, kv."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.i18n import render
from bot.moderation import bans
from bot.storage import (
    BackupNotSupported,
    Ban,
    Database,
    HistoryRepository,
    JobRepository,
    KeyValueRepository,
    Limits,
    ModerationRepository,
    Storage,
    migrator,
    open_database,
)
from bot.storage.engine import create_engine, sqlite_path
from bot.storage.schema import metadata

from .factories import NOW, new_job, reference

LEGACY_SQL = sorted((Path(__file__).parent / "legacy").glob("*.sql"))

# --- migrations ---------------------------------------------------------------------------------------------


async def test_a_new_database_gets_every_table_and_reopening_changes_nothing(database_url: str) -> None:
    db = await open_database(database_url)
    assert await db.schema_version() == migrator.head_revision()
    async with db.reading() as conn:
        tables = set(await conn.run_sync(lambda c: __import__("sqlalchemy").inspect(c).get_table_names()))
    assert {t.name for t in metadata.sorted_tables} <= tables
    await db.kv.set("survives", "reopen")
    await db.close()

    db = await open_database(database_url)
    try:
        assert await db.fetchval("SELECT COUNT(*) FROM alembic_version") == 1
        assert await db.schema_version() == migrator.head_revision()
        assert await db.kv.get("survives") == "reopen"
    finally:
        await db.close()


async def test_the_migrations_create_exactly_the_schema_the_code_describes(db: Database) -> None:
    """schema.py (what the repositories use) and the Alembic revisions (what databases get) agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def differences(sync_conn: object) -> list[object]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})  # type: ignore[arg-type]
        return compare_metadata(context, metadata)

    async with db.reading() as conn:
        diff = await conn.run_sync(differences)
    assert diff == []


async def test_concurrent_openers_migrate_once(database_url: str) -> None:
    """Processes starting at once: one migrates, the others wait for it and find nothing to do."""
    opened = await asyncio.gather(*(open_database(database_url) for _ in range(4)))
    try:
        for db in opened:
            assert await db.schema_version() == migrator.head_revision()
        assert await opened[0].fetchval("SELECT COUNT(*) FROM alembic_version") == 1
        job = await opened[1].jobs.reserve_job(new_job(), Limits(), NOW)
        assert await opened[2].jobs.get_job(job.id) == job
    finally:
        for db in opened:
            await db.close()


async def test_a_failing_migration_leaves_no_trace(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_upgrade = migrator.command.upgrade

    def upgrade_then_fail(config: object, revision: str) -> None:
        real_upgrade(config, revision)  # type: ignore[arg-type]
        raise RuntimeError("power cut (simulated)")

    monkeypatch.setattr(migrator.command, "upgrade", upgrade_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        await open_database(database_url)
    monkeypatch.undo()
    db = await open_database(database_url)  # starts from scratch: nothing half-made is in the way
    try:
        assert await db.schema_version() == migrator.head_revision()
        assert (await db.jobs.ledger_balance()).balanced
    finally:
        await db.close()


def _make_legacy_database(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """A database exactly as the previous version of Palette left it: its migrations 001-003 (the .sql
    files it shipped) recorded in schema_migrations, and rows in every table (jobs settled by the
    triggers, references with bytes, results, moderation, a duplicate report). Returns every row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at REAL NOT NULL)"
        )
        for version, sql_file in enumerate(LEGACY_SQL, 1):
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql_file.read_text()}\n;\nINSERT INTO schema_migrations VALUES "
                f"({version}, '{sql_file.stem.split('_', 1)[1]}', {NOW - 1000 + version});\nCOMMIT;"
            )
        jobs = [
            # user, guild, kind, count, status afterwards, committed
            (1, 100, "imagine", 2, "done", 2),
            (1, 100, "edit", 4, "done", 3),
            (2, 100, "imagine", 1, "failed", 0),
            (3, None, "imagine", 1, "queued", 0),
            (2, 101, "upscale", 1, "running", 0),
        ]
        for i, (user, guild, kind, count, _, _) in enumerate(jobs):
            conn.execute(
                "INSERT INTO jobs (user_id, guild_id, channel_id, kind, model, prompt, params, count, "
                "reserved, interaction_token, created_at) "
                "VALUES (?, ?, 200, ?, 'nano-banana', ?, '{\"seed\":1}', ?, ?, 'tok', ?)",
                (user, guild, kind, f"prompt {i}", count, count, NOW + i),
            )
        for job_id, (_, _, _, count, status, committed) in enumerate(jobs, 1):
            if status in ("done", "failed"):
                conn.execute(
                    "UPDATE jobs SET status = ?, committed = ?, refunded = ?, finished_at = ?, "
                    "result_message_id = ? WHERE id = ?",
                    (status, committed, count - committed, NOW + 50, 7000 + job_id, job_id),
                )
            elif status == "running":
                conn.execute(
                    "UPDATE jobs SET status = 'running', provider = 'apimart', task_id = 't-5', "
                    "started_at = ? WHERE id = ?",
                    (NOW + 10, job_id),
                )
        conn.execute("INSERT INTO jobs (user_id, kind, model, count, reserved, created_at) "
                     "VALUES (9, 'imagine', 'm', 1, 1, ?)", (NOW,))  # fmt: skip
        conn.executemany(
            "INSERT INTO job_references VALUES (?, ?, ?, ?, ?, ?)",
            [(2, 0, "image/png", b"\x89PNG old bytes", None, 555),
             (2, 1, "image/jpeg", None, "https://x/y.jpg", None),
             (5, 0, "image/webp", b"RIFF webp", "https://x/z.webp", None)],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO results (job_id, user_id, guild_id, channel_id, message_id, attachment_id, "
            "filename, sha256, width, height, mime_type, size_bytes, provider, created_at) "
            "VALUES (?, 1, 100, 200, ?, ?, ?, ?, 1024, 1024, 'image/png', 1234, 'listenhub', ?)",
            [(1, 7001, 9001, "a.png", "a" * 64, NOW + 50), (1, 7001, 9002, "b.png", "b" * 64, NOW + 50),
             (2, 7002, 9003, "c.png", "c" * 64, NOW + 50)],
        )  # fmt: skip
        conn.execute("INSERT INTO kv VALUES ('commands_hash', 'abc123', ?)", (NOW,))
        conn.execute(
            "INSERT INTO guild_policy (guild_id, daily_limit, allowed_channels, allowed_models, nsfw_mode, "
            "builtin_blocklist, updated_at, denied_channels) VALUES (100, 7, '[1,2]', '[\"nano-banana\"]', "
            "'relaxed', 1, ?, '[3]')",
            (NOW,),
        )
        conn.execute("INSERT INTO role_limits VALUES (100, 555, 50, NULL, ?)", (NOW,))
        conn.execute("INSERT INTO blocklist (guild_id, kind, pattern, scope, added_by, created_at) "
                     "VALUES (100, 'word', 'bad*', 'all', 1, ?)", (NOW,))  # fmt: skip
        conn.execute("INSERT INTO bans VALUES (100, 4, NULL, 'spam', 1, 0, ?)", (NOW,))
        conn.execute("INSERT INTO blocked_attempts (guild_id, user_id, channel_id, prompt, matched, "
                     "created_at) VALUES (100, 4, 200, 'bad words', 'bad*', ?)", (NOW,))  # fmt: skip
        conn.executemany(
            "INSERT INTO reports (guild_id, job_id, reporter_id, reported_id, created_at) "
            "VALUES (100, ?, ?, 1, ?)",
            [(1, 8, NOW), (1, 8, NOW + 1), (2, 8, NOW + 2), (1, 9, NOW + 3)],  # the second one is a duplicate
        )
        tables = ["jobs", "job_references", "results", "ledger", "kv", "guild_policy", "role_limits",
                  "blocklist", "bans", "blocked_attempts", "reports"]  # fmt: skip
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}
    finally:
        conn.close()


async def test_a_database_made_by_the_previous_version_is_upgraded_in_place(db_path: Path) -> None:
    before = await asyncio.to_thread(_make_legacy_database, db_path)
    assert len(before["ledger"]) == 6 + 3 + 2  # 6 reserves, 3 commits (jobs 1-3), refunds of jobs 2 and 3

    db = await open_database(db_path)
    try:
        assert await db.schema_version() == migrator.head_revision()
        for table, rows in before.items():
            after = await db.fetchall(f"SELECT * FROM {table} ORDER BY 1, 2")
            if table == "reports":
                # One report per member per job: the later duplicate is dropped, the rest stay as they were.
                rows = [r for r in rows if r[0] != 2]
            width = len(rows[0])  # tables that grew columns keep the old ones first, unchanged
            assert [tuple(r)[:width] for r in after] == [tuple(r) for r in rows], table
        # New columns start empty.
        assert await db.fetchval("SELECT COUNT(*) FROM jobs WHERE queue_provider IS NOT NULL") == 0
        assert await db.fetchval("SELECT COUNT(*) FROM job_references WHERE blob_id IS NOT NULL") == 0
        # The old inline reference bytes still read back.
        refs = await db.jobs.get_references(2)
        assert [(r.position, r.data, r.url, r.source_attachment_id) for r in refs] == [
            (0, b"\x89PNG old bytes", None, 555), (1, None, "https://x/y.jpg", None),
        ]  # fmt: skip
        report = await db.jobs.ledger_balance()
        assert report.balanced, report.describe()
        assert (report.reserved, report.committed, report.refunded, report.open) == (10, 5, 2, 3)
        # The bot carries on: the running job settles once, new ids follow the old ones.
        assert [j.id for j in await db.jobs.unfinished_jobs()] == [6, 4, 5]  # oldest first
        assert await db.jobs.finish_job(5, 1, now=NOW + 60)
        assert await db.jobs.get_references(5) == []
        new = await db.jobs.reserve_job(new_job(), Limits(daily=100), NOW + 60)
        assert new.id == 7
        assert await db.moderation.add_report(100, 1, 8, 1, NOW + 70) is None  # the unique index holds
        policy = await db.moderation.get_policy(100)
        assert (policy.daily_limit, policy.allowed_channels, policy.denied_channels, policy.nsfw_mode) == (
            7, (1, 2), (3,), "relaxed",
        )  # fmt: skip
        assert (await db.jobs.ledger_balance()).balanced
        with pytest.raises(Exception, match="append-only"):
            await db.execute("DELETE FROM ledger")
    finally:
        await db.close()
    # Reopening an upgraded database does nothing more.
    db = await open_database(db_path)
    try:
        assert await db.fetchval("SELECT COUNT(*) FROM jobs") == 7
        assert (await db.jobs.ledger_balance()).balanced
    finally:
        await db.close()


async def test_a_half_migrated_legacy_database_is_refused_untouched(db_path: Path) -> None:
    def make() -> None:
        db_path.parent.mkdir(parents=True)
        with sqlite3.connect(db_path) as conn:
            conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)"
            )
            conn.executescript(LEGACY_SQL[0].read_text())
            conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial', 0)")

    await asyncio.to_thread(make)
    with pytest.raises(migrator.LegacySchemaError, match=r"\[1\]"):
        await open_database(db_path)
    with sqlite3.connect(db_path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "alembic_version" not in names and "guild_policy" not in names


async def _alembic(url: str, action: str, revision: str) -> None:
    """Alembic's ``upgrade`` or ``downgrade`` to ``revision`` on ``url``, in one transaction (the
    migrator's way, stopping at a revision instead of the head)."""
    if (path := sqlite_path(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    def run(sync_conn: object) -> None:
        config = migrator.alembic_config()
        config.attributes["connection"] = sync_conn
        getattr(migrator.command, action)(config, revision)

    try:
        async with engine.connect() as conn:
            await conn.run_sync(run)
            await conn.commit()
    finally:
        await engine.dispose()


async def _ban_columns(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: [col["name"] for col in __import__("sqlalchemy").inspect(c).get_columns("bans")]
            )
    finally:
        await engine.dispose()


async def test_ban_reason_codes_migration_keeps_older_bans_in_their_english(database_url: str) -> None:
    """0009 on a database at 0006 with a ban whose reason is English text only: the ban stays, without a
    code, and shows that text in every language; new bans store their code and values; 0009 goes back
    down to 0006 with the bans kept."""
    await _alembic(database_url, "upgrade", "0006")
    assert "reason_code" not in await _ban_columns(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO bans (guild_id, user_id, expires_at, reason, banned_by, automatic, created_at) "
                "VALUES (100, 4, NULL, '3 blocked prompts within 10m', NULL, 1, 5.0)"
            )
    finally:
        await engine.dispose()

    db = await open_database(database_url)
    try:
        assert await db.schema_version() == migrator.head_revision() == "0009"
        old = await db.moderation.get_ban(100, 4)
        assert old == Ban(100, 4, None, "3 blocked prompts within 10m", None, True, 5.0)
        assert (old.reason_code, old.reason_values) == (None, None)
        assert bans.ban_reason(old) == "3 blocked prompts within 10m"
        german = render("de", bans.banned_message(old))
        assert german.startswith("⛔ Du bist") and german.endswith("Grund: 3 blocked prompts within 10m")
        # A ban written now keeps its code and values (and its English) through the database.
        new = bans.make_ban(100, 5, duration=3600.0, reason=bans.auto_ban_reason(2, 300.0),
                            banned_by=None, now=10.0, automatic=True)  # fmt: skip
        await db.moderation.ban(new)
        stored = await db.moderation.get_ban(100, 5)
        assert stored == new and stored.reason_values == {"count": 2, "window": 300.0}
        assert (stored.reason_code, stored.reason) == ("auto_ban", "2 blocked prompts within 5m")
        assert render("de", bans.ban_reason(stored)) == "2 blockierte Prompts innerhalb von 5 Min."
        # A moderator's ban over it drops the code: their words are shown.
        await db.moderation.ban(bans.make_ban(100, 5, duration=None, reason="spam", banned_by=7, now=11.0))
        over = await db.moderation.get_ban(100, 5)
        assert over is not None
        assert (over.reason, over.reason_code, over.reason_values) == ("spam", None, None)
    finally:
        await db.close()

    await _alembic(database_url, "downgrade", "0006")
    columns = await _ban_columns(database_url)
    assert "reason_code" not in columns and "reason_values" not in columns
    db = await open_database(database_url)  # and up again
    try:
        assert [b.reason for b in sorted(await db.moderation.bans(100), key=lambda b: b.user_id)] == [
            "3 blocked prompts within 10m", "spam",
        ]  # fmt: skip
    finally:
        await db.close()


# --- connection settings ------------------------------------------------------------------------------------


async def test_pragmas_are_set(sqlite_db: Database) -> None:
    db = sqlite_db
    assert await db.pragma("journal_mode") == "wal"
    assert await db.pragma("busy_timeout") == 5000
    assert await db.pragma("foreign_keys") == 1
    assert await db.pragma("synchronous") == 1  # NORMAL


async def test_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "palette.db"
    db = await open_database(path)
    await db.close()
    assert path.is_file()


async def test_close_is_idempotent_and_later_use_fails(database_url: str) -> None:
    db = await open_database(database_url)
    await db.close()
    await db.close()
    assert db.closed
    with pytest.raises(RuntimeError, match="closed"):
        await db.kv.get("x")


async def test_database_satisfies_the_protocols(db: Database) -> None:
    assert isinstance(db.jobs, JobRepository)
    assert isinstance(db.history, HistoryRepository)
    assert isinstance(db.kv, KeyValueRepository)
    assert isinstance(db.moderation, ModerationRepository)
    assert isinstance(db, Storage)
    assert db.engine.dialect.name == db.dialect in ("sqlite", "postgresql")
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
    """A read from another coroutine does not wait for the transaction and never sees its rows before
    they are committed (nor ever, when they are rolled back)."""
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
    assert await asyncio.wait_for(db.kv.get("k"), timeout=10) is None  # not blocked, not visible
    release.set()
    if commit:
        await task
    else:
        with pytest.raises(RuntimeError):
            await task
    assert await db.kv.get("k") == ("v" if commit else None)


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


async def test_other_connection_waits_for_write_lock(db_path: Path, sqlite_db: Database) -> None:
    """BEGIN IMMEDIATE holds SQLite's write lock; another connection with a busy timeout waits for it."""
    db = sqlite_db
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


async def test_backup_is_a_consistent_readable_copy(tmp_path: Path, sqlite_db: Database) -> None:
    db = sqlite_db
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
        assert copy.execute("SELECT COUNT(*) FROM job_references").fetchone()[0] == 10  # 10 settled
        assert copy.execute("SELECT COUNT(*) FROM reference_blobs").fetchone()[0] == 10
    finally:
        copy.close()
    assert not list(target.parent.glob("*.tmp"))

    # Once writes are done, a second backup has exactly the source's rows, and opens as a Database.
    await db.backup(target)
    restored = await open_database(target)
    try:
        for table in (
            "jobs",
            "job_references",
            "reference_blobs",
            "ledger",
            "results",
            "kv",
            "alembic_version",
        ):
            query = f"SELECT * FROM {table} ORDER BY 1"
            assert [tuple(r) for r in await restored.fetchall(query)] == [
                tuple(r) for r in await db.fetchall(query)
            ], table
        assert (await restored.jobs.ledger_balance()).balanced
    finally:
        await restored.close()
    # The source is still open and writable.
    await db.kv.set("after-backup", "1")
    assert await db.kv.get("after-backup") == "1"


async def test_backup_on_postgresql_points_at_pg_dump(tmp_path: Path) -> None:
    from tests.conftest import fresh_postgres_database

    async with fresh_postgres_database() as url:
        db = await open_database(url)
        try:
            with pytest.raises(BackupNotSupported, match="pg_dump"):
                await db.backup(tmp_path / "copy.db")
        finally:
            await db.close()
    assert not list(tmp_path.iterdir())


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
