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

    def loop_stall(self, since: float | None = None) -> float | None:
        """The longest loop stall; with ``since`` (``time.monotonic``), the longest that ended after it."""
        report = self.loop_report()
        if since is not None and "per_second" in report:
            return max((v for sec, v in report["per_second"] if sec + 1 > since), default=0.0)
        value = report.get("max_stall_s")
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
class RemoteInteraction:
    """An interaction of a fake Discord in another process: its times as that process took them."""

    id: int
    created_at: float
    acked_at: float | None = None


@dataclass
class RemoteDiscordView:
    """What the scenarios read from the fake Discord, copied from its process by ``Harness.refresh()``."""

    done_at: dict[int, float] = field(default_factory=dict)
    delivered: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    in_channel: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    upload_limit: int = 0
    loop: dict[str, Any] = field(default_factory=dict)


@dataclass
class RemoteProviderView:
    max_in_flight: int = 0
    calls: dict[str, int] = field(default_factory=lambda: {"generate": 0})
    png_sizes: dict[tuple[int, int], int] = field(default_factory=dict)
    loop: dict[str, Any] = field(default_factory=dict)
    busy_s: float = 0.0
    span_s: float = 0.0


class FakeProcess:
    """``python -m bench.fakeproc KIND ...``: one fake in a process of its own (see bench/fakeproc.py)."""

    def __init__(self, kind: str, workdir: Path, *args: str) -> None:
        self.kind = kind
        self.info_path = workdir / f"fake-{kind}.json"
        self.log_path = workdir / f"fake-{kind}.log"
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    async def start(self, timeout: float = 60) -> dict[str, Any]:
        import sys

        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with await asyncio.to_thread(self.log_path.open, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.fakeproc", self.kind, "--info", str(self.info_path),
                *self.args, stdout=log, stderr=log, env=env, cwd=str(ROOT),
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.info_path.exists():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake {self.kind} did not start:\n{self.log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        self.info = json.loads(self.info_path.read_text())
        return self.info

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


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
    #: Run the fake Discord and the fake provider in processes of their own (``bench.fakeproc``): their
    #: times are then taken on loops the benchmark does not load. The scenarios read them through
    #: :meth:`refresh` (``h.discord`` / ``h.provider`` are copies), and send commands in batches.
    fakes_process: bool = False

    async def __aenter__(self) -> Harness:
        if self.fakes_process:
            return await self._enter_remote()
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

    async def _enter_remote(self) -> Harness:
        import aiohttp

        self.t0 = None
        self.cpu0 = sum(os.times()[:2])
        self._tmp = tempfile.TemporaryDirectory(prefix="palette-bench-")
        self.workdir = Path(self._tmp.name)
        self._pg_database = None
        self.bot = None  # type: ignore[assignment]
        self.worker_procs = []
        self.monitor = LoopMonitor(self.workdir / "bench-loop.json")
        self.monitor.start()
        self.remote_interactions: dict[int, RemoteInteraction] = {}
        self.discord = RemoteDiscordView()  # type: ignore[assignment]
        self.provider = RemoteProviderView()  # type: ignore[assignment]
        self.people = list(range(self.users))
        prepare = [a for size in self.prepare for a in ("--prepare", size)]
        self.fake_procs = [
            FakeProcess("discord", self.workdir, "--users", str(self.users)),
            FakeProcess("listenhub", self.workdir, "--latency", str(self.latency), *prepare),
        ]
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        try:
            discord_info, provider_info = await asyncio.gather(*(f.start() for f in self.fake_procs))
            self._discord_url = discord_info["control"]
            self._provider_url = provider_info["control"]
            if self.database_url is not None and not self.database_url.startswith("sqlite"):
                self._pg_database = await create_postgres_database(self.database_url)
            from types import SimpleNamespace

            env = palette_env(
                SimpleNamespace(**discord_info),  # type: ignore[arg-type]
                database_url=self.db_url,
                listenhub=SimpleNamespace(**provider_info),  # type: ignore[arg-type]
                LISTENHUB_CONCURRENCY=self.concurrency,
                HTTP_READ_TIMEOUT=120,
                SHUTDOWN_GRACE=1,
                PALETTE_LOOP_MONITOR=1,
                PALETTE_LOOP_MONITOR_STACKS=os.environ.get("PALETTE_LOOP_MONITOR_STACKS", ""),
            )
            env.pop("POLL_INTERVAL")
            env.pop("RETRY_BACKOFF_BASE")
            env.update(self.extra_env)
            self.bot = BotProcess(env, self.workdir, role="gateway" if self.workers else None, name="bot")
            self.worker_procs = [
                BotProcess(env, self.workdir, role="worker", name=f"worker-{i + 1}")
                for i in range(self.workers)
            ]
            await asyncio.gather(self.bot.start(), *(w.start() for w in self.worker_procs))
            async with self.http.get(f"{self._discord_url}/ready") as response:
                response.raise_for_status()
            await self._start_profiler()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def imagine_many(self, commands: list[tuple[int, str, dict[str, Any]]]) -> list[Any]:
        """Send ``(user index, prompt, options)`` commands; in-process, or as one batch to the fake's
        process (which sends them one after another, as :meth:`imagine` would)."""
        if not self.fakes_process:
            out = []
            for n, (user, prompt, options) in enumerate(commands, 1):
                out.append(await self.imagine(self.people[user], prompt, **options))
                if n % 25 == 0:
                    await asyncio.sleep(0)  # let the gateway writer flush
            return out
        async with self.http.post(f"{self._discord_url}/imagine", json={"commands": commands}) as response:
            response.raise_for_status()
            sent = await response.json()
        out = []
        for interaction_id, created_at in sent:
            ix = RemoteInteraction(int(interaction_id), float(created_at))
            self.remote_interactions[ix.id] = ix
            out.append(ix)
        if self.t0 is None and out:
            self.t0 = out[0].created_at
        return out

    async def refresh(self) -> None:
        """Copy the fakes' figures from their processes (no-op when they run in this one)."""
        if not self.fakes_process:
            return
        async with self.http.get(f"{self._discord_url}/state") as response:
            state = await response.json()
        for key, (_created, acked) in state["interactions"].items():
            ix = self.remote_interactions.get(int(key))
            if ix is not None:
                ix.acked_at = acked
        view = self.discord
        view.done_at = {int(k): v for k, v in state["done_at"].items()}
        view.delivered = {int(k): [tuple(f) for f in v] for k, v in state["delivered"].items()}
        view.in_channel = set(state["in_channel"])
        view.failed = set(state["failed"])
        view.upload_limit = state["upload_limit"]
        view.loop = state["loop"]
        async with self.http.get(f"{self._provider_url}/state") as response:
            pstate = await response.json()
        provider = self.provider
        provider.max_in_flight = pstate["max_in_flight"]
        provider.calls = pstate["calls"]
        provider.busy_s, provider.span_s = pstate["busy_s"], pstate["span_s"]
        provider.png_sizes = {
            tuple(int(x) for x in k.split("x")): v  # type: ignore[misc]
            for k, v in pstate["png_sizes"].items()
        }
        provider.loop = pstate["loop"]

    async def _wait_remote(self, what: str, timeout: float) -> None:
        """Until every interaction sent so far is ``what`` (``finished`` or ``acked``), then refresh."""
        deadline = time.monotonic() + timeout
        want = len(self.remote_interactions)
        while time.monotonic() < deadline:
            async with self.http.get(f"{self._discord_url}/state?progress=1") as response:
                if (await response.json())[what] >= want:
                    break
            for proc in self.processes:
                if proc.proc is not None and proc.proc.returncode is not None:
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            await asyncio.sleep(0.25)  # the times are the fake's own: polling only decides when to stop
        await self.refresh()

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
            PALETTE_LOOP_MONITOR_STACKS=os.environ.get("PALETTE_LOOP_MONITOR_STACKS", ""),
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
                "--threads", "--nonblocking", "--output", str(target), stdout=asyncio.subprocess.DEVNULL,
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
        if self.fakes_process:
            await self._exit_remote()
            return
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

    async def _exit_remote(self) -> None:
        if self.bot is not None:
            with contextlib.suppress(Exception):
                await self.stop_bot()
        await self.monitor.stop()
        await asyncio.gather(*(f.stop() for f in self.fake_procs), return_exceptions=True)
        await self.http.close()
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep:
            for path in [p.log_path for p in self.processes] + [f.log_path for f in self.fake_procs]:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(keep_log, path, Path(keep))
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
        if self.fakes_process:
            await self._wait_remote("finished", timeout)
            return
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
        if self.fakes_process:
            await self._wait_remote("acked", timeout)
            return

        def acked() -> bool:
            return all(ix.acked_at is not None for ix in interactions)

        with contextlib.suppress(TimeoutError):
            await self.discord.wait_for_state(acked, timeout, "every interaction acknowledged")


def keep_log(log: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(log, folder / f"{log.stem}-{int(time.time() * 1000)}.log")
