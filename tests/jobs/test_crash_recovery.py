"""SIGKILL the real bot process with 30 jobs in flight, restart it: every job is delivered exactly once or
refunded, the ledger balances, and no asynchronous provider task is submitted twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.discord import FakeDiscord
from tests.fakes.processes import PaletteProcess, palette_env, query, run_cli
from tests.fakes.providers.listenhub import FakeListenHub
from tests.fakes.providers.mountsea import FakeMountsea

JOBS_PER_PROVIDER = 15


def bot_env(fake: FakeDiscord, listenhub: FakeListenHub, mountsea: FakeMountsea, db: Path) -> dict[str, str]:
    return palette_env(
        fake,
        database_url=f"sqlite:///{db}",
        listenhub=listenhub,
        mountsea=mountsea,
        # A killed process's jobs are taken over once their leases run out: 5 s instead of 30 here.
        JOB_LEASE_SECONDS=5,
    )


async def count_task_ids(db: Path) -> int:
    """Jobs whose provider task id is on disk (what a restarted bot can resume)."""
    rows = await query(f"sqlite:///{db}", "SELECT COUNT(*) FROM jobs WHERE task_id IS NOT NULL")
    return int(rows[0][0])


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
        bot = PaletteProcess(env, tmp_path)
        await bot.start()
        try:
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
                recorded = await count_task_ids(tmp_path / "palette.db")
                if recorded == JOBS_PER_PROVIDER and listenhub.in_flight >= JOBS_PER_PROVIDER:
                    break
                await asyncio.sleep(0.02)
            assert mountsea.submit_calls == JOBS_PER_PROVIDER and listenhub.in_flight == JOBS_PER_PROVIDER
            early = [i for i, ix in enumerate(interactions) if final(ix)]
            assert not early, early
            await bot.kill()

            await bot.start()
            for ix in interactions:
                await ix.wait_for(final, timeout=60)
            await asyncio.sleep(0.3)  # let any duplicate delivery show itself
        finally:
            await bot.stop()

        delivered = [ix for ix in interactions if ix.original.files]
        assert len(delivered) == 2 * JOBS_PER_PROVIDER, [ix.original.content for ix in interactions]
        # Exactly once: no second result message anywhere in the channel.
        results = [m for m in fake.channel_messages(channel) if m.files]
        assert len(results) == 2 * JOBS_PER_PROVIDER
        # Mountsea tasks were resumed by polling, never submitted again.
        assert mountsea.submit_calls == JOBS_PER_PROVIDER
        check = await run_cli(env, tmp_path, "check-ledger")
        assert check.returncode == 0, check.stdout + check.stderr
        text = bot.log_text()
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
        bot = PaletteProcess(env, tmp_path)
        await bot.start()
        try:
            running = await fake.invoke_slash(user, channel, "imagine", options={"prompt": "almost done"})
            await listenhub.wait_for(lambda: listenhub.in_flight > 0, timeout=10)
            stopping = asyncio.create_task(bot.stop(timeout=20))
            await asyncio.sleep(0.3)
            late = await fake.invoke_slash(user, channel, "imagine", options={"prompt": "too late"})
            response = await late.wait_for_response(timeout=5)
            assert late.ephemeral and "restarting" in response["data"]["content"]
            code = await stopping
        finally:
            await bot.stop()
        assert code == 0
        assert running.original is not None and running.original.files  # finished within the grace period
        assert listenhub.calls["generate"] == 1
        assert "Traceback" not in bot.log_text()
