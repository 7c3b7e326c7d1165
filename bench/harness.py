"""Runs the real bot (``python -m bot``) as a subprocess against the fakes, and measures it from outside."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fakes import BenchDiscord, BenchListenHub
from bot.loopmonitor import LoopMonitor

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "logged in as"
# Every provider setting the bot reads; all but ListenHub are blanked so a developer's .env cannot leak in.
OTHER_PROVIDERS = ("NANOBANANA_PRO", "APIMART", "MOUNTSEA")


def read_vm(pid: int, field_name: str = "VmHWM") -> int | None:
    """A ``/proc/<pid>/status`` memory figure in bytes (Linux), ``VmHWM`` being the peak resident set."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (``/proc/<pid>/stat``, Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class BotProcess:
    """``python -m bot`` in a subprocess, with its log in a file."""

    env: dict[str, str]
    workdir: Path
    proc: asyncio.subprocess.Process | None = None
    peak_rss: int | None = None
    cpu_s: float | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "bot.log"

    async def start(self, ready_timeout: float = 60) -> None:
        log = self.log_path.open("wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", cwd=self.workdir, env=self.env, stdout=log, stderr=log
            )
        finally:
            log.close()
        deadline = time.monotonic() + ready_timeout
        while READY_LINE not in self.log_path.read_text(errors="replace"):
            if self.proc.returncode is not None:
                raise RuntimeError(f"the bot exited during start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bot was not ready after {ready_timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_now(self) -> int | None:
        return read_vm(self.pid, "VmRSS")

    async def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.peak_rss = read_vm(self.proc.pid, "VmHWM")
        self.cpu_s = cpu_seconds(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def loop_report(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.workdir / "loop-monitor.json").read_text()))
        except (OSError, ValueError):
            return {}

    def loop_stall(self) -> float | None:
        value = self.loop_report().get("max_stall_s")
        return None if value is None else float(value)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def log_errors(self) -> list[str]:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return [line for line in text if " ERROR " in line or " WARNING " in line]
        return []


@dataclass
class Harness:
    """The fakes in this process, the bot in a subprocess, users in one guild."""

    users: int = 10
    latency: float = 1.0
    concurrency: int = 32
    prepare: Iterable[str] = ("1K",)
    extra_env: dict[str, str] = field(default_factory=dict)
    profile: bool = False

    async def __aenter__(self) -> Harness:
        self.t0: float | None = None  # when the first command was sent (monotonic, like the bot's clock)
        self.cpu0 = sum(os.times()[:2])
        self._tmp = tempfile.TemporaryDirectory(prefix="palette-bench-")
        self.workdir = Path(self._tmp.name)
        self.discord = BenchDiscord()
        self.provider = BenchListenHub(latency=self.latency)
        for size in self.prepare:
            await asyncio.to_thread(self.provider.prepare, size)
        await self.discord.start()
        await self.provider.__aenter__()
        self.guild = self.discord.add_guild(name="Bench")
        self.channel = self.guild.channels[0]
        self.people = []
        for i in range(self.users):
            user = self.discord.add_user(f"user{i}")
            self.discord.add_member(self.guild, user)
            self.people.append(user)
        self.bot = BotProcess(self.bot_env(), self.workdir)
        self.monitor = LoopMonitor(self.workdir / "bench-loop.json")  # the benchmark process's own loop
        self.monitor.start()
        try:
            await self.bot.start()
            await self.discord.wait_for_state(lambda: self.discord.find_command("imagine"), 30, "commands")
            await self._start_profiler()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def bot_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PALETTE_", "DISCORD_"))}
        env.update(
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            DISCORD_TOKEN=self.discord.bot_token,
            DISCORD_API_BASE=self.discord.api_base,
            DISCORD_GATEWAY_URL=self.discord.gateway_url,
            DISCORD_DEV_GUILD_ID="",
            DATABASE_URL=f"sqlite:///{self.workdir / 'palette.db'}",
            LISTENHUB_API_KEY=self.provider.api_key,
            LISTENHUB_BASE_URL=self.provider.base_url,
            LISTENHUB_CONCURRENCY=str(self.concurrency),
            ALLOW_PRIVATE_URLS="true",
            USER_DAILY_LIMIT="0",
            USER_HOURLY_LIMIT="0",
            USER_MAX_CONCURRENT="0",
            HTTP_READ_TIMEOUT="120",
            SHUTDOWN_GRACE="1",
            LOG_LEVEL="INFO",
            PALETTE_LOOP_MONITOR="1",
            PALETTE_LOOP_MONITOR_FILE=str(self.workdir / "loop-monitor.json"),
        )
        for name in OTHER_PROVIDERS:
            env[f"{name}_API_KEY"] = ""
        env.update(self.extra_env)
        return env

    async def _start_profiler(self) -> None:
        """``BENCH_PYSPY=DIR``: sample the bot with py-spy (not a dependency: ``pip install py-spy``)."""
        out = os.environ.get("BENCH_PYSPY")
        self._profiler: asyncio.subprocess.Process | None = None
        if not out:
            return
        os.makedirs(out, exist_ok=True)
        target = Path(out) / f"bot-{self.bot.pid}.txt"
        self._profiler = await asyncio.create_subprocess_exec(
            "py-spy", "record", "--pid", str(self.bot.pid), "--format", "raw", "--rate", "200",
            "--threads", "--output", str(target), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def stop_bot(self) -> None:
        """Stop the profiler (if any), then the bot; peak RSS and loop stall are read on the way."""
        profiler = getattr(self, "_profiler", None)
        if profiler is not None and profiler.returncode is None:
            profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(profiler.wait(), 30)
        await self.bot.stop()

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop_bot()
        await self.monitor.stop()
        self.provider._release.set()
        await self.provider.server.stop()
        await self.discord.stop()
        keep = os.environ.get("BENCH_KEEP_LOGS")  # a folder: keep the bot's log of each run there
        if keep:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(keep_log, self.bot.log_path, Path(keep))
        self._tmp.cleanup()

    # ------------------------------------------------------------------ driving

    async def imagine(self, user: Any, prompt: str, **options: Any) -> Any:
        if self.t0 is None:
            self.t0 = time.monotonic()
        return await self.discord.invoke_slash(
            user, self.channel, "imagine", options={"prompt": prompt, **options}
        )

    async def wait_done(self, interactions: list[Any], timeout: float) -> None:
        """Until every interaction got its final message with a file (or an error, or the timeout)."""
        ids = [ix.id for ix in interactions]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(i in self.discord.done_at or self._failed(i) for i in ids):
                return
            if self.bot.proc is not None and self.bot.proc.returncode is not None:
                raise RuntimeError(f"the bot exited:\n{self.bot.log_tail()}")
            await asyncio.sleep(0.02)

    def _failed(self, interaction_id: int) -> bool:
        ix = self.discord.interactions[interaction_id]
        original = ix.original
        failed = original is not None and not original.loading and (original.content or "").startswith("❌")
        return failed or bool(ix.followups)  # errors after the deferral come as (ephemeral) followups

    async def wait_acked(self, interactions: list[Any], timeout: float) -> None:
        def acked() -> bool:
            return all(ix.acked_at is not None for ix in interactions)

        with contextlib.suppress(TimeoutError):
            await self.discord.wait_for_state(acked, timeout, "every interaction acknowledged")


def keep_log(log: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(log, folder / f"bot-{int(time.time() * 1000)}.log")
