"""Palette's real processes (``python -m bot [role]``) against the loopback fakes.

The fakes run in the test's (or the benchmark's) own process; the bot runs as subprocesses configured
through the environment, exactly as it would be deployed: one all-in-one process, or gateways and
workers sharing one database. Used by tests/jobs/test_crash_recovery.py, tests/deploy/ and bench/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.fakes.discord import FakeDiscord, GatewaySession
from tests.fakes.providers.listenhub import FakeListenHub
from tests.fakes.providers.mountsea import FakeMountsea

ROOT = Path(__file__).resolve().parents[2]

# Settings of the developer's shell that must not reach a bot under test (a real key, a real database).
FOREIGN_PREFIXES = (
    "DISCORD_",
    "LISTENHUB_",
    "MOUNTSEA_",
    "NANOBANANA_PRO_",
    "APIMART_",
    "PALETTE_",
    "DATABASE_",
    "JOB_",
)

#: What each role logs once it is ready to work (a regular expression; ``run``: the all-in-one process).
READY_MARKERS: dict[str, str] = {
    "run": r"logged in as",
    "gateway": r"logged in as",
    "worker": r"worker \S+ ready",
    "web": r"web site ready at",
}


def palette_env(
    fake: FakeDiscord,
    *,
    database_url: str,
    listenhub: FakeListenHub | None = None,
    mountsea: FakeMountsea | None = None,
    **settings: object,
) -> dict[str, str]:
    """The environment of a bot process pointed at the fakes: no limits, short retry and poll delays.

    ``settings`` are more variables (``JOB_LEASE_SECONDS=2``); a provider without a fake is disabled.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        DISCORD_TOKEN=fake.bot_token,
        DISCORD_API_BASE=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        DISCORD_DEV_GUILD_ID="",
        DATABASE_URL=database_url,
        NANOBANANA_PRO_API_KEY="",
        APIMART_API_KEY="",
        LISTENHUB_API_KEY="",
        MOUNTSEA_API_KEY="",
        ALLOW_PRIVATE_URLS="true",
        USER_DAILY_LIMIT="0",
        USER_HOURLY_LIMIT="0",
        USER_MAX_CONCURRENT="0",
        POLL_INTERVAL="0.05",
        RETRY_BACKOFF_BASE="0.01",
        LOG_LEVEL="INFO",
    )
    if listenhub is not None:
        env.update(
            LISTENHUB_API_KEY=listenhub.api_key,
            LISTENHUB_BASE_URL=listenhub.base_url,
            LISTENHUB_CONCURRENCY="32",
        )
    if mountsea is not None:
        env.update(
            MOUNTSEA_API_KEY=mountsea.key, MOUNTSEA_BASE_URL=mountsea.base_url, MOUNTSEA_CONCURRENCY="32"
        )
    env.update({key.upper(): str(value) for key, value in settings.items()})
    return env


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


class PaletteProcess:
    """One ``python -m bot [role]`` subprocess, its log in a file (appended to across restarts).

    ``start()`` writes a ``=== start N`` line to the log, spawns the process and waits for the role's
    ready line after it. ``peak_rss`` and ``cpu_s`` are read from ``/proc`` when it is stopped.
    """

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        *,
        role: str | None = None,
        name: str | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.env = env
        self.workdir = workdir
        self.role = role
        self.name = name or role or "bot"
        self.args = list(args)
        self.log_path = workdir / f"{self.name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.peak_rss: int | None = None
        self.cpu_s: float | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "bot", *([self.role] if self.role else []), *self.args]

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, ready_timeout: float = 60, *, wait: bool = True) -> PaletteProcess:
        """Spawn the process; with ``wait``, return once it logged that it is ready."""
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== start {self.starts} {self.name}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=log
            )
        self.peak_rss = self.cpu_s = None
        if wait:
            await self.wait_ready(ready_timeout)
        return self

    async def wait_ready(self, timeout: float = 60, ready: Any = None) -> None:
        """Until the role's ready line is in the log (or ``ready()`` is true); fails at once if the process
        exits or logs a traceback first."""
        marker = re.compile(READY_MARKERS[self.role or "run"])
        deadline = time.monotonic() + timeout
        while not (ready() if ready is not None else marker.search(self.current_log())):
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} was not ready after {timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.02)

    def check_alive(self) -> None:
        """Raise if the process has exited or logged a traceback (during start-up, that means it failed)."""
        if not self.running:
            raise AssertionError(
                f"{self.name} exited (code {self.proc and self.proc.returncode}):\n{self.log_tail()}"
            )
        if "Traceback (most recent call last)" in self.current_log():
            raise AssertionError(f"{self.name} logged a traceback:\n{self.log_tail()}")

    def _read_figures(self) -> None:
        if self.running:
            self.peak_rss = read_vm(self.pid, "VmHWM")
            self.cpu_s = cpu_seconds(self.pid)

    async def kill(self) -> None:
        """SIGKILL: the process dies on the spot (no shutdown code runs)."""
        if self.running:
            assert self.proc is not None
            self._read_figures()
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self._read_figures()
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def current_log(self) -> str:
        """The log since the last start."""
        return self.log_text().split(f"=== start {self.starts} {self.name}\n")[-1]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if " ERROR " in line or " WARNING " in line]


async def start_gateway(proc: PaletteProcess, fake: FakeDiscord, timeout: float = 60) -> GatewaySession:
    """Start (or restart) a process that connects to the gateway (``gateway`` or all-in-one); return its
    new session once that got READY and every GUILD_CREATE, and the slash commands are registered.

    Interactions sent after that reach the bot behind its guilds on the same socket, so there is no need
    to wait for discord.py's ``on_ready``, which first idles ``guild_ready_timeout`` (2 s)."""
    known = set(map(id, fake.gateway.sessions))

    def new_session() -> GatewaySession | None:
        for session in fake.gateway.live_sessions():
            conn = session.connection
            if id(session) not in known and conn is not None and conn.sent_seq >= session.ready_seq:
                return session
        return None

    await proc.start(wait=False)
    await proc.wait_ready(timeout, ready=lambda: new_session() and fake.find_command("imagine"))
    session = new_session()
    assert session is not None
    return session


async def run_cli(
    env: dict[str, str], workdir: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m bot ARGS`` to completion (e.g. ``check-ledger``), output captured."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sqlite_path(database_url: str) -> Path:
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if database_url.startswith(prefix):
            return Path(database_url[len(prefix) :])
    raise ValueError("not a SQLite URL")


async def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of one read-only statement (``?`` placeholders) on SQLite or PostgreSQL, from outside the bot."""
    if database_url.startswith("sqlite"):
        path = sqlite_path(database_url)

        def read() -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
                return [tuple(row) for row in conn.execute(sql, params).fetchall()]

        return await asyncio.to_thread(read)
    import asyncpg

    numbered = sql
    for i in range(len(params)):
        numbered = numbered.replace("?", f"${i + 1}", 1)
    url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(numbered, *params)]
    finally:
        await conn.close()
