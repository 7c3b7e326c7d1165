"""Report and blocked-prompt floods: one report per member per result, a per-member rate on blocked-prompt
entries in the mod log with a summary of the rest (issue 13, item 7)."""

from __future__ import annotations

import time
from typing import Any

from bot.moderation import modlog
from tests.presentation.conftest import Palette
from tests.presentation.test_moderation import setup_modlog


def fields_of(message: Any) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0].get("fields", [])}


def entries(palette: Palette, channel: Any, title: str) -> list[Any]:
    return [
        m
        for m in palette.fake.channel_messages(channel)
        if m.embeds and title in m.embeds[0].get("title", "")
    ]


async def test_one_report_per_member_per_result(palette: Palette) -> None:
    _, log_channel = await setup_modlog(palette)
    message = await palette.result_message(await palette.imagine(palette.alice, "a contested painting"))
    job = await palette.job_of(message)
    report_id = palette.button(message, "report")
    clicks = [await palette.fake.click_button(palette.bob, message, report_id) for _ in range(20)]
    replies = [await palette.reply(click) for click in clicks]
    assert all(click.ephemeral for click in clicks)
    assert sum(r.startswith("Thanks") for r in replies) == 1
    assert sum("already reported" in r for r in replies) == 19
    await palette.bot.modlog.drain()
    assert len(await palette.bot.db.moderation.reports_for_job(job.id)) == 1
    assert len(entries(palette, log_channel, "Reported result")) == 1
    # Someone else's report still counts.
    carol = palette.member("carol")
    assert (await palette.reply(await palette.fake.click_button(carol, message, report_id))).startswith(
        "Thanks"
    )
    await palette.bot.modlog.drain()
    assert [r.reporter_id for r in await palette.bot.db.moderation.reports_for_job(job.id)] == [
        palette.bob.id,
        carol.id,
    ]
    assert len(entries(palette, log_channel, "Reported result")) == 2


async def test_a_flood_of_blocked_prompts_is_summed_up_in_the_mod_log(palette: Palette) -> None:
    manager, log_channel = await setup_modlog(palette)
    await palette.reply(await palette.admin(manager, "blocklist add", pattern="gore"))
    assert "off" in await palette.reply(await palette.admin(manager, "autoban", hits=0))
    now = [time.time()]
    palette.bot.moderation.clock = lambda: now[0]
    limit = modlog.BLOCKED_SHOWN_PER_USER
    for i in range(10):
        assert "isn't allowed" in await palette.reply(await palette.imagine(palette.alice, f"gore {i}"))
    # Someone else's refusal is shown: the limit is per member.
    assert "isn't allowed" in await palette.reply(await palette.imagine(palette.bob, "gore"))
    await palette.bot.modlog.drain()
    blocked = entries(palette, log_channel, "Blocked prompt")
    mine = [m for m in blocked if str(palette.alice.id) in fields_of(m)["User"]]
    assert len(mine) == limit and len(blocked) == limit + 1
    assert not any("Not shown" in fields_of(m) for m in blocked)
    # Every refusal is still recorded (auto-ban counts them).
    assert await palette.bot.db.fetchval("SELECT COUNT(*) FROM blocked_attempts") == 11

    now[0] += modlog.BLOCKED_WINDOW_SECONDS + 1
    assert "isn't allowed" in await palette.reply(await palette.imagine(palette.alice, "gore again"))
    await palette.bot.modlog.drain()
    latest = [m for m in entries(palette, log_channel, "Blocked prompt") if m not in blocked]
    assert len(latest) == 1
    assert fields_of(latest[0])["Not shown"] == (
        f"{10 - limit} more blocked prompts from <@{palette.alice.id}> were not shown"
    )
    assert "gore again" in fields_of(latest[0])["Prompt"]
