"""Runs the real bot as subprocesses against the fakes, and measures it from outside.

One all-in-one ``python -m bot`` (the default), or one ``python -m bot gateway`` and N ``python -m bot
worker`` sharing one database: a SQLite file in the run's folder, or a fresh PostgreSQL database made on
the server of ``--database-url`` (and dropped afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fakes import BenchDiscord, BenchListenHub
from bot.loopmonitor import LoopMonitor
from tests.fakes.processes import PaletteProcess, cpu_seconds, palette_env, read_vm

__all__ = ["BotProcess", "Harness", "cpu_seconds", "read_vm"]

ROOT = Path(__file__).resolve().parent.parent


class BotProcess(PaletteProcess):
    """A bot process of the benchmark: its opt-in loop monitor writes ``loop-<name>.json``."""

    def __init__(
        self, env: dict[str, str], workdir: Path, *, role: str | None = None, name: str = "bot"
    ) -> None:
        env = dict(env, PALETTE_LOOP_MONITOR_FILE=str(workdir / f"loop-{name}.json"))
        super().__init__(env, workdir, role=role, name=name)

    def loop_report(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.workdir / f"loop-{self.name}.json").read_text()))
        except (OSError, ValueError):
            return {}

    def loop_stall(self) -> float | None:
        value = self.loop_report().get("max_stall_s")
        return None if value is None else float(value)

    def log_errors(self) -> list[str]:
        return self.log_problems()


async def create_postgres_database(server_url: str) -> str:
    """A new, empty database on the server of ``server_url`` (any database there to connect to)."""
    import asyncpg

    name = f"palette_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_url(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{server_url.rsplit('/', 1)[0]}/{name}"


async def drop_postgres_database(url: str) -> None:
    import asyncpg

    base, name = url.rsplit("/", 1)
    admin = await asyncpg.connect(_asyncpg_url(f"{base}/postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _asyncpg_url(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


@dataclass
class Harness:
    """The fakes in this process, the bot in a subprocess, users in one guild."""

    users: int = 10
    latency: float = 1.0
    concurrency: int = 32
    prepare: Iterable[str] = ("1K",)
    extra_env: dict[str, str] = field(default_factory=dict)
    profile: bool = False
    #: 0: one all-in-one ``python -m bot``; N: one gateway and N workers.
    workers: int = 0
    #: ``None``: a SQLite file; a PostgreSQL URL: a fresh database on that server (dropped afterwards).
    database_url: str | None = None

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
        self._pg_database: str | None = None
        if self.database_url is not None and not self.database_url.startswith("sqlite"):
            self._pg_database = await create_postgres_database(self.database_url)
        env = self.bot_env()
        #: The process that talks to Discord's gateway: the all-in-one bot, or the gateway.
        self.bot = BotProcess(env, self.workdir, role="gateway" if self.workers else None, name="bot")
        self.worker_procs = [
            BotProcess(env, self.workdir, role="worker", name=f"worker-{i + 1}") for i in range(self.workers)
        ]
        self.monitor = LoopMonitor(self.workdir / "bench-loop.json")  # the benchmark process's own loop
        self.monitor.start()
        try:
            # Ready means on_ready (logged): its one-off gc.collect()/freeze() must not land in a figure.
            await asyncio.gather(self.bot.start(), *(w.start() for w in self.worker_procs))
            await self.discord.wait_for_state(lambda: self.discord.find_command("imagine"), 30, "commands")
            await self._start_profiler()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    @property
    def processes(self) -> list[BotProcess]:
        return [self.bot, *self.worker_procs]

    @property
    def db_url(self) -> str:
        return self._pg_database or f"sqlite:///{self.workdir / 'palette.db'}"

    def bot_env(self) -> dict[str, str]:
        env = palette_env(
            self.discord,
            database_url=self.db_url,
            listenhub=self.provider,
            LISTENHUB_CONCURRENCY=self.concurrency,
            HTTP_READ_TIMEOUT=120,
            SHUTDOWN_GRACE=1,
            PALETTE_LOOP_MONITOR=1,
        )
        env.pop("POLL_INTERVAL")  # the bot's own defaults for everything not about the fakes
        env.pop("RETRY_BACKOFF_BASE")
        env.update(self.extra_env)
        return env

    async def _start_profiler(self) -> None:
        """``BENCH_PYSPY=DIR``: sample every bot process with py-spy (``pip install py-spy``)."""
        out = os.environ.get("BENCH_PYSPY")
        self._profilers: list[asyncio.subprocess.Process] = []
        if not out:
            return
        os.makedirs(out, exist_ok=True)
        for proc in self.processes:
            target = Path(out) / f"{proc.name}-{proc.pid}.txt"
            self._profilers.append(await asyncio.create_subprocess_exec(
                "py-spy", "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "200",
                "--threads", "--output", str(target), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            ))  # fmt: skip

    async def stop_bot(self) -> None:
        """Stop the profilers (if any), then every bot process; peak RSS and CPU are read on the way."""
        for profiler in getattr(self, "_profilers", []):
            if profiler.returncode is None:
                profiler.send_signal(signal.SIGINT)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(profiler.wait(), 30)
        await asyncio.gather(*(p.stop() for p in self.processes))

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop_bot()
        await self.monitor.stop()
        self.provider._release.set()
        await self.provider.server.stop()
        await self.discord.stop()
        keep = os.environ.get("BENCH_KEEP_LOGS")  # a folder: keep the bot's log of each run there
        if keep:
            for proc in self.processes:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(keep_log, proc.log_path, Path(keep))
        if self._pg_database is not None:
            with contextlib.suppress(Exception):
                await drop_postgres_database(self._pg_database)
        self._tmp.cleanup()

    # ------------------------------------------------------------------ driving

    async def imagine(self, user: Any, prompt: str, **options: Any) -> Any:
        if self.t0 is None:
            self.t0 = time.monotonic()
        ix = await self.discord.invoke_slash(
            user, self.channel, "imagine", options={"prompt": prompt, **options}
        )
        self.discord.by_prompt[prompt] = ix.id
        return ix

    async def wait_done(self, interactions: list[Any], timeout: float) -> None:
        """Until every interaction got its final message with a file (or an error, or the timeout)."""
        ids = [ix.id for ix in interactions]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(i in self.discord.done_at or self._failed(i) for i in ids):
                return
            for proc in self.processes:
                if proc.proc is not None and proc.proc.returncode is not None:
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
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
    shutil.copy(log, folder / f"{log.stem}-{int(time.time() * 1000)}.log")
