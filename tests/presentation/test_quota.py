"""/quota and the limits behind it, end to end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.presentation.conftest import Palette, running_palette


def field(message, name: str) -> str:
    return next(f["value"] for f in message.embeds[0]["fields"] if f["name"] == name)


async def quota(palette: Palette, user) -> object:
    ix = await palette.fake.invoke_slash(user, palette.channel, "quota")
    await ix.wait_for(lambda i: bool(i.original and i.original.embeds), timeout=10)
    assert ix.ephemeral
    return ix.original


async def test_quota_before_and_after_usage(palette: Palette) -> None:
    before = await quota(palette, palette.alice)
    assert "**25** of 25 left" in field(before, "Today (24 h)")
    assert "**10** of 10 left" in field(before, "This hour")
    ix = await palette.imagine(palette.alice, "a boat", count=2)
    await palette.result_message(ix)
    await palette.idle()
    after = await quota(palette, palette.alice)
    assert "**23** of 25 left" in field(after, "Today (24 h)")
    assert "<t:" in field(after, "Today (24 h)")  # when it frees up, as a Discord timestamp
    # Bob's quota is his own.
    assert "**25** of 25 left" in field(await quota(palette, palette.bob), "Today (24 h)")


async def test_over_the_limit_is_refused_privately_and_costs_nothing(tmp_path: Path) -> None:
    async with running_palette(tmp_path, user_daily_limit=1, user_hourly_limit=0) as palette:
        first = await palette.imagine(palette.alice, "one")
        await palette.result_message(first)
        second = await palette.imagine(palette.alice, "two")
        await second.wait_for(lambda i: any(m.flags & 64 for m in i.followups), timeout=10)
        error = next(m for m in second.followups if m.flags & 64)
        assert "1 of your 1" in error.content or "limit" in error.content.lower()
        assert palette.listenhub.calls["generate"] == 1
        report = await palette.bot.db.jobs.ledger_balance()
        assert report.balanced and report.reserved == 1


async def test_concurrent_requests_never_overspend(tmp_path: Path) -> None:
    async with running_palette(
        tmp_path, user_daily_limit=3, user_hourly_limit=0, user_max_concurrent=0
    ) as palette:
        interactions = await asyncio.gather(*(palette.imagine(palette.alice, f"cat {i}") for i in range(8)))
        for ix in interactions:
            await ix.wait_for(
                lambda i: bool(i.followups) or bool(i.original and i.original.files), timeout=15
            )
        await palette.idle()
        delivered = [
            ix for ix in interactions if ix.original and ix.original.files and not ix.original.deleted
        ]
        refused = [ix for ix in interactions if any(m.flags & 64 for m in ix.followups)]
        assert len(delivered) == 3 and len(refused) == 5
        assert palette.listenhub.calls["generate"] == 3
        usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time())
        assert usage.daily_used == 3
