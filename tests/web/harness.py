"""The web site in-process (httpx against the ASGI app) with a real REST-only discord.py client and the
loopback fake Discord (its OAuth2 included); images seeded through the storage layer and image store."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bot.presentation.client import WorkerClient
from bot.storage import open_database
from bot.storage.db import Database
from bot.storage.records import Limits, NewJob, NewResult
from bot.web.app import WebContext, create_app
from bot.web.server import build_context
from tests.conftest import make_settings
from tests.fakes.discord import FakeDiscord, point_discord_at
from tests.fakes.discord.models import Channel, Guild, User
from tests.storage.factories import claim_job

BASE = "http://palette.test"


def png(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


@dataclass
class Site:
    fake: FakeDiscord
    db: Database
    ctx: WebContext
    app: Any
    guild: Guild
    channel: Channel
    nsfw_channel: Channel
    owner: User
    alice: User
    bob: User
    outsider: User
    client: WorkerClient

    def browser(self) -> httpx.AsyncClient:
        """A new cookie jar: one person's browser."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE)

    async def login(self, user: User) -> httpx.AsyncClient:
        """Log ``user`` in through the whole OAuth2 round trip (the authorize step on the fake)."""
        web = self.browser()
        self.fake.oauth.approve_as(user)
        start = await web.get("/login?next=/gallery")
        assert start.status_code == 303, start.text
        async with httpx.AsyncClient() as discord_side:
            approved = await discord_side.get(start.headers["location"])
        assert approved.status_code == 302, approved.text
        back = approved.headers["location"]
        assert back.startswith(BASE + "/auth/callback?")
        done = await web.get(back.removeprefix(BASE))
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/gallery"
        return web

    async def seed(
        self,
        user: User,
        prompt: str,
        *,
        channel: Channel | None = None,
        model: str = "nano-banana-2",
        images: int = 1,
        parent: int | None = None,
    ) -> tuple[int, list[int], int]:
        """A delivered job of ``user`` in ``channel`` (the SFW one by default): its Discord message, its
        results rows and stored files. ``(job id, result ids, message id)``."""
        channel = channel or self.channel
        now = time.time()
        job = await self.db.jobs.reserve_job(
            NewJob(
                user_id=user.id, channel_id=channel.id, guild_id=channel.guild_id, kind="imagine",
                model=model, prompt=prompt, count=images, parent_job_id=parent,
                params={"aspect_ratio": "1:1", "nsfw_channel": bool(channel.nsfw)},
            ),
            Limits(), now,
        )  # fmt: skip
        message = self.fake.create_message(channel, {"content": "result"})
        names = [f"palette-{job.id}-{i}.png" for i in range(1, images + 1)]
        await claim_job(self.db, job.id, now)
        await self.db.jobs.finish_job(
            job.id, images, result_message_id=message.id,
            results=[NewResult(filename=n, sha256="0" * 64, width=64, height=48, mime_type="image/png",
                               message_id=message.id, channel_id=channel.id) for n in names],
            now=now,
        )  # fmt: skip
        await self.ctx.store.save(user.id, job.id, [(n, png()) for n in names])
        ids = [r.id for r in await self.db.history.results_for_job(job.id)]
        return job.id, ids, message.id


@contextlib.asynccontextmanager
async def running_site(
    tmp_path: Path, database_url: str | None = None, **overrides: Any
) -> AsyncIterator[Site]:
    async with FakeDiscord() as fake:
        owner = fake.add_user("owner")
        guild = fake.add_guild("Art Club", owner_id=owner.id)
        channel = guild.channels[0]
        nsfw = fake.add_channel(guild, "after-dark", nsfw=True)
        alice, bob, outsider = fake.add_user("alice"), fake.add_user("bob"), fake.add_user("outsider")
        fake.add_member(guild, alice)
        fake.add_member(guild, bob)
        options: dict[str, Any] = {
            "discord_token": fake.bot_token,
            "discord_api_base": fake.api_base,
            "database_url": database_url or f"sqlite:///{tmp_path / 'palette.db'}",
            "data_dir": tmp_path,
            "web_base_url": BASE,
            "discord_client_secret": fake.oauth.client_secret,
            "discord_oauth_url": fake.oauth.authorize_url,
        }
        settings = make_settings(**{**options, **overrides})
        db = await open_database(settings.database_url)
        client = WorkerClient(settings, db)
        with point_discord_at(fake):
            await client.login(fake.bot_token)
            ctx = build_context(settings, db, client, client.application_id)
            try:
                yield Site(
                    fake, db, ctx, create_app(ctx), guild, channel, nsfw, owner, alice, bob, outsider, client
                )
            finally:
                await client.modlog.drain(timeout=5)
                await ctx.oauth.aclose()
                await client.close()
                await db.close()
