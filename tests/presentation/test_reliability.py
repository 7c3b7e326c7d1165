"""Failures, refusals, refunds, oversized results, restarts and load, end to end."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from PIL import Image

from bot.ops import metrics
from tests.fakes.http import noisy_png
from tests.presentation.conftest import Palette, running_palette


async def status_text(ix, needle: str, timeout: float = 15) -> str:
    await ix.wait_for(lambda i: bool(i.original and needle in (i.original.content or "")), timeout=timeout)
    return ix.original.content


async def test_provider_failure_is_refunded_with_a_clear_message(tmp_path: Path) -> None:
    async with running_palette(tmp_path, mountsea_api_key=None) as palette:  # no route to fail over to
        palette.listenhub.script(402, {"error": "Insufficient credits"}, times=None)
        ix = await palette.imagine(palette.alice, "a castle", model="gpt-image-2")
        text = await status_text(ix, "❌")
        await palette.idle()
        assert "out of credits" in text and "refunded" in text
        assert palette.listenhub.api_key not in text
        usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time())
        assert usage.daily_used == 0 and usage.in_flight == 0


async def test_an_account_out_of_credits_fails_over_to_another_provider(palette: Palette) -> None:
    palette.listenhub.script(402, {"error": "Insufficient credits"}, times=None)
    message = await palette.result_message(
        await palette.imagine(palette.alice, "a castle", model="gpt-image-2")
    )
    assert palette.mountsea.submit_calls == 1
    assert (await palette.job_of(message)).committed == 1


async def test_a_provider_that_stays_down_opens_its_breaker(tmp_path: Path) -> None:
    async with running_palette(
        tmp_path, breaker_failures=2, breaker_cooldown=300, user_hourly_limit=0
    ) as palette:
        palette.listenhub.script(500, {"error": "down"}, times=None)
        for i in range(4):
            await palette.result_message(await palette.imagine(palette.alice, f"tram {i}"))
        await palette.idle()
        # Two failed jobs open the breaker (each tried 1 + 3 retries); later jobs skip ListenHub entirely.
        assert palette.listenhub.calls["generate"] == 2 * 4
        assert palette.mountsea.submit_calls == 4
        # The breaker is the deployment's (shared through the database), not this process's.
        snapshot = {s.provider: s for s in await palette.bot.generator.health_snapshot()}["listenhub"]
        assert snapshot.state == "open" and snapshot.error_rate == 1.0


async def test_safety_refusal_is_refunded(palette: Palette) -> None:
    palette.listenhub.script_refusal("finish", "IMAGE_SAFETY")
    ix = await palette.imagine(palette.alice, "something the filter dislikes")
    text = await status_text(ix, "❌")
    await palette.idle()
    assert "declined" in text and "rephrasing" in text
    assert palette.mountsea.submit_calls == 0  # a refusal is not retried elsewhere
    assert (await palette.bot.db.jobs.usage(palette.alice.id, time.time())).daily_used == 0


async def test_a_failing_route_hands_the_job_to_the_next_one(palette: Palette) -> None:
    palette.listenhub.script(500, {"error": "generation failed"}, times=None)
    ix = await palette.imagine(palette.alice, "a tram")
    message = await palette.result_message(ix)
    assert palette.mountsea.submit_calls == 1
    assert "nano-banana-pro" in message.embeds[0]["footer"]["text"]
    job = await palette.job_of(message)
    assert job.committed == 1


async def test_a_4k_result_fits_a_10_mib_upload_limit(palette: Palette) -> None:
    big = noisy_png(4096, 4096)
    assert len(big) > 10 * 1024 * 1024
    palette.listenhub.make_image = lambda width, height: big  # type: ignore[method-assign]
    ix = await palette.imagine(palette.alice, "static", resolution="4K")
    message = await palette.result_message(ix, timeout=40)
    (_name, data, _ctype) = message.files[0]
    assert len(data) <= 10 * 1024 * 1024
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.width >= 1024 and img.width == img.height
    assert not [e for e in ix.errors if e.get("code") == 40005]


async def test_buttons_and_sync_survive_a_restart(tmp_path: Path) -> None:
    async with running_palette(tmp_path) as palette:
        message = await palette.result_message(await palette.imagine(palette.alice, "before restart"))
        await palette.idle()
        puts = palette.fake.command_puts
        bot = palette.bot
        from bot.app import create_bot, shutdown

        await shutdown(bot)
        restarted = await create_bot(bot.settings, guild_ready_timeout=0.05)
        task = asyncio.create_task(restarted.start(bot.settings.discord_token.get_secret_value()))
        try:
            await asyncio.wait_for(restarted.wait_until_ready(), 15)
            palette.bot = restarted
            assert palette.fake.command_puts == puts  # unchanged commands are not re-synced
            click = await palette.fake.click_button(palette.alice, message, palette.button(message, "reroll"))
            await palette.result_message(click)
            assert palette.listenhub.generate_requests[-1].json["prompt"] == "before restart"
        finally:
            await shutdown(restarted)
            await asyncio.wait_for(task, 10)


async def test_twenty_jobs_from_five_users_complete_fairly(tmp_path: Path) -> None:
    async with running_palette(
        tmp_path, users=5, listenhub_concurrency=2, user_hourly_limit=0, user_max_concurrent=0
    ) as palette:
        palette.listenhub.processing_delay = 0.4  # long enough for all 20 commands to be queued
        interactions = []
        for user_index, user in enumerate(palette.users):
            for n in range(4):
                interactions.append(await palette.imagine(user, f"u{user_index} job {n}"))
        await asyncio.gather(*(palette.result_message(ix, timeout=60) for ix in interactions))
        await palette.idle()
        order = [r.json["prompt"].split()[0] for r in palette.listenhub.generate_requests]
        assert len(order) == 20 and all(order.count(f"u{i}") == 4 for i in range(5))
        # Round-robin: every user is served within the first 2 + 5 starts, although user 4 queued last.
        first_seen = {user: order.index(user) for user in set(order)}
        assert max(first_seen.values()) < 7, order


async def test_an_upload_refused_as_too_large_is_reencoded_smaller(palette: Palette) -> None:
    big = noisy_png(1024, 1024)
    palette.listenhub.make_image = lambda width, height: big  # type: ignore[method-assign]
    palette.listenhub.processing_delay = 0.3
    ix = await palette.imagine(palette.alice, "noise")
    await ix.wait_for(lambda i: bool(i.original and "Generating" in (i.original.content or "")), timeout=10)
    # Discord answers 40005 once although the estimate fit (e.g. a proxy with a smaller limit).
    palette.fake.fail_next(
        "PATCH", r"/webhooks/.*/messages/", 413, {"code": 40005, "message": "Request entity too large"}
    )
    message = await palette.result_message(ix)
    (_name, data, _ctype) = message.files[0]
    assert len(data) < len(big) // 2
    assert (await palette.job_of(message)).committed == 1


async def test_expired_token_delivers_in_the_channel_with_a_mention(palette: Palette) -> None:
    palette.listenhub.processing_delay = 0.5
    ix = await palette.imagine(palette.alice, "slow harbour")
    await ix.wait_for(
        lambda i: (
            bool(i.original and "Queued" in (i.original.content or ""))
            or bool(i.original and "Generating" in (i.original.content or ""))
        ),
        timeout=10,
    )
    palette.fake.expire_token(ix)
    message = await palette.fake.wait_for_message(
        lambda m: (
            bool(m.files) and m.channel_id == palette.channel.id and f"<@{palette.alice.id}>" in m.content
        ),
        timeout=15,
    )
    assert palette.button(message, "reroll")
    assert (await palette.job_of(message)).committed == 1


async def test_gateway_reconnect_mid_job_loses_nothing(palette: Palette) -> None:
    palette.listenhub.processing_delay = 0.5
    ix = await palette.imagine(palette.alice, "resilient lighthouse")
    await ix.wait_for_response(timeout=5)
    await palette.fake.disconnect_gateway(4000)
    message = await palette.result_message(ix)
    assert (await palette.job_of(message)).committed == 1
    await palette.fake.wait_until_resumed(timeout=15)
    # Commands still arrive after the resume.
    again = await palette.imagine(palette.alice, "after the resume")
    await palette.result_message(again)


async def test_missing_bot_permission_is_named_privately_and_costs_nothing(palette: Palette) -> None:
    import discord

    perms = discord.Permissions(view_channel=True, send_messages=True, embed_links=True)  # no Attach Files
    ix = await palette.fake.invoke_slash(
        palette.alice, palette.channel, "imagine", options={"prompt": "a cat"}, app_permissions=perms.value
    )
    response = await ix.wait_for_response(timeout=5)
    assert ix.ephemeral and "Attach Files" in response["data"]["content"]
    assert palette.listenhub.calls["generate"] == 0
    assert (await palette.bot.db.jobs.usage(palette.alice.id, time.time())).in_flight == 0


async def test_new_commands_while_restarting_get_a_friendly_message(palette: Palette) -> None:
    palette.bot.jobs.accepting = False
    ix = await palette.imagine(palette.alice, "during shutdown")
    response = await ix.wait_for_response(timeout=5)
    assert ix.ephemeral and "restarting" in response["data"]["content"]
    assert palette.listenhub.calls["generate"] == 0


async def test_a_job_recovered_too_late_is_refunded_and_the_user_told(tmp_path: Path) -> None:
    async with running_palette(tmp_path) as palette:
        palette.listenhub.processing_delay = 5
        ix = await palette.imagine(palette.alice, "stale")
        await ix.wait_for(
            lambda i: bool(i.original and "Generating" in (i.original.content or "")), timeout=10
        )
        from bot.app import create_bot, shutdown

        settings = palette.bot.settings
        await shutdown(palette.bot)  # the job is left 'running' for recovery
        restarted = await create_bot(
            settings.model_copy(update={"job_max_age": 0.01}), guild_ready_timeout=0.05
        )
        task = asyncio.create_task(restarted.start(settings.discord_token.get_secret_value()))
        try:
            await asyncio.wait_for(restarted.wait_until_ready(), 15)
            await ix.wait_for(lambda i: bool(i.original and "❌" in (i.original.content or "")), timeout=10)
            assert "in time" in ix.original.content and "refunded" in ix.original.content
            await restarted.jobs.wait_idle(5)
            report = await restarted.db.jobs.ledger_balance()
            assert report.balanced and report.refunded == 1
        finally:
            await shutdown(restarted)
            await asyncio.wait_for(task, 10)


async def test_provider_storm_429_with_retry_after_is_ridden_out(palette: Palette) -> None:
    palette.listenhub.script(429, {"error": "slow down"}, {"Retry-After": "0.01"}, times=2)
    message = await palette.result_message(await palette.imagine(palette.alice, "patience"))
    assert palette.listenhub.calls["generate"] == 3 and palette.mountsea.submit_calls == 0
    assert "via listenhub" in message.embeds[0]["footer"]["text"]


async def test_malformed_provider_body_fails_over(palette: Palette) -> None:
    palette.listenhub.script_malformed_json()
    message = await palette.result_message(await palette.imagine(palette.alice, "garbled"))
    # Not resent to ListenHub (a 200 may have been billed); Mountsea delivers instead.
    assert palette.listenhub.calls["generate"] == 1 and palette.mountsea.submit_calls == 1
    assert "via mountsea" in message.embeds[0]["footer"]["text"]


async def test_provider_timeout_fails_over_without_resending(tmp_path: Path) -> None:
    async with running_palette(tmp_path, http_read_timeout=0.3) as palette:
        palette.listenhub.script_delay(3)
        message = await palette.result_message(await palette.imagine(palette.alice, "too slow"))
        assert palette.listenhub.calls["generate"] == 1  # maybe billed: never resent
        assert "via mountsea" in message.embeds[0]["footer"]["text"]


async def test_result_goes_to_a_dm_when_the_channel_is_closed_to_the_bot(palette: Palette) -> None:
    import discord

    palette.listenhub.processing_delay = 0.5
    ix = await palette.imagine(palette.alice, "private delivery")
    await ix.wait_for(lambda i: bool(i.original and "Generating" in (i.original.content or "")), timeout=10)
    palette.fake.expire_token(ix)  # no interaction webhook any more
    palette.fake.set_bot_permissions(palette.channel, discord.Permissions(view_channel=True).value)
    message = await palette.fake.wait_for_message(lambda m: bool(m.files), timeout=15)
    dm = palette.fake.channels[message.channel_id]
    assert dm.guild_id is None and "couldn't post in that channel" in message.content
    assert (await palette.job_of(message)).committed == 1


async def test_palette_status_shows_breakers_to_the_bots_owner_and_queue_to_managers(tmp_path: Path) -> None:
    from tests.presentation.test_admin import MANAGER

    async def status(user: object) -> dict[str, str]:
        ix = await palette.admin(user, "status")
        await ix.wait_for(lambda i: bool(i.original and i.original.embeds and not i.original.loading), 10)
        assert ix.ephemeral
        return {f["name"]: f["value"] for f in ix.original.embeds[0]["fields"]}

    async with running_palette(tmp_path, breaker_failures=1, breaker_cooldown=300) as palette:
        palette.listenhub.script(500, {"error": "down"}, times=None)
        await palette.result_message(await palette.imagine(palette.alice, "one"))  # fails over, opens
        await palette.idle()
        owner = palette.fake.app_owner
        palette.fake.add_member(palette.guild, owner, permissions=MANAGER)
        fields = await status(owner)
        assert fields["Queue"] == "0 waiting · 0 generating"
        listenhub = next(v for k, v in fields.items() if k.endswith("listenhub"))
        assert "breaker open" in listenhub and "errors 100%" in listenhub
        mountsea = next(v for k, v in fields.items() if k.endswith("mountsea"))
        assert "breaker closed" in mountsea and "errors 0%" in mountsea
        # A server manager sees the queue, not the operator's providers.
        fields = await status(palette.member("manager", permissions=MANAGER))
        assert fields["Queue"] == "0 waiting · 0 generating"
        assert not any(k.endswith(("listenhub", "mountsea")) for k in fields), fields
        refused = await palette.admin(palette.alice, "status")
        assert "Manage Server" in await palette.reply(refused)


async def test_a_command_acknowledged_too_late_stores_no_job_and_costs_nothing(
    palette: Palette, caplog: pytest.LogCaptureFixture
) -> None:
    """Discord refuses an acknowledgement after 3 s (10062 Unknown interaction), as under a flood of
    commands: the bot defers before it reserves anything, so the user is not charged and nothing runs;
    it does not try to reply (no reply can reach anyone), logs a warning and counts it."""
    expired = metrics.INTERACTIONS_EXPIRED.labels(role=metrics.role())._value.get()
    palette.fake.interaction_ack_deadline = 0.0  # every callback arrives too late
    ix = await palette.imagine(palette.alice, "a lighthouse nobody will see")
    deadline = time.monotonic() + 10
    while not any(r.path.endswith("/callback") for r in palette.fake.requests if r.method == "POST"):
        assert time.monotonic() < deadline, "the bot never tried to acknowledge"
        await asyncio.sleep(0.02)
    await palette.idle()
    callbacks = [r for r in palette.fake.requests if r.method == "POST" and r.path.endswith("/callback")]
    assert [r.status for r in callbacks] == [404]  # the deferral, and no error reply after it
    assert "acknowledged too late" in caplog.text and "unhandled error" not in caplog.text
    assert metrics.INTERACTIONS_EXPIRED.labels(role=metrics.role())._value.get() == expired + 1
    assert ix.original is None and palette.listenhub.calls["generate"] == 0
    usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time())
    assert usage.daily_used == 0 and usage.in_flight == 0
    report = await palette.bot.db.jobs.ledger_balance()
    assert report.reserved == 0 and report.balanced

    palette.fake.interaction_ack_deadline = 3.0  # the next command, in time, runs and is charged once
    await palette.result_message(await palette.imagine(palette.alice, "a lighthouse"))
    await palette.idle()
    report = await palette.bot.db.jobs.ledger_balance()
    assert report.reserved == 1 and report.committed == 1 and report.balanced


async def test_a_burst_of_commands_reuses_a_bounded_set_of_connections(tmp_path: Path) -> None:
    """DISCORD_HTTP_CONNECTIONS caps the connections to Discord's REST API (discord.py opens one per
    concurrent request otherwise): 30 commands at once are all answered over at most 4."""
    async with running_palette(
        tmp_path, users=30, discord_http_connections=4, user_hourly_limit=0
    ) as palette:
        before = len(palette.fake.requests)
        asks = await asyncio.gather(
            *(palette.imagine(user, f"a kite {i}") for i, user in enumerate(palette.users))
        )
        for ix in asks:
            await palette.result_message(ix)
        await palette.idle()
        burst = palette.fake.requests[before:]
        callbacks = [r for r in burst if r.path.endswith("/callback")]
        assert len(callbacks) == 30 and all(r.status == 200 for r in callbacks)
        peers = {r.peer for r in burst}
        assert None not in peers and 1 < len(peers) <= 4, peers
