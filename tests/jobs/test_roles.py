"""`python -m bot gateway` and `python -m bot worker` as real processes against the loopback fakes: the
gateway queues, the worker (REST only, no gateway connection) generates and posts; SIGTERM stops both
cleanly. (The scale-out scenarios, several workers and kills, live in their own tests.)"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.discord import FakeDiscord
from tests.fakes.providers.listenhub import FakeListenHub
from tests.fakes.providers.mountsea import FakeMountsea
from tests.jobs.test_crash_recovery import bot_env, final


async def start(role: str, env: dict[str, str], cwd: Path, log: Path, ready: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bot", role], cwd=cwd, env=env, stdout=out, stderr=out)
    for _ in range(400):
        if ready in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"{role} exited early:\n{log.read_text()}")
        await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{role} not ready:\n{log.read_text()}")


async def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(proc.wait, 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.timeout(120)
async def test_a_gateway_and_a_worker_process(tmp_path: Path) -> None:
    async with FakeDiscord() as fake, FakeListenHub() as listenhub, FakeMountsea(polls=2) as mountsea:
        guild = fake.add_guild(name="Roles")
        channel = guild.channels[0]
        user = fake.add_user(name="u")
        fake.add_member(guild, user)
        env = bot_env(fake, listenhub, mountsea, tmp_path / "palette.db")
        gateway_log, worker_log = tmp_path / "gateway.log", tmp_path / "worker.log"
        gateway = await start("gateway", env, tmp_path, gateway_log, "invite:")
        worker = None
        try:
            ix = await fake.invoke_slash(
                user, channel, "imagine", options={"prompt": "queued by the gateway"}
            )
            await ix.wait_for(lambda i: bool(i.original and "Queued" in (i.original.content or "")), 10)
            await asyncio.sleep(0.5)
            assert listenhub.calls["generate"] == 0  # the gateway never calls a provider
            connections = len(fake.gateway.connections)
            worker = await start("worker", env, tmp_path, worker_log, "ready (REST only")
            await ix.wait_for(final, timeout=30)
            assert ix.original.files and listenhub.calls["generate"] == 1
            tasks = await fake.invoke_slash(
                user, channel, "imagine", options={"prompt": "t", "model": "nano-banana"}
            )
            await tasks.wait_for(final, timeout=30)
            assert tasks.original.files and mountsea.submit_calls == 1
            assert len(fake.gateway.connections) == connections  # the worker never opened a gateway
        finally:
            codes = [await stop(p) for p in (gateway, worker) if p is not None]
        assert codes == [0, 0]
        for log in (gateway_log, worker_log):
            text = log.read_text()
            assert "Traceback" not in text, text
            assert fake.bot_token not in text and listenhub.api_key not in text
