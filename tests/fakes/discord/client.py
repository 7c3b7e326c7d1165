"""Helpers that run a real discord.py client against a :class:`FakeDiscord`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import discord
import discord.gateway
import discord.http
import yarl

from .server import FakeDiscord

ClientT = TypeVar("ClientT", bound=discord.Client)


@contextlib.contextmanager
def point_discord_at(fake: FakeDiscord) -> Iterator[None]:
    """Point discord.py's global endpoints at ``fake`` and restore them afterwards.

    Sets ``discord.http.Route.BASE`` in place (the webhook module imported ``Route`` at import
    time, so replacing the class would miss interaction callbacks/followups) and
    ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (a ``yarl.URL``).
    """
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@contextlib.asynccontextmanager
async def running_client(
    fake: FakeDiscord,
    client: ClientT,
    *,
    token: str | None = None,
    ready_timeout: float = 15,
) -> AsyncIterator[ClientT]:
    """Run ``client.start(token)`` against ``fake`` until the block exits.

    Waits for discord.py's ``ready`` event (tip: construct the client with a small
    ``guild_ready_timeout``, e.g. ``0.05``, otherwise discord.py idles 2 s after the last
    GUILD_CREATE), then yields the client. On exit the client is closed, its task awaited and
    discord.py's global endpoints restored. If the client dies during startup its exception is
    raised.
    """
    with point_discord_at(fake):
        task = asyncio.create_task(client.start(token or fake.bot_token), name="discord-client")
        try:
            ready = asyncio.create_task(client.wait_until_ready())
            done, _ = await asyncio.wait(
                {task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if ready not in done:
                ready.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ready
                if task in done:
                    task.result()  # re-raise the startup failure
                    raise RuntimeError("discord client stopped before becoming ready")
                raise TimeoutError(f"discord client not ready after {ready_timeout}s")
            yield client
        finally:
            await client.close()
            try:
                async with asyncio.timeout(10):
                    await task
            except (asyncio.CancelledError, Exception):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
