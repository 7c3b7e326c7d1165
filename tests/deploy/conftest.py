"""A deployment of real Palette processes (gateways and workers, one database) against the loopback fakes.

The fakes (Discord REST + gateway, ListenHub, Mountsea) run in the test process; every bot role is a
``python -m bot <role>`` subprocess configured through its environment, as in production. The database
is a SQLite file or a fresh PostgreSQL database (``database_url`` fixture from tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.discord import FakeDiscord, GatewaySession, Interaction, Message
from tests.fakes.processes import PaletteProcess, palette_env, query, run_cli, start_gateway
from tests.fakes.providers.listenhub import FakeListenHub
from tests.fakes.providers.mountsea import FakeMountsea

LISTENHUB_MODEL = "nano-banana-pro"  # a synchronous provider: one long HTTP call
MOUNTSEA_MODEL = "nano-banana"  # a task provider: submit, then poll the task id

#: Settings every process of a test deployment gets (a dead worker's jobs are taken over after 2 s).
DEPLOY_SETTINGS: dict[str, object] = {
    "JOB_LEASE_SECONDS": 2,
    "SHUTDOWN_GRACE": 2,
}


def final(ix: Interaction) -> bool:
    """The job behind ``ix`` reached its end: the result is posted, or an error replaced the status."""
    original = ix.original
    return bool(original and (original.files or "❌" in (original.content or "")))


def answer_text(ix: Interaction) -> str | None:
    """The first words the bot answered ``ix`` with (a response, a followup, or the edited original)."""
    for response in ix.responses:
        content = (response.get("data") or {}).get("content")
        if content:
            return str(content)
    for message in ix.followups:
        if message.content:
            return str(message.content)
    if ix.original is not None and ix.original.content and not ix.original.loading:
        return str(ix.original.content)
    return None


@dataclass
class Deployment:
    tmp_path: Path
    database_url: str
    fake: FakeDiscord
    listenhub: FakeListenHub
    mountsea: FakeMountsea
    env: dict[str, str]
    guild: Any
    channel: Any
    users: list[Any]
    processes: list[PaletteProcess] = field(default_factory=list)
    #: The gateway session each gateway process identified with (by process name), latest start.
    sessions: dict[str, GatewaySession] = field(default_factory=dict)

    # ------------------------------------------------------------------ processes

    def process(self, role: str, name: str | None = None, **settings: object) -> PaletteProcess:
        env = dict(self.env)
        env.update({key.upper(): str(value) for key, value in settings.items()})
        proc = PaletteProcess(env, self.tmp_path, role=role, name=name or role)
        self.processes.append(proc)
        return proc

    async def gateway(self, name: str = "gateway", **settings: object) -> PaletteProcess:
        """Start a gateway process and wait until it is connected and its commands are registered."""
        return await self.start_gateway(self.process("gateway", name, **settings))

    async def start_gateway(self, proc: PaletteProcess) -> PaletteProcess:
        """Start (or restart) a gateway; ready once its new session has its guilds (see start_gateway)."""
        self.sessions[proc.name] = await start_gateway(proc, self.fake)
        return proc

    async def workers(self, n: int, **settings: object) -> list[PaletteProcess]:
        """Start ``n`` worker processes at once (worker-1 ... worker-n) and wait until all are ready."""
        procs = [self.process("worker", f"worker-{i + 1}", **settings) for i in range(n)]
        await asyncio.gather(*(p.start() for p in procs))
        return procs

    async def stop_all(self) -> None:
        self.listenhub.release_all()
        self.mountsea.hold_tasks = False
        await asyncio.gather(*(p.stop() for p in self.processes), return_exceptions=True)

    # ------------------------------------------------------------------ commands

    async def imagine(
        self, user: Any, prompt: str, *, via: GatewaySession | None = None, **options: Any
    ) -> Interaction:
        return await self.fake.invoke_slash(
            user, self.channel, "imagine", options={"prompt": prompt, **options}, via=via
        )

    async def admin(
        self, who: Any, subcommand: str, /, *, via: GatewaySession | None = None, **options: Any
    ) -> Interaction:
        """``/palette <subcommand>`` as ``who``."""
        return await self.fake.invoke_slash(
            who, self.channel, "palette", options=options, subcommand=subcommand, via=via
        )

    async def reply(self, ix: Interaction, timeout: float = 15) -> str:
        return await ix.wait_for(answer_text, timeout)

    async def all_final(self, interactions: Iterable[Interaction], timeout: float = 60) -> None:
        for ix in interactions:
            await ix.wait_for(final, timeout)

    def results(self) -> list[Message]:
        """Every message carrying images in the test channel (each result must appear once)."""
        return [m for m in self.fake.channel_messages(self.channel) if m.files and not m.deleted]

    def button(self, message: Message, action: str) -> str:
        for component in message.iter_components():
            custom_id = str(component.get("custom_id", ""))
            if custom_id.startswith(f"palette:{action}:"):
                return custom_id
        raise AssertionError(f"no {action} button on message {message.id}")

    # ------------------------------------------------------------------ database and CLI

    async def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return await query(self.database_url, sql, *params)

    async def scalar(self, sql: str, *params: Any) -> Any:
        rows = await self.query(sql, *params)
        return rows[0][0] if rows else None

    async def wait_db(self, sql: str, predicate: Callable[[Any], bool], timeout: float = 30) -> Any:
        """Poll ``sql`` (one value) until ``predicate(value)``; the database does not wake the test."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.scalar(sql)
            if predicate(value):
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{sql!r} is still {value!r} after {timeout} s\n{self.log_tails()}")
            await asyncio.sleep(0.05)

    async def check_ledger(self) -> None:
        check = await run_cli(self.env, self.tmp_path, "check-ledger")
        assert check.returncode == 0, check.stdout + check.stderr

    # ------------------------------------------------------------------ logs

    def log_tails(self, lines: int = 25) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(lines)}" for p in self.processes)

    def assert_clean_logs(self) -> None:
        """No secret in any log; no traceback outside the processes the test killed on purpose."""
        secrets = (self.fake.bot_token, self.listenhub.api_key, self.mountsea.key)
        for proc in self.processes:
            text = proc.log_text()
            for secret in secrets:
                assert secret not in text, f"a secret is in {proc.name}'s log"
            assert "Traceback" not in text, f"{proc.name}:\n{proc.log_tail(60)}"


@contextlib.asynccontextmanager
async def deployment(
    tmp_path: Path, database_url: str, *, users: int = 3, **settings: object
) -> AsyncIterator[Deployment]:
    """The fakes and an empty database; processes are started by the test and stopped on the way out."""
    async with FakeDiscord() as fake, FakeListenHub() as listenhub, FakeMountsea(polls=2) as mountsea:
        guild = fake.add_guild(name="Deploy Test")
        channel = guild.channels[0]
        people = []
        for i in range(users):
            user = fake.add_user(name=f"user{i}")
            fake.add_member(guild, user)
            people.append(user)
        env = palette_env(
            fake,
            database_url=database_url,
            listenhub=listenhub,
            mountsea=mountsea,
            **{**DEPLOY_SETTINGS, **settings},
        )
        d = Deployment(tmp_path, database_url, fake, listenhub, mountsea, env, guild, channel, people)
        try:
            yield d
        finally:
            await d.stop_all()
