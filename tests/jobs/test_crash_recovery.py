"""SIGKILL the real bot process with 30 jobs in flight, restart it: every job is delivered exactly once or
refunded, the ledger balances, and no asynchronous provider task is submitted twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.discord import FakeDiscord
from tests.fakes.providers.listenhub import FakeListenHub
from tests.fakes.providers.mountsea import FakeMountsea

ROOT = Path(__file__).resolve().parents[2]
JOBS_PER_PROVIDER = 15


def bot_env(fake: FakeDiscord, listenhub: FakeListenHub, mountsea: FakeMountsea, db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "LISTENHUB_", "MOUNTSEA_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DISCORD_TOKEN=fake.bot_token,
        DISCORD_API_BASE=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        DATABASE_URL=f"sqlite:///{db}",
        LISTENHUB_API_KEY=listenhub.api_key,
        LISTENHUB_BASE_URL=listenhub.base_url,
        LISTENHUB_CONCURRENCY="32",
        MOUNTSEA_API_KEY=mountsea.key,
        MOUNTSEA_BASE_URL=mountsea.base_url,
        MOUNTSEA_CONCURRENCY="32",
        NANOBANANA_PRO_API_KEY="",
        APIMART_API_KEY="",
        ALLOW_PRIVATE_URLS="true",
        USER_DAILY_LIMIT="0",
        USER_HOURLY_LIMIT="0",
        USER_MAX_CONCURRENT="0",
        POLL_INTERVAL="0.05",
        RETRY_BACKOFF_BASE="0.01",
        # A killed process's jobs are taken over once their leases run out: 5 s instead of 30 here.
        JOB_LEASE_SECONDS="5",
        LOG_LEVEL="INFO",
    )
    return env


@asynccontextmanager
async def bot_process(env: dict[str, str], cwd: Path, log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bot"], cwd=cwd, env=env, stdout=out, stderr=out)
    try:
        for _ in range(300):  # the bot logs its invite URL once it is ready
            if "invite:" in log.read_text(errors="replace").split("=== start")[-1]:
                break
            if proc.poll() is not None:
                raise AssertionError(f"bot exited early:\n{log.read_text()}")
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"bot not ready:\n{log.read_text()}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()


def count_task_ids(db: Path) -> int:
    """Jobs whose provider task id is on disk (what a restarted bot can resume)."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM jobs WHERE task_id IS NOT NULL").fetchone()[0]


def final(ix: Any) -> bool:
    original = ix.original
    return bool(original and (original.files or "❌" in (original.content or "")))


@pytest.mark.timeout(180)
async def test_sigkill_with_30_jobs_in_flight_then_restart(tmp_path: Path) -> None:
    async with FakeDiscord() as fake, FakeListenHub() as listenhub, FakeMountsea(polls=120) as mountsea:
        listenhub.processing_delay = 4  # synchronous calls are still running when the bot dies
        guild = fake.add_guild(name="Crash Test")
        channel = guild.channels[0]
        users = [fake.add_user(name=f"u{i}") for i in range(5)]
        for user in users:
            fake.add_member(guild, user)
        env = bot_env(fake, listenhub, mountsea, tmp_path / "palette.db")
        log = tmp_path / "bot.log"

        log.write_text("=== start 1\n")
        async with bot_process(env, tmp_path, log) as first:
            interactions = []
            for i in range(2 * JOBS_PER_PROVIDER):
                model = (
                    "nano-banana-pro" if i % 2 == 0 else "nano-banana"
                )  # ListenHub (sync) / Mountsea (tasks)
                interactions.append(
                    await fake.invoke_slash(
                        users[i % 5], channel, "imagine", options={"prompt": f"job {i}", "model": model}
                    )
                )
            for _ in range(400):  # the fakes' counters do not wake the fake Discord's waiters: poll them
                recorded = await asyncio.to_thread(count_task_ids, tmp_path / "palette.db")
                if recorded == JOBS_PER_PROVIDER and listenhub.in_flight >= JOBS_PER_PROVIDER:
                    break
                await asyncio.sleep(0.02)
            assert mountsea.submit_calls == JOBS_PER_PROVIDER and listenhub.in_flight == JOBS_PER_PROVIDER
            early = [i for i, ix in enumerate(interactions) if final(ix)]
            assert not early, early
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)

        with log.open("a") as f:
            f.write("=== start 2\n")
        async with bot_process(env, tmp_path, log):
            for ix in interactions:
                await ix.wait_for(final, timeout=60)
            await asyncio.sleep(0.3)  # let any duplicate delivery show itself

        delivered = [ix for ix in interactions if ix.original.files]
        assert len(delivered) == 2 * JOBS_PER_PROVIDER, [ix.original.content for ix in interactions]
        # Exactly once: no second result message anywhere in the channel.
        results = [m for m in fake.channel_messages(channel) if m.files]
        assert len(results) == 2 * JOBS_PER_PROVIDER
        # Mountsea tasks were resumed by polling, never submitted again.
        assert mountsea.submit_calls == JOBS_PER_PROVIDER
        check = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bot", "check-ledger"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        text = log.read_text()
        assert listenhub.api_key not in text and mountsea.key not in text and fake.bot_token not in text


@pytest.mark.timeout(120)
async def test_sigterm_finishes_running_work_refuses_new_commands_and_exits_cleanly(tmp_path: Path) -> None:
    async with FakeDiscord() as fake, FakeListenHub() as listenhub, FakeMountsea() as mountsea:
        listenhub.processing_delay = 1.5
        guild = fake.add_guild(name="Shutdown Test")
        channel = guild.channels[0]
        user = fake.add_user(name="u")
        fake.add_member(guild, user)
        env = bot_env(fake, listenhub, mountsea, tmp_path / "palette.db")
        env["SHUTDOWN_GRACE"] = "10"
        log = tmp_path / "bot.log"
        log.write_text("=== start 1\n")
        async with bot_process(env, tmp_path, log) as proc:
            running = await fake.invoke_slash(user, channel, "imagine", options={"prompt": "almost done"})
            for _ in range(200):
                if listenhub.in_flight:
                    break
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            late = await fake.invoke_slash(user, channel, "imagine", options={"prompt": "too late"})
            response = await late.wait_for_response(timeout=5)
            assert late.ephemeral and "restarting" in response["data"]["content"]
            code = await asyncio.to_thread(proc.wait, 20)
        assert code == 0
        assert running.original is not None and running.original.files  # finished within the grace period
        assert listenhub.calls["generate"] == 1
        assert "Traceback" not in log.read_text()
