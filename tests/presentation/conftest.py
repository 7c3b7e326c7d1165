"""End-to-end harness: the real bot (real discord.py) against the loopback fake Discord and fake providers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.app import create_bot, shutdown
from bot.presentation.client import PaletteBot
from tests.conftest import make_settings
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord.client import point_discord_at
from tests.fakes.providers.listenhub import FakeListenHub
from tests.fakes.providers.mountsea import FakeMountsea


@dataclass
class Palette:
    """A running bot and the fakes around it."""

    fake: FakeDiscord
    listenhub: FakeListenHub
    mountsea: FakeMountsea
    bot: PaletteBot
    guild: Any
    channel: Any
    users: list[Any] = field(default_factory=list)
    tmp_path: Path = Path()

    @property
    def alice(self) -> Any:
        return self.users[0]

    @property
    def bob(self) -> Any:
        return self.users[1]

    async def imagine(self, user: Any, prompt: str, channel: Any = None, **options: Any) -> Any:
        return await self.fake.invoke_slash(
            user, channel or self.channel, "imagine", options={"prompt": prompt, **options}
        )

    async def edit(self, user: Any, prompt: str, images: list[Any], **options: Any) -> Any:
        names = ["image", "image2", "image3", "image4"]
        values = {"prompt": prompt, **dict(zip(names, images, strict=False)), **options}
        return await self.fake.invoke_slash(user, self.channel, "edit", options=values, attachments=images)

    async def fill_modal(self, ix: Any, user: Any, texts: list[str]) -> Any:
        """Answer the modal ``ix`` opened, typing ``texts`` into its text inputs in order."""
        await ix.wait_for(lambda i: i.modal is not None, timeout=5)
        inputs = text_inputs(ix.modal)
        values = {c["custom_id"]: text for c, text in zip(inputs, texts, strict=False)}
        channel = self.fake.channels[ix.channel_id]
        source = self.fake.messages.get(ix.source_message_id) if ix.source_message_id else None
        return await self.fake.submit_modal(user, channel, ix.modal["custom_id"], values, message=source)

    def button(self, message: Any, action: str) -> str:
        for component in message.iter_components():
            custom_id = component.get("custom_id", "")
            if custom_id.startswith(f"palette:{action}:"):
                return custom_id
        raise AssertionError(f"no {action} button on message {message.id}")

    async def job_of(self, message: Any, timeout: float = 10) -> Any:
        """The job behind a result message, once it is settled (the ledger is written after posting)."""
        job_id = int(self.button(message, "reroll").rsplit(":", 1)[1])
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = await self.bot.db.jobs.get_job(job_id)
            if job is None or job.status not in ("queued", "running"):
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status}")
            await asyncio.sleep(0.01)

    async def result_message(self, ix: Any, timeout: float = 15) -> Any:
        """Wait until the interaction's status message carries the result files."""
        return await ix.wait_for_message(lambda m: bool(m.files) and not m.deleted, timeout=timeout)

    async def idle(self, timeout: float = 15) -> None:
        await self.bot.jobs.wait_idle(timeout)

    # --- moderation helpers (issue 4) ---

    def member(self, name: str, *, permissions: int | None = None, roles: tuple[Any, ...] = ()) -> Any:
        """A new member of the test server (``permissions``: a role of their own with those bits)."""
        user = self.fake.add_user(name=name)
        self.fake.add_member(self.guild, user, roles=[r.id for r in roles], permissions=permissions)
        return user

    async def admin(self, who: Any, subcommand: str, /, *, where: Any = None, **options: Any) -> Any:
        """Invoke ``/palette <subcommand>`` as ``who`` (``"blocklist add"`` for the subgroup)."""
        return await self.fake.invoke_slash(
            who, where or self.channel, "palette", options=options, subcommand=subcommand
        )

    async def reply(self, ix: Any, timeout: float = 10) -> str:
        """The text of the first answer to ``ix`` (a response message or a followup), once there is one."""

        def text(i: Any) -> str | None:
            for r in i.responses:
                content = (r.get("data") or {}).get("content")
                if content:
                    return str(content)
            for m in i.followups:
                if m.content:
                    return str(m.content)
            if i.original is not None and i.original.content and not i.original.loading:
                return str(i.original.content)
            return None

        return await ix.wait_for(text, timeout)

    async def modlog_entry(self, channel: Any, title: str, timeout: float = 10) -> Any:
        """The first message in ``channel`` whose embed title contains ``title`` (waits for it)."""

        def find() -> Any:
            for m in self.fake.channel_messages(channel):
                if m.embeds and title in m.embeds[0].get("title", ""):
                    return m
            return None

        return await self.fake.wait_for_state(find, timeout, f"mod-log entry {title!r}")


def text_inputs(component: Any) -> list[dict[str, Any]]:
    """Text inputs (type 4) of a modal, whether in action rows or label components, in order."""
    found: list[dict[str, Any]] = []
    if isinstance(component, dict):
        if component.get("type") == 4:
            found.append(component)
        for key in ("components", "component"):
            child = component.get(key)
            if isinstance(child, list):
                for c in child:
                    found.extend(text_inputs(c))
            elif isinstance(child, dict):
                found.extend(text_inputs(child))
    return found


@contextlib.asynccontextmanager
async def running_palette(
    tmp_path: Path, *, users: int = 2, role: str = "all", **overrides: Any
) -> AsyncIterator[Palette]:
    """The real bot against the fakes. ``database_url=`` picks the database (a SQLite file in
    ``tmp_path`` by default); ``role="gateway"`` starts the gateway alone (run a worker beside it)."""
    async with FakeDiscord() as fake, FakeListenHub() as listenhub, FakeMountsea(polls=1) as mountsea:
        guild = fake.add_guild(name="Palette Test")
        channel = (
            guild.channels[0] if getattr(guild, "channels", None) else fake.add_channel(guild, name="art")
        )
        people = []
        for i in range(users):
            user = fake.add_user(name=f"user{i}")
            fake.add_member(guild, user)
            people.append(user)
        settings_kw: dict[str, Any] = {
            "discord_token": fake.bot_token,
            "discord_api_base": fake.api_base,
            "discord_gateway_url": fake.gateway_url,
            "database_url": f"sqlite:///{tmp_path / 'palette.db'}",
            "listenhub_api_key": listenhub.api_key,
            "listenhub_base_url": listenhub.base_url,
            "mountsea_api_key": mountsea.key,
            "mountsea_base_url": mountsea.base_url,
        }
        settings_kw.update(overrides)
        settings = make_settings(**settings_kw)
        with point_discord_at(fake):
            bot = await create_bot(settings, role=role, guild_ready_timeout=0.05)
            task = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
            try:
                ready = asyncio.create_task(bot.wait_until_ready())
                await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    ready.cancel()
                    task.result()  # the bot died during start-up: show why
                    raise RuntimeError("the bot stopped during start-up")
                if not ready.done():
                    ready.cancel()
                    raise TimeoutError("the bot did not become ready")
                yield Palette(fake, listenhub, mountsea, bot, guild, channel, people, tmp_path)
            finally:
                await shutdown(bot)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 10)


@pytest.fixture
async def palette(tmp_path: Path) -> AsyncIterator[Palette]:
    async with running_palette(tmp_path) as running:
        yield running
