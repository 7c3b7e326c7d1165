"""Cancel on the status message of a queued or running job, end to end (issue 12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bot.app import create_bot, shutdown
from tests.presentation.conftest import Palette, running_palette
from tests.presentation.test_mod_buttons import bot_message_with_button


def cancel_id(message: Any) -> str:
    for component in message.iter_components():
        custom_id = component.get("custom_id", "")
        if custom_id.startswith("palette:cancel:"):
            return str(custom_id)
    raise AssertionError(f"no Cancel button on message {message.id}")


async def status_with_cancel(ix: Any, word: str) -> Any:
    """The interaction's status message once it says ``word`` and carries the Cancel button."""

    def ready(i: Any) -> Any:
        m = i.original
        if m is None or word not in (m.content or ""):
            return None
        ids = [c.get("custom_id", "") for c in m.iter_components()]
        return m if any(i.startswith("palette:cancel:") for i in ids) else None

    return await ix.wait_for(ready, timeout=10)


async def settled(palette: Palette, job_id: int, timeout: float = 10) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await palette.bot.db.jobs.get_job(job_id)
        if job is not None and job.finished:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"job {job_id} is still {job.status if job else None}")
        await asyncio.sleep(0.02)


async def ledger_ok(bot: Any) -> None:
    report = await bot.db.jobs.ledger_balance()
    assert report.balanced, report


async def test_cancelling_a_queued_job_refunds_it_at_once(tmp_path: Path) -> None:
    async with running_palette(tmp_path, role="gateway") as palette:  # no worker: the job stays queued
        ix = await palette.imagine(palette.alice, "queued by mistake", count=2)
        status = await status_with_cancel(ix, "Queued")
        custom_id = cancel_id(status)
        job_id = int(custom_id.rsplit(":", 1)[1])
        before = await palette.bot.db.jobs.usage(palette.alice.id, palette.bot.jobs.clock())
        assert before.daily_used == 2
        click = await palette.fake.click_button(palette.alice, status, custom_id)
        await click.wait_for_response()
        await ix.wait_for(lambda i: "Cancelled" in (i.original.content or ""), timeout=5)
        assert not list(ix.original.iter_components())  # the button is gone
        job = await settled(palette, job_id)
        assert job.status == "cancelled" and job.refunded == 2 and job.committed == 0
        assert job.cancelled_by == palette.alice.id
        assert (await palette.bot.jobs.queue.depth()).queued == 0
        after = await palette.bot.db.jobs.usage(palette.alice.id, palette.bot.jobs.clock())
        assert after.daily_used == 0
        # Cancelling again (another process, a late click) changes nothing: refunded once.
        assert not await palette.bot.jobs.cancel(job_id, palette.alice.id)
        assert (await palette.bot.db.jobs.get_job(job_id)).refunded == 2
        await ledger_ok(palette.bot)
        assert palette.listenhub.calls["generate"] == 0


async def test_cancelling_a_running_job_drops_its_late_result(palette: Palette) -> None:
    palette.listenhub.hold()
    ix = await palette.imagine(palette.alice, "a slow painting")
    await palette.listenhub.wait_for(lambda: palette.listenhub.held == 1, what="a call in flight")
    status = await status_with_cancel(ix, "Generating")
    custom_id = cancel_id(status)
    job_id = int(custom_id.rsplit(":", 1)[1])
    click = await palette.fake.click_button(palette.alice, status, custom_id)
    await click.wait_for_response()
    job = await settled(palette, job_id)
    assert job.status == "cancelled" and job.refunded == 1 and job.committed == 0
    palette.listenhub.release_all()  # the provider answers after all
    await palette.idle()
    await asyncio.sleep(0.3)
    assert "Cancelled" in ix.original.content
    assert not ix.original.files and not ix.original.embeds
    assert not [m for m in palette.fake.channel_messages(palette.channel) if m.files]
    assert await palette.bot.db.history.results_for_job(job_id) == []
    assert (await palette.bot.db.jobs.get_job(job_id)).refunded == 1  # refunded exactly once
    await ledger_ok(palette.bot)


async def test_only_the_requester_or_a_moderator_may_cancel(tmp_path: Path) -> None:
    async with running_palette(tmp_path, role="gateway") as palette:
        ix = await palette.imagine(palette.alice, "mine")
        status = await status_with_cancel(ix, "Queued")
        custom_id = cancel_id(status)
        refused = await palette.fake.click_button(palette.bob, status, custom_id)
        assert "Only the person who asked" in await palette.reply(refused)
        assert refused.ephemeral
        job_id = int(custom_id.rsplit(":", 1)[1])
        assert (await palette.bot.db.jobs.get_job(job_id)).status == "queued"
        mod = palette.member("mod", permissions=1 << 13)  # Manage Messages
        allowed = await palette.fake.click_button(mod, status, custom_id)
        await allowed.wait_for_response()
        job = await settled(palette, job_id)
        assert job.status == "cancelled" and job.cancelled_by == mod.id
        await ledger_ok(palette.bot)


async def test_forged_cancel_ids_cancel_nothing(tmp_path: Path) -> None:
    async with running_palette(tmp_path, role="gateway") as palette:
        other = palette.fake.add_guild(name="Other server")
        palette.fake.add_member(other, palette.bob)
        theirs = await palette.imagine(palette.bob, "their request", channel=other.default_channel)
        their_status = await status_with_cancel(theirs, "Queued")
        their_id = cancel_id(their_status)
        mine = await palette.imagine(palette.alice, "my request")
        my_status = await status_with_cancel(mine, "Queued")
        # A bot message (not the job's status message) carrying another server's job id.
        forged = bot_message_with_button(palette, palette.channel, their_id)
        click = await palette.fake.click_button(palette.alice, forged, their_id)
        assert "doesn't belong" in await palette.reply(click)
        # A click on my own status message naming their job.
        forged_click = await palette.fake.forge_component_click(palette.alice, my_status, their_id)
        await asyncio.sleep(0.3)
        assert not forged_click.responses or "doesn't belong" in await palette.reply(forged_click)
        # Bob himself, from this server, on a message that is not his job's status message.
        bob_click = await palette.fake.click_button(palette.bob, forged, their_id)
        assert "doesn't belong" in await palette.reply(bob_click)
        their_job = int(their_id.rsplit(":", 1)[1])
        assert (await palette.bot.db.jobs.get_job(their_job)).status == "queued"
        assert "Queued" in theirs.original.content


async def restart(palette: Palette, **changes: Any) -> Any:
    settings = palette.bot.settings.model_copy(update=changes) if changes else palette.bot.settings
    await shutdown(palette.bot)
    restarted = await create_bot(settings, guild_ready_timeout=0.05)
    task = asyncio.create_task(restarted.start(settings.discord_token.get_secret_value()))
    await asyncio.wait_for(restarted.wait_until_ready(), 15)
    palette.bot = restarted
    return task


async def test_cancel_works_after_a_restart(tmp_path: Path) -> None:
    """A running job given back at shutdown, taken again by the restarted bot: its Cancel button (from
    before the restart) still cancels it, and the late result is not posted."""
    async with running_palette(tmp_path) as palette:
        palette.listenhub.hold()
        ix = await palette.imagine(palette.alice, "across a restart")
        await palette.listenhub.wait_for(lambda: palette.listenhub.held == 1, what="a call in flight")
        status = await status_with_cancel(ix, "Generating")
        custom_id = cancel_id(status)
        job_id = int(custom_id.rsplit(":", 1)[1])
        task = await restart(palette)
        try:
            await palette.listenhub.wait_for(
                lambda: palette.listenhub.calls["generate"] == 2, what="the restarted worker's call"
            )
            click = await palette.fake.click_button(palette.alice, status, custom_id)
            await click.wait_for_response()
            job = await settled(palette, job_id)
            assert job.status == "cancelled" and job.refunded == 1
            palette.listenhub.release_all()
            await palette.idle()
            await asyncio.sleep(0.3)
            assert "Cancelled" in ix.original.content and not ix.original.files
            await ledger_ok(palette.bot)
        finally:
            await shutdown(palette.bot)
            await asyncio.wait_for(task, 10)


async def test_a_worker_in_another_process_drops_the_result_of_a_cancelled_job(palette: Palette) -> None:
    """As when the click reaches a gateway and the job runs in a worker process: the worker is not told
    directly; it reads the job's status before posting and drops the result."""
    palette.listenhub.hold()
    ix = await palette.imagine(palette.alice, "cancelled elsewhere")
    await palette.listenhub.wait_for(lambda: palette.listenhub.held == 1, what="a call in flight")
    status = await status_with_cancel(ix, "Generating")
    custom_id = cancel_id(status)
    job_id = int(custom_id.rsplit(":", 1)[1])
    worker = palette.bot.jobs.worker
    palette.bot.jobs.worker = None  # the click's process runs no worker
    try:
        click = await palette.fake.click_button(palette.alice, status, custom_id)
        await click.wait_for_response()
        await settled(palette, job_id)
        assert worker is not None and worker.running == 1  # still generating over there
        palette.listenhub.release_all()
        for _ in range(200):
            if worker.running == 0:
                break
            await asyncio.sleep(0.02)
        assert worker.running == 0
    finally:
        palette.bot.jobs.worker = worker
    assert palette.listenhub.calls["generate"] == 1
    assert "Cancelled" in ix.original.content and not ix.original.files
    assert not [m for m in palette.fake.channel_messages(palette.channel) if m.files]
    job = await palette.bot.db.jobs.get_job(job_id)
    assert job.status == "cancelled" and job.refunded == 1 and job.committed == 0
    await ledger_ok(palette.bot)


async def test_a_cancelled_task_is_not_resubmitted(tmp_path: Path) -> None:
    """A task provider's job cancelled while its task runs: polling stops (the lease renewal is refused)
    and no worker submits it again."""
    async with running_palette(tmp_path, job_lease_seconds=0.6) as palette:
        palette.mountsea.default.polls = 10_000  # never ready
        ix = await palette.imagine(palette.alice, "a task", model="nano-banana")
        status = await status_with_cancel(ix, "Generating")
        for _ in range(200):
            if palette.mountsea.submit_calls:
                break
            await asyncio.sleep(0.02)
        custom_id = cancel_id(status)
        job_id = int(custom_id.rsplit(":", 1)[1])
        worker = palette.bot.jobs.worker
        palette.bot.jobs.worker = None  # found out through the lease, as in another process
        try:
            click = await palette.fake.click_button(palette.alice, status, custom_id)
            await click.wait_for_response()
            await settled(palette, job_id)
            for _ in range(200):
                if worker is not None and worker.running == 0:
                    break
                await asyncio.sleep(0.02)
            assert worker is not None and worker.running == 0
        finally:
            palette.bot.jobs.worker = worker
        polls = sum(palette.mountsea.polls.values())
        await asyncio.sleep(1.0)
        assert palette.mountsea.submit_calls == 1
        assert sum(palette.mountsea.polls.values()) == polls  # nobody polls it any more
        assert "Cancelled" in ix.original.content
        await ledger_ok(palette.bot)


async def test_a_queued_job_is_cancelled_after_a_restart(tmp_path: Path) -> None:
    async with running_palette(tmp_path, role="gateway") as palette:
        ix = await palette.imagine(palette.alice, "queued before the restart")
        status = await status_with_cancel(ix, "Queued")
        custom_id = cancel_id(status)
        job_id = int(custom_id.rsplit(":", 1)[1])
        settings = palette.bot.settings
        await shutdown(palette.bot)
        restarted = await create_bot(settings, role="gateway", guild_ready_timeout=0.05)
        task = asyncio.create_task(restarted.start(settings.discord_token.get_secret_value()))
        try:
            await asyncio.wait_for(restarted.wait_until_ready(), 15)
            palette.bot = restarted
            click = await palette.fake.click_button(palette.alice, status, custom_id)
            await click.wait_for_response()
            job = await settled(palette, job_id)
            assert job.status == "cancelled" and job.refunded == 1
            assert "Cancelled" in ix.original.content
            assert (await restarted.jobs.queue.depth()).queued == 0
            await ledger_ok(restarted)
        finally:
            await shutdown(restarted)
            await asyncio.wait_for(task, 10)
