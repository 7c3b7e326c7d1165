"""The runtime on the database queue, through the real bot in this process, on SQLite and PostgreSQL:
jobs claimed and delivered, the status message id in the row from the start, the gateway and worker
roles side by side, the hand-over of the status message, settling that fails, a takeover with a
recorded delivery, the image memory budget, moderation changes seen by another process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.app import WorkerRole
from bot.jobs.worker import RecordedDelivery
from bot.moderation.policy import RequestContext
from bot.moderation.service import Banned, ModerationService
from bot.storage import open_database
from tests.conftest import make_settings
from tests.fakes.http import noisy_png
from tests.presentation.conftest import Palette, running_palette

UNLIMITED = {"user_daily_limit": 0, "user_hourly_limit": 0, "user_max_concurrent": 0}


async def until(predicate: Any, timeout: float = 10) -> None:
    """The fake providers' counters wake no waiter: poll them."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def job_row(palette: Palette, job_id: int) -> Any:
    return await palette.bot.db.jobs.get_job(job_id)


async def test_jobs_go_through_the_queue_in_the_database(tmp_path: Path, database_url: str) -> None:
    async with running_palette(tmp_path, database_url=database_url, **UNLIMITED) as palette:
        interactions = [await palette.imagine(palette.users[i % 2], f"queued {i}") for i in range(3)]
        messages = [await palette.result_message(ix) for ix in interactions]
        await palette.idle()
        for ix, message in zip(interactions, messages, strict=True):
            job = await palette.job_of(message)
            assert (job.status, job.committed, job.refunded) == ("done", 1, 0)
            # The deferral named the status message: it was stored with the job from the start.
            assert job.status_message_id == ix.original.id == message.id
            assert job.queue_provider == "listenhub" and job.worker_id is None
            recorded = RecordedDelivery.from_json(job.delivery)
            assert recorded.delivery.message_id == message.id
            (result,) = await palette.bot.db.history.results_for_job(job.id)
            assert recorded.delivery.images[0].sha256 == result.sha256
        report = await palette.bot.db.jobs.ledger_balance()
        assert report.balanced and report.committed == 3
        workers = await palette.bot.queue.workers()
        assert [(w.role, w.worker_id) for w in workers] == [("all", palette.bot.worker_id)]


@contextlib.asynccontextmanager
async def worker_beside(palette: Palette) -> AsyncIterator[WorkerRole]:
    role = WorkerRole(palette.bot.settings)
    await role.start()
    try:
        yield role
    finally:
        await role.stop()


async def test_a_gateway_and_a_separate_worker(tmp_path: Path, database_url: str) -> None:
    async with running_palette(tmp_path, database_url=database_url, role="gateway", **UNLIMITED) as palette:
        assert palette.bot.worker is None
        palette.listenhub.processing_delay = 0.3
        ix = await palette.imagine(palette.alice, "made by a worker")
        response = await ix.wait_for_response(timeout=5)
        assert response is not None
        await asyncio.sleep(0.5)
        assert palette.listenhub.calls["generate"] == 0  # the gateway never calls a provider
        assert (await palette.bot.queue.depth()).queued == 1  # the job waits for a worker
        async with worker_beside(palette) as first:
            roles = sorted(w.role for w in await palette.bot.queue.workers())
            assert roles == ["gateway", "worker"]
            message = await palette.result_message(ix)
            assert (await palette.job_of(message)).committed == 1
            # A job the worker is running when it stops goes back to the queue for another worker.
            palette.listenhub.processing_delay = 5
            second_ix = await palette.imagine(palette.bob, "handed on")
            await until(lambda: palette.listenhub.calls["generate"] == 2)
            await first.stop(grace=0)
        depth = await palette.bot.queue.depth()
        assert (depth.queued, depth.running) == (1, 0)
        palette.listenhub.processing_delay = 0
        async with worker_beside(palette):
            message = await palette.result_message(second_ix)
            assert (await palette.job_of(message)).committed == 1
        assert palette.listenhub.calls["generate"] == 3  # a synchronous call runs again, charged once
        report = await palette.bot.db.jobs.ledger_balance()
        assert report.balanced and report.committed == 2 and report.refunded == 0


async def test_no_worker_claims_a_job_before_the_command_handler_hands_it_over(tmp_path: Path) -> None:
    async with running_palette(tmp_path) as palette:
        handed = asyncio.Event()
        real = palette.bot.jobs.hand_over

        async def late_hand_over(job: Any) -> None:
            await handed.wait()
            await real(job)

        palette.bot.jobs.hand_over = late_hand_over  # type: ignore[method-assign]
        ix = await palette.imagine(palette.alice, "patience")
        await ix.wait_for(lambda i: bool(i.original and "Queued" in (i.original.content or "")), 10)
        await asyncio.sleep(0.5)
        # Stored and charged, but not claimable: the status message is still the command handler's.
        assert palette.listenhub.calls["generate"] == 0 and (await palette.bot.queue.depth()).queued == 1
        handed.set()
        message = await palette.result_message(ix)
        contents = [e.get("content") for e in message.edits if "content" in e]
        queued = next(i for i, c in enumerate(contents) if c and c.startswith("⏳"))
        assert all(not (c or "").startswith("⏳") for c in contents[queued + 1 :]), contents
        assert message.files and not message.content


async def test_a_job_whose_handler_died_before_handing_it_over_is_adopted(tmp_path: Path) -> None:
    async with running_palette(tmp_path) as palette:

        async def gateway_died(job: Any) -> None:
            return None

        palette.bot.jobs.hand_over = gateway_died  # type: ignore[method-assign]
        worker = palette.bot.worker
        assert worker is not None
        ix = await palette.imagine(palette.alice, "orphan")
        await ix.wait_for(lambda i: bool(i.original and "Queued" in (i.original.content or "")), 10)
        assert palette.listenhub.calls["generate"] == 0
        worker.adopt_after = 0.0  # (an hour later...)
        await worker._adopt_unassigned()
        worker.poke()
        message = await palette.result_message(ix)  # on its status message: the token is in the row
        assert (await palette.job_of(message)).committed == 1


async def test_a_result_that_cannot_be_settled_is_free_and_the_user_told(tmp_path: Path) -> None:
    async with running_palette(tmp_path) as palette:
        worker = palette.bot.worker
        assert worker is not None
        worker.settle_backoff = 0.01
        real = palette.bot.db.jobs.finish_job
        failures = {"charge": 0}

        async def disk_full(job_id: int, delivered: int, **kwargs: Any) -> bool:
            if delivered:  # charging fails every time; the refund goes through
                failures["charge"] += 1
                raise OSError("database or disk is full")
            return await real(job_id, delivered, **kwargs)

        worker.jobs.finish_job = disk_full  # type: ignore[method-assign]
        ix = await palette.imagine(palette.alice, "free of charge")
        message = await palette.result_message(ix)
        note = await ix.wait_for(
            lambda i: next((m for m in i.followups if "nothing was charged" in (m.content or "")), None), 10
        )
        assert note is not None and failures["charge"] == worker.settle_attempts
        await palette.idle()
        job = await palette.job_of(message)
        assert (job.status, job.committed, job.refunded) == ("done", 0, 1)
        assert len([m for m in palette.fake.channel_messages(palette.channel) if m.files]) == 1
        assert (await palette.bot.db.jobs.ledger_balance()).balanced


async def test_a_taken_over_job_with_a_recorded_delivery_is_never_posted_again(tmp_path: Path) -> None:
    async with running_palette(tmp_path, job_lease_seconds=0.5) as palette:
        bot = palette.bot
        assert bot.worker is not None
        await bot.worker.stop()
        ix = await palette.imagine(palette.alice, "posted before the crash")
        await ix.wait_for(lambda i: bool(i.original and "Queued" in (i.original.content or "")), 10)
        # Another worker claimed it (once it was handed over), posted it and died before settling.
        claim = None
        deadline = time.monotonic() + 10
        while claim is None:
            assert time.monotonic() < deadline
            claim = await bot.queue.claim("dead-worker", time.time(), 0.5)
            await asyncio.sleep(0.01)
        posted = {
            "message_id": ix.original.id,
            "channel_id": palette.channel.id,
            "provider": "listenhub",
            "provider_model": "gemini-3-pro-image",
            "images": [
                {
                    "attachment_id": None,
                    "filename": f"palette-{claim.job.id}-1.png",
                    "sha256": "ef" * 32,
                    "width": 64,
                    "height": 64,
                    "mime_type": "image/png",
                    "size_bytes": 1234,
                }
            ],
        }
        assert await bot.queue.record_delivery(claim.job.id, "dead-worker", json.dumps(posted))
        await asyncio.sleep(0.6)  # its lease runs out
        await bot.worker.start()
        await palette.idle()
        job = await bot.db.jobs.get_job(claim.job.id)
        assert (job.status, job.committed, job.result_message_id) == ("done", 1, ix.original.id)
        (result,) = await bot.db.history.results_for_job(job.id)
        assert result.sha256 == "ef" * 32
        assert palette.listenhub.calls["generate"] == 0 and not ix.original.files


async def test_images_beyond_the_memory_budget_wait_on_disk(tmp_path: Path) -> None:
    big = noisy_png(512, 512)
    budget = 2 * len(big) + len(big) // 2
    async with running_palette(
        tmp_path, image_memory_budget=budget, listenhub_concurrency=8, **UNLIMITED
    ) as palette:
        palette.listenhub.make_image = lambda width, height: big  # type: ignore[method-assign]
        worker = palette.bot.worker
        assert worker is not None
        # Discord is slow: every finished result waits to be posted until all six are finished.
        waiting: list[int] = []
        everyone = asyncio.Event()
        real = worker.presenter.deliver

        async def slow_discord(job: Any, outcome: Any, images: Any) -> Any:
            waiting.append(job.id)
            if len(waiting) == 6:
                everyone.set()
            await everyone.wait()
            return await real(job, outcome, images)

        worker.presenter.deliver = slow_discord  # type: ignore[method-assign]
        interactions = [await palette.imagine(palette.users[i % 2], f"big {i}") for i in range(6)]
        messages = [await palette.result_message(ix, timeout=30) for ix in interactions]
        await palette.idle()
        spool = worker.spool
        assert spool.spilled == 4  # two fit the budget, four waited on disk
        assert spool.budget.peak <= budget and spool.budget.used == 0
        assert all(m.files[0][1] == big for m in messages)  # all delivered, byte for byte
        assert not any(spool.directory.iterdir())


async def test_a_ban_made_in_one_process_applies_in_another_within_a_second(database_url: str) -> None:
    settings = make_settings(database_url=database_url)
    one, two = await open_database(database_url), await open_database(database_url)
    here, there = ModerationService(one.moderation, settings), ModerationService(two.moderation, settings)
    ctx = RequestContext(user_id=7, guild_id=42, channel_id=1)
    try:
        await there.admit(ctx)  # warm: the server's state is cached there now
        await here.ban(42, 7, actor_id=1, duration="1h", reason="spam")
        # One look at the version counters (what the watcher does every 0.5 s) is enough.
        assert await there.poll_changes() == 1
        try:
            await there.admit(ctx)
        except Banned:
            pass
        else:
            raise AssertionError("the ban did not reach the other process")
        # And the watcher does look by itself.
        there.watch()
        await here.unban(42, 7, actor_id=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                await there.admit(ctx)
                break
            except Banned:
                assert time.monotonic() < deadline, "the unban did not reach the other process"
                await asyncio.sleep(0.05)
    finally:
        await there.stop_watching()
        here.close()
        there.close()
        await one.close()
        await two.close()


async def test_palette_status_shows_the_deployment_to_the_operator(tmp_path: Path) -> None:
    from tests.presentation.test_admin import MANAGER

    async with running_palette(tmp_path) as palette:
        await palette.result_message(await palette.imagine(palette.alice, "one"))
        await palette.idle()
        owner = palette.fake.app_owner
        palette.fake.add_member(palette.guild, owner, permissions=MANAGER)
        ix = await palette.admin(owner, "status")
        await ix.wait_for(lambda i: bool(i.original and i.original.embeds and not i.original.loading), 10)
        fields = {f["name"]: f["value"] for f in ix.original.embeds[0]["fields"]}
        assert fields["Queue"] == "0 waiting · 0 generating"
        assert fields["Processes"].startswith("all on ") and "seen" in fields["Processes"]
        assert fields["Provider slots in use"] == "listenhub 0/4 · mountsea 0/8"
        assert "breaker closed" in next(v for k, v in fields.items() if k.endswith("listenhub"))
        # A server manager sees neither the processes nor the providers.
        ix = await palette.admin(palette.member("manager", permissions=MANAGER), "status")
        await ix.wait_for(lambda i: bool(i.original and i.original.embeds and not i.original.loading), 10)
        names = {f["name"] for f in ix.original.embeds[0]["fields"]}
        assert "Processes" not in names and "Provider slots in use" not in names
