"""Nothing Palette posts can ping @everyone, a role or a user, except the requester when Palette means to."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.presentation.conftest import Palette


def evil_text(palette: Palette, role: Any) -> str:
    return f"@everyone @here <@&{role.id}> <@{palette.bob.id}> <@!{palette.bob.id}>"


def pinged_users(message: Any) -> list[int]:
    return [int(u["id"]) for u in message.mentions]


async def test_a_provider_error_cannot_ping_anyone(palette: Palette) -> None:
    role = palette.fake.add_role(palette.guild, "everyone-in-disguise")
    palette.listenhub.script(400, {"error": "rejected: " + evil_text(palette, role)})
    ix = await palette.imagine(palette.alice, "a tram")
    await ix.wait_for(lambda i: bool(i.original and "❌" in (i.original.content or "")), timeout=15)
    status = ix.original
    assert "@everyone" in status.content and f"<@&{role.id}>" in status.content  # the wording is shown ...
    assert status.allowed_mentions == {"parse": []}  # ... but pings nobody
    assert not status.mention_everyone and status.mention_roles == [] and status.mentions == []


async def test_the_prompt_cannot_ping_anyone_either(palette: Palette) -> None:
    role = palette.fake.add_role(palette.guild, "artists")
    ix = await palette.imagine(palette.alice, "a poster saying " + evil_text(palette, role))
    await palette.result_message(ix)
    await palette.idle()
    for message in [ix.original, *ix.followups]:
        assert message.allowed_mentions is not None and message.allowed_mentions.get("parse") == []
        assert not message.mention_everyone and message.mention_roles == [] and message.mentions == []


async def test_in_the_channel_only_the_requester_is_pinged(palette: Palette) -> None:
    """When the interaction token has expired, the failure is posted in the channel with a mention of
    the requester: that one ping is meant, none from the provider's wording."""
    role = palette.fake.add_role(palette.guild, "artists")
    answer = asyncio.Event()
    palette.listenhub.script(400, {"error": "rejected: " + evil_text(palette, role)}, gate=answer)
    ix = await palette.imagine(palette.alice, "a tram")
    await ix.wait_for(lambda i: bool(i.original and "Generating" in (i.original.content or "")), timeout=10)
    palette.fake.expire_token(ix)
    answer.set()
    message = await palette.fake.wait_for_message(
        lambda m: m.channel_id == palette.channel.id and "❌" in m.content and m.id != ix.original.id,
        timeout=15,
    )
    assert message.content.startswith(f"<@{palette.alice.id}>") and "@everyone" in message.content
    assert message.allowed_mentions is not None
    assert message.allowed_mentions.get("parse") == []
    assert [int(u) for u in message.allowed_mentions.get("users", [])] == [palette.alice.id]
    assert pinged_users(message) == [palette.alice.id]
    assert not message.mention_everyone and message.mention_roles == []
