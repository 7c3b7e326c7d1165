"""The fake Discord's shards: ``GET /gateway/bot``, READY and GUILD_CREATEs per shard, events routed to the
shard of their server (DMs to shard 0) and identify buckets enforced like Discord's ``max_concurrency``.
Proved with raw websockets (what is sent, exactly) and with discord.py's real AutoShardedClient."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import discord

from tests.fakes.discord import FakeDiscord, running_client

IDENTIFY, INVALID_SESSION, HELLO = 2, 9, 10


async def identify(
    session: aiohttp.ClientSession, fake: FakeDiscord, shard: list[int]
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Open a socket, IDENTIFY with ``shard``; the first frame answered after it."""
    ws = await session.ws_connect(fake.gateway_url + "?v=10&encoding=json")
    hello = json.loads((await ws.receive()).data)
    assert hello["op"] == HELLO
    await ws.send_str(
        json.dumps(
            {
                "op": IDENTIFY,
                "d": {
                    "token": fake.bot_token,
                    "intents": 1 | 1 << 9 | 1 << 12,
                    "shard": shard,
                    "properties": {},
                },
            }
        )
    )
    return ws, json.loads((await ws.receive(timeout=5)).data)


async def frames_until(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    return [json.loads((await ws.receive(timeout=5)).data) for _ in range(count)]


async def test_gateway_bot_names_shards_and_session_start_limits() -> None:
    async with FakeDiscord() as fake, aiohttp.ClientSession() as http:
        fake.gateway.recommended_shards, fake.gateway.max_concurrency = 4, 2
        headers = {"Authorization": f"Bot {fake.bot_token}"}
        async with http.get(fake.api_base + "/gateway/bot", headers=headers) as response:
            body = await response.json()
        assert body["shards"] == 4
        assert body["session_start_limit"]["max_concurrency"] == 2
        assert body["session_start_limit"]["remaining"] == body["session_start_limit"]["total"]


async def test_each_shard_gets_its_own_guilds_and_events_dms_go_to_shard_zero() -> None:
    async with FakeDiscord() as fake, aiohttp.ClientSession() as http:
        on = {i: fake.add_guild(name=f"on {i}", shard=(i, 2)) for i in (0, 1)}
        assert all((g.id >> 22) % 2 == i for i, g in on.items())
        user = fake.add_user("sam")
        for guild in on.values():
            fake.add_member(guild, user)
        fake.gateway.max_concurrency = 2  # two buckets: both shards may identify at once
        (ws0, ready0), (ws1, ready1) = await asyncio.gather(
            identify(http, fake, [0, 2]), identify(http, fake, [1, 2])
        )
        for i, ready in enumerate((ready0, ready1)):
            assert ready["t"] == "READY" and ready["d"]["shard"] == [i, 2]
            assert [g["id"] for g in ready["d"]["guilds"]] == [str(on[i].id)]
        (create0,) = await frames_until(ws0, 1)
        (create1,) = await frames_until(ws1, 1)
        assert (create0["t"], create0["d"]["id"]) == ("GUILD_CREATE", str(on[0].id))
        assert (create1["t"], create1["d"]["id"]) == ("GUILD_CREATE", str(on[1].id))

        fake.post_user_message(user, on[1].channels[0], "on shard one")
        fake.post_user_message(user, fake.add_dm_channel(user), "a DM")
        fake.post_user_message(user, on[0].channels[0], "on shard zero")
        shard0 = (
            fake.gateway.sessions[0] if fake.gateway.sessions[0].shard == [0, 2] else fake.gateway.sessions[1]
        )
        shard1 = fake.gateway.sessions[1] if shard0 is fake.gateway.sessions[0] else fake.gateway.sessions[0]

        def contents(session: Any) -> list[str]:
            return [e["d"].get("content") for e in session.events if e["t"] == "MESSAGE_CREATE"]

        # The fake strips content without the intent; the channel tells which message went where.
        def channels(session: Any) -> list[str]:
            return [e["d"]["channel_id"] for e in session.events if e["t"] == "MESSAGE_CREATE"]

        dm = fake.add_dm_channel(user)
        assert channels(shard0) == [str(dm.id), str(on[0].channels[0].id)], contents(shard0)
        assert channels(shard1) == [str(on[1].channels[0].id)]
        await ws0.close()
        await ws1.close()


async def test_identifies_faster_than_max_concurrency_allows_are_refused() -> None:
    async with FakeDiscord() as fake, aiohttp.ClientSession() as http:
        fake.gateway.identify_window = 5.0
        fake.gateway.max_concurrency = 1
        ws0, first = await identify(http, fake, [0, 2])
        assert first["t"] == "READY"
        # Same bucket (1 % 1 == 0 % 1), within 5 s: INVALID_SESSION, not resumable; no session made.
        ws1, second = await identify(http, fake, [1, 2])
        assert second["op"] == INVALID_SESSION and second["d"] is False
        assert fake.gateway.identify_refusals == 1 and fake.identify_count == 1
        # With two buckets shard 1 has its own turn.
        fake.gateway.max_concurrency = 2
        ws2, third = await identify(http, fake, [1, 2])
        assert third["t"] == "READY" and fake.identify_count == 2
        for ws in (ws0, ws1, ws2):
            await ws.close()


class NoWaitShardedClient(discord.AutoShardedClient):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every identify but the first; three buckets need no wait."""


async def test_discord_py_auto_sharded_client_connects_every_shard() -> None:
    async with FakeDiscord() as fake:
        guilds = [fake.add_guild(name=f"g{i}", shard=(i, 3)) for i in range(3)]
        fake.gateway.max_concurrency = 3
        client = NoWaitShardedClient(
            intents=discord.Intents.none() | discord.Intents(guilds=True),
            shard_count=3,
            guild_ready_timeout=0.05,
        )
        async with running_client(fake, client):
            assert sorted(client.shards) == [0, 1, 2]
            assert {g.id: g.shard_id for g in client.guilds} == {g.id: i for i, g in enumerate(guilds)}
            shards = sorted(s.shard[0] for s in fake.gateway.live_sessions())
            assert shards == [0, 1, 2]
