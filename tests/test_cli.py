"""`python -m bot ...` as a user runs it: subprocess for start-up, in-process against fake providers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from tests.fakes.http import png_bytes
from tests.fakes.providers.listenhub import FakeListenHub

ROOT = Path(__file__).resolve().parents[1]
PROVIDER_VARS = ("LISTENHUB", "NANOBANANA_PRO", "APIMART", "MOUNTSEA")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No settings from the developer's environment or .env: run from an empty directory."""
    for name in list(os.environ):
        if name.startswith(("DISCORD_", *PROVIDER_VARS)) or name in ("DATABASE_URL", "ALLOW_PRIVATE_URLS"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETRY_BACKOFF_BASE", "0.001")
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")
    return tmp_path


def test_run_without_token_exits_2_with_a_friendly_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCORD_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "DISCORD_TOKEN" in proc.stderr and ".env" in proc.stderr
    assert "discord.com/developers" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_invalid_setting_is_reported_without_its_value(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["USER_DAILY_LIMIT"] = "lots-sk-secret"
    try:
        assert main(["models"]) == 2
    finally:
        del os.environ["USER_DAILY_LIMIT"]
    err = capsys.readouterr().err
    assert "USER_DAILY_LIMIT" in err and "lots-sk-secret" not in err


def test_models_lists_catalog_and_enabled_routes(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.environ["APIMART_API_KEY"] = "k"
    try:
        assert main(["models"]) == 0
    finally:
        del os.environ["APIMART_API_KEY"]
    out = capsys.readouterr().out
    assert "nano-banana-lite" in out
    assert "route apimart" in out and "gemini-3.1-flash-lite-image" in out
    lite_block = out.split("nano-banana-lite")[1].split("\ngpt-image-2")[0]
    assert "enabled" in lite_block and "disabled" not in lite_block
    assert "nano-banana-pro  (no enabled provider)" in out


async def test_generate_writes_images_and_prints_one_line_each(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = clean_env / "ref.png"
    ref.write_bytes(png_bytes(32, 32))
    async with FakeListenHub() as fake:
        os.environ["LISTENHUB_API_KEY"] = fake.api_key
        os.environ["LISTENHUB_BASE_URL"] = fake.base_url
        try:
            code = await asyncio.to_thread(
                main,
                [
                    "generate",
                    "--model",
                    "nano-banana-pro",
                    "--prompt",
                    "a kite",
                    "--aspect-ratio",
                    "16:9",
                    "--count",
                    "2",
                    "--ref",
                    str(ref),
                    "--out",
                    str(clean_env / "out"),
                ],
            )
        finally:
            del os.environ["LISTENHUB_API_KEY"], os.environ["LISTENHUB_BASE_URL"]
        assert code == 0
        assert len(fake.generate_requests) == 2
        body = fake.generate_requests[0].json
        assert body["referenceImages"][0]["inlineData"]["mimeType"] == "image/png"
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        path, size, provider = line.split("\t")
        assert provider == "listenhub"
        with Image.open(path) as img:
            assert f"{img.width}x{img.height}" == size and img.width > img.height
    written = [await asyncio.to_thread(Path(line.split("\t")[0]).read_bytes) for line in lines]
    assert sorted(written) == sorted(fake.images)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nope", "--prompt", "x"], "Unknown model"),
        (["--model", "nano-banana-pro", "--prompt", "x", "--aspect-ratio", "8:1"], "aspect ratio"),
        (["--model", "nano-banana-pro", "--prompt", "x", "--ref", "missing.png"], "does not exist"),
    ],
)
async def test_generate_errors_exit_nonzero_without_calling_the_provider(
    clean_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    async with FakeListenHub() as fake:
        os.environ["LISTENHUB_API_KEY"] = fake.api_key
        os.environ["LISTENHUB_BASE_URL"] = fake.base_url
        try:
            code = await asyncio.to_thread(main, ["generate", *argv])
        finally:
            del os.environ["LISTENHUB_API_KEY"], os.environ["LISTENHUB_BASE_URL"]
        assert fake.calls["generate"] == 0
    assert code != 0
    assert message in capsys.readouterr().err


async def test_generate_reports_a_provider_failure(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeListenHub() as fake:
        fake.script(402, {"error": "Insufficient credits"}, times=None)
        os.environ["LISTENHUB_API_KEY"] = fake.api_key
        os.environ["LISTENHUB_BASE_URL"] = fake.base_url
        try:
            code = await asyncio.to_thread(main, ["generate", "--model", "gpt-image-2", "--prompt", "x"])
        finally:
            del os.environ["LISTENHUB_API_KEY"], os.environ["LISTENHUB_BASE_URL"]
    assert code == 1
    err = capsys.readouterr().err
    assert "out of credits" in err and fake.api_key not in err


async def test_doctor_checks_provider_balance(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeListenHub() as fake:
        os.environ["LISTENHUB_API_KEY"] = fake.api_key
        os.environ["LISTENHUB_BASE_URL"] = fake.base_url
        os.environ["DISCORD_TOKEN"] = "x"
        try:
            code = await asyncio.to_thread(main, ["doctor"])
        finally:
            del os.environ["LISTENHUB_API_KEY"], os.environ["LISTENHUB_BASE_URL"], os.environ["DISCORD_TOKEN"]
        assert fake.calls["subscription"] == 1
    out = capsys.readouterr().out
    assert code == 0
    assert "provider listenhub: ok, credits" in out
    assert "discord token: set" in out


async def _seed_database(path: Path) -> None:
    """One finished job (2 delivered of 3) and one open reservation."""
    import time

    from bot.storage import Limits, NewJob, open_database

    db = await open_database(path)
    try:
        now = time.time()
        job = await db.jobs.reserve_job(
            NewJob(
                user_id=1,
                guild_id=2,
                channel_id=3,
                kind="imagine",
                model="nano-banana-pro",
                prompt="p",
                params="{}",
                count=3,
            ),
            Limits(),
            now,
        )
        await db.jobs.finish_job(job.id, 2, now=now)
        await db.jobs.reserve_job(
            NewJob(
                user_id=1,
                guild_id=2,
                channel_id=3,
                kind="imagine",
                model="nano-banana-pro",
                prompt="q",
                params="{}",
                count=1,
            ),
            Limits(),
            now,
        )
    finally:
        await db.close()


async def test_check_ledger_and_backup(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    db_path = clean_env / "data" / "palette.db"
    os.environ["DATABASE_URL"] = f"sqlite:///{db_path}"
    try:
        await _seed_database(db_path)
        assert await asyncio.to_thread(main, ["check-ledger"]) == 0
        assert await asyncio.to_thread(main, ["backup", str(clean_env / "copy.db")]) == 0
        with sqlite3.connect(clean_env / "copy.db") as copy:
            assert copy.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2
        # Tamper with the append-only ledger (its guard triggers dropped): the check must notice.
        with sqlite3.connect(db_path) as conn:
            triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
            for name in triggers:
                conn.execute(f"DROP TRIGGER {name}")
            conn.execute("DELETE FROM ledger WHERE job_id = 1 AND entry = 'refund'")
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["check-ledger"]) == 1
        out = capsys.readouterr().out
        assert "NOT BALANCED" in out and "job 1" in out
    finally:
        del os.environ["DATABASE_URL"]


BACKUP_ONTO_THE_DATABASE = {
    "the database": lambda root: root / "data" / "palette.db",
    "a relative path": lambda root: Path("data/../data/./palette.db"),
    "its WAL": lambda root: root / "data" / "palette.db-wal",
    "its shared memory": lambda root: root / "data" / "palette.db-shm",
    "a symlink to it": lambda root: _link(root / "link.db", root / "data" / "palette.db"),
    "through a symlinked folder": lambda root: _link(root / "alias", root / "data") / "palette.db",
    "a hard link to it": lambda root: _hard_link(root / "hard.db", root / "data" / "palette.db"),
}


def _link(link: Path, to: Path) -> Path:
    link.symlink_to(to)
    return link


def _hard_link(link: Path, to: Path) -> Path:
    os.link(to, link)
    return link


@pytest.mark.parametrize("target", list(BACKUP_ONTO_THE_DATABASE))
async def test_backup_refuses_to_write_over_the_live_database(
    clean_env: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    import sqlite3

    from bot.storage import open_database

    db_path = clean_env / "data" / "palette.db"
    os.environ["DATABASE_URL"] = f"sqlite:///{db_path}"
    try:
        await _seed_database(db_path)
        live = await open_database(db_path)  # the bot is running: WAL and shared memory files exist
        try:
            path = BACKUP_ONTO_THE_DATABASE[target](clean_env)
            before = sorted(p.name for p in (clean_env / "data").iterdir())
            assert await asyncio.to_thread(main, ["backup", str(path)]) == 2
            assert sorted(p.name for p in (clean_env / "data").iterdir()) == before  # no copy, no temp file
            assert (await live.jobs.get_job(1)) is not None  # the open database still works
        finally:
            await live.close()
    finally:
        del os.environ["DATABASE_URL"]
    err = capsys.readouterr().err
    assert "live database" in err and "another path" in err
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2


async def test_doctor_checks_access_for_providers_without_a_balance(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fakes.providers.apimart import FakeApiMart
    from tests.fakes.providers.mountsea import FakeMountsea

    async with FakeApiMart() as apimart, FakeMountsea() as mountsea:
        os.environ.update(
            APIMART_API_KEY=apimart.key,
            APIMART_BASE_URL=apimart.base_url,
            MOUNTSEA_API_KEY="wrong-key",
            MOUNTSEA_BASE_URL=mountsea.base_url,
            DISCORD_TOKEN="x",
        )
        try:
            code = await asyncio.to_thread(main, ["doctor"])
        finally:
            for name in (
                "APIMART_API_KEY",
                "APIMART_BASE_URL",
                "MOUNTSEA_API_KEY",
                "MOUNTSEA_BASE_URL",
                "DISCORD_TOKEN",
            ):
                del os.environ[name]
        assert apimart.submit_calls == 0 and mountsea.submit_calls == 0  # nothing generated, nothing paid
    out = capsys.readouterr().out
    assert "provider apimart: ok, key accepted" in out
    assert "provider mountsea: PROBLEM" in out
    assert code == 1


def test_a_database_reached_through_a_symlink_is_recognised(tmp_path: Path) -> None:
    from bot.cli import overwrites_database

    real = tmp_path / "real" / "palette.db"
    real.parent.mkdir()
    real.write_bytes(b"")
    configured = _link(tmp_path / "configured.db", real)  # DATABASE_URL names the link
    assert overwrites_database(real, configured)
    assert overwrites_database(real.with_name("palette.db-wal"), configured)
    assert not overwrites_database(tmp_path / "real" / "copy.db", configured)
    assert not overwrites_database(tmp_path / "real" / "palette.db-backup", configured)


# --- copy-db ----------------------------------------------------------------------------------------------


async def _seed_everything(url: str) -> None:
    """Rows in every table: settled and open jobs (one with reference bytes, one with a URL reference),
    results, moderation state (and its versions), kv, reports, and the queue's tables."""
    import time

    from bot.storage import (
        Ban,
        GuildPolicy,
        Limits,
        NewJob,
        NewReference,
        NewResult,
        RoleLimit,
        open_database,
    )
    from bot.storage.queue_sql import SqlQueueRepository

    db = await open_database(url)
    try:
        now = time.time()

        def job(**kw: object) -> NewJob:
            base: dict[str, object] = {
                "user_id": 1, "guild_id": 2, "channel_id": 3, "kind": "imagine", "model": "nano-banana-pro",
                "prompt": "p", "params": {"seed": 1},
            }  # fmt: skip
            return NewJob(**{**base, **kw})  # type: ignore[arg-type]

        done = await db.jobs.reserve_job(job(count=3, interaction_token="tok"), Limits(), now - 100)
        await db.jobs.finish_job(
            done.id, 2, result_message_id=77,
            results=[NewResult(filename=f"{i}.png", sha256=f"{i:064x}", size_bytes=10) for i in range(2)],
            now=now - 90,
        )  # fmt: skip
        failed = await db.jobs.reserve_job(job(user_id=5), Limits(), now - 80)
        await db.jobs.finish_job(failed.id, 0, status="failed", error="busy", now=now - 70)
        refs = (NewReference(mime_type="image/png", data=b"\x89PNG" + bytes(range(256)) * 40),
                NewReference(mime_type="image/jpeg", url="https://cdn.example/a.jpg"))  # fmt: skip
        await db.jobs.reserve_job(
            job(kind="edit", references=refs, parent_job_id=done.id), Limits(), now - 60
        )
        running = await db.jobs.reserve_job(job(user_id=6, queue_provider="apimart"), Limits(), now - 50)
        # Running the way a worker runs it: claimed from the queue (lease and slot 0 of apimart's two).
        queue = SqlQueueRepository(db.engine)
        try:
            await queue.sync_slots({"apimart": 2})
            claim = await queue.claim("w1", now - 49, 30.0)
        finally:
            await queue.aclose()
        assert claim is not None and claim.job.id == running.id
        # Styles, compare groups and a cancelled job (issue 12).
        from bot.storage.styles import StyleImage

        group = await db.groups.create(1, 2, 2, now - 40)
        await db.jobs.reserve_job(job(kind="compare", group_id=group), Limits(), now - 40)
        cancelled = await db.jobs.reserve_job(job(kind="compare", group_id=group), Limits(), now - 40)
        await db.jobs.cancel_job(cancelled.id, 1, now - 30)
        await db.styles.save(
            "server", 2, "ink", "{prompt}, ink", model="gpt-image-2", aspect_ratio="1:1", created_by=1,
            images=[StyleImage("image/png", b"\x89PNG" + bytes(range(256)) * 8)], now=now,
        )  # fmt: skip
        await db.kv.set("commands_hash", "abc")
        await db.moderation.save_policy(GuildPolicy(2, daily_limit=9, allowed_channels=(3,)), now)
        await db.moderation.set_role_limit(RoleLimit(2, 44, daily_limit=3), now)
        await db.moderation.add_block(2, "regex", "b.d", "sfw", 1, now)
        await db.moderation.ban(Ban(2, 7, None, "spam", 1, True, now))
        # A reason Palette wrote: its code and values are copied with it.
        await db.moderation.ban(
            Ban(2, 9, now + 60, "reported result (job 1)", 1, False, now, "report", {"job": 1})
        )
        await db.moderation.record_blocked(2, 7, 3, "bad", "b.d", now, window=600)
        await db.moderation.add_report(2, done.id, 8, 1, now)
        # A server's own provider key (a Fernet token, as bot.tenants stores it) and its fallback.
        await db.tenants.set_key(2, "listenhub", "gAAAAA-not-a-key-but-a-token", 1, now)
        await db.tenants.set_fallback(2, True, now)
        await db.web.set_gallery(2, True, 1, now)
        for statement, params in [
            ("INSERT INTO provider_health VALUES ('apimart', 2, NULL, NULL, :t)", {"t": now}),
            ("INSERT INTO provider_calls (provider, ok, latency_s, created_at) "
             "VALUES ('apimart', :ok, 1.5, :t)", {"ok": True, "t": now}),
            ("INSERT INTO workers VALUES ('w1', 'worker', 'host', 123, :t, :t)", {"t": now}),
            ("INSERT INTO web_sessions VALUES ('sid', 1, 'u', 'sealed', '[]', :t, 'csrf', :t, :t, 'de')",
             {"t": now}),
            ("INSERT INTO oauth_states VALUES ('state', 'verifier', '/gallery', :t)", {"t": now}),
            ("INSERT INTO gateway_shards VALUES ('g1', 0, 2, 'host', 124, 0.05, :t)", {"t": now}),
            ("INSERT INTO identify_buckets VALUES (0, :t, 'g1')", {"t": now}),
            ("INSERT INTO command_syncs VALUES ('command_hash:global', 'abc', 'g1', :t)", {"t": now}),
        ]:  # fmt: skip
            await db.execute(statement, params)
    finally:
        await db.close()


async def _all_rows(url: str) -> dict[str, list[tuple[object, ...]]]:
    from sqlalchemy import select

    from bot.storage import open_database
    from bot.storage.schema import metadata

    db = await open_database(url)
    try:
        return {
            t.name: [tuple(r) for r in await db.fetchall(select(t).order_by(*t.primary_key.columns))]
            for t in metadata.sorted_tables
        }
    finally:
        await db.close()


async def test_copy_db_sqlite_to_postgresql_and_back(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.storage import Limits, NewJob, open_database
    from tests.conftest import fresh_postgres_database

    source = f"sqlite:///{clean_env / 'data' / 'palette.db'}"
    await _seed_everything(source)
    expected = await _all_rows(source)
    assert all(expected[t] for t in expected), [
        t for t in expected if not expected[t]
    ]  # every table has rows

    async with fresh_postgres_database() as pg:
        # A password in the URL (the test server trusts local connections, so any password works).
        password = "s3cret-Pw-4-copy"
        with_password = pg.replace("postgres@", f"postgres:{password}@")
        os.environ["DATABASE_URL"] = source
        try:
            code = await asyncio.to_thread(main, ["copy-db", "--to", with_password])
        finally:
            del os.environ["DATABASE_URL"]
        out, err = capsys.readouterr()
        assert code == 0, err
        assert password not in out + err and "***" in out
        assert "ledger balanced" in out and "jobs: 6 rows" in out
        assert await _all_rows(pg) == expected
        assert [row[7:] for row in expected["bans"]] == [(None, None), ("report", '{"job": 1}')]

        # The copy is a working database: new ids follow the copied ones, the triggers are back on.
        copy = await open_database(pg)
        try:
            job = await copy.jobs.reserve_job(
                NewJob(user_id=1, channel_id=3, kind="imagine", model="m", prompt="q"), Limits(), 1.0
            )
            assert job.id == max(r[0] for r in expected["jobs"]) + 1
            assert await copy.jobs.finish_job(job.id, 1, now=2.0)
            running = next(r[0] for r in expected["jobs"] if r[9] == "running")
            assert await copy.jobs.finish_job(running, 1, now=3.0)
            assert not await copy.jobs.finish_job(running, 1, now=4.0)
            assert (await copy.jobs.ledger_balance()).balanced
            expected_back = {t.name: rows for t, rows in (await _snapshot(copy)).items()}
        finally:
            await copy.close()

        # ... and back into SQLite (PostgreSQL -> SQLite).
        back = f"sqlite:///{clean_env / 'back' / 'palette.db'}"
        os.environ["DATABASE_URL"] = with_password
        try:
            code = await asyncio.to_thread(main, ["copy-db", "--to", back])
        finally:
            del os.environ["DATABASE_URL"]
        out, err = capsys.readouterr()
        assert code == 0, err
        assert password not in out + err
        assert await _all_rows(back) == expected_back
    os.environ["DATABASE_URL"] = back
    try:
        assert await asyncio.to_thread(main, ["check-ledger"]) == 0
    finally:
        del os.environ["DATABASE_URL"]
    assert "ledger balanced" in capsys.readouterr().out


async def _snapshot(db: object) -> dict[object, list[tuple[object, ...]]]:
    from sqlalchemy import select

    from bot.storage.schema import metadata

    return {
        t: [tuple(r) for r in await db.fetchall(select(t).order_by(*t.primary_key.columns))]  # type: ignore[attr-defined]
        for t in metadata.sorted_tables
    }


async def test_copy_db_refuses_a_target_that_is_not_empty(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = clean_env / "data" / "palette.db"
    target = clean_env / "other" / "palette.db"
    await _seed_database(source)
    await _seed_database(target)
    before = await _all_rows(f"sqlite:///{target}")
    os.environ["DATABASE_URL"] = f"sqlite:///{source}"
    try:
        assert await asyncio.to_thread(main, ["copy-db", "--to", f"sqlite:///{target}"]) == 2
        assert await asyncio.to_thread(main, ["copy-db", "--to", "mysql://u:pw-xyz@h/db"]) == 2
    finally:
        del os.environ["DATABASE_URL"]
    err = capsys.readouterr().err
    assert "not empty" in err and "pw-xyz" not in err
    assert await _all_rows(f"sqlite:///{target}") == before


async def test_database_url_with_a_password_never_shows_it(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreachable PostgreSQL server: doctor and check-ledger say so without the password."""
    os.environ["DATABASE_URL"] = "postgresql://palette:hunter2-pw@127.0.0.1:1/palette"
    try:
        assert await asyncio.to_thread(main, ["doctor"]) == 1
        assert await asyncio.to_thread(main, ["backup", str(clean_env / "x.db")]) == 2
        os.environ["DATABASE_URL"] = "postgres://palette:hunter2-pw@host:notaport/palette"
        assert await asyncio.to_thread(main, ["models"]) == 2
    finally:
        del os.environ["DATABASE_URL"]
    out, err = capsys.readouterr()
    assert "hunter2-pw" not in out + err
    assert "postgresql://palette:***@127.0.0.1:1/palette" in out
    assert "pg_dump" in err
