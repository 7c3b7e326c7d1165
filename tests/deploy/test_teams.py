"""Compare and cancel (issue 12) across real processes: one gateway, two workers, one database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.deploy.conftest import Deployment, deployment

pytestmark = pytest.mark.timeout(120)


def cancel_button(message: object) -> str:
    for component in message.iter_components():  # type: ignore[attr-defined]
        custom_id = str(component.get("custom_id", ""))
        if custom_id.startswith("palette:cancel:"):
            return custom_id
    raise AssertionError("no Cancel button")


async def test_compare_and_cancel_across_a_gateway_and_two_workers(tmp_path: Path, database_url: str) -> None:
    async with deployment(tmp_path, database_url, users=2, WORKER_MAX_JOBS=2) as d:
        d: Deployment
        await asyncio.gather(
            d.gateway(), d.process("worker", "worker-1").start(), d.process("worker", "worker-2").start()
        )
        alice, bob = d.users

        # Compare four models; three calls are held and released at once, so their parts reach the shared
        # message at the same moment from both workers.
        d.listenhub.hold()
        ix = await d.fake.invoke_slash(
            alice,
            d.channel,
            "compare",
            options={
                "prompt": "a lighthouse",
                "models": "nano-banana-pro, gpt-image-2, nano-banana-2, nano-banana",
            },
        )
        await d.wait_db(
            "SELECT COUNT(*) FROM jobs WHERE group_id IS NOT NULL AND status = 'running'", lambda n: n == 4
        )
        await d.listenhub.wait_for(lambda: d.listenhub.held == 3, timeout=30)
        workers = await d.query("SELECT DISTINCT worker_id FROM jobs WHERE group_id IS NOT NULL")
        assert len(workers) == 2  # both workers run parts of it
        d.listenhub.release_all()
        message = await ix.wait_for(
            lambda i: i.original if i.original and len(i.original.files) == 4 else None, 60
        )
        await d.wait_db(
            "SELECT COUNT(*) FROM jobs WHERE group_id IS NOT NULL AND status = 'done'", lambda n: n == 4
        )
        assert sorted(e["title"] for e in message.embeds) == sorted(
            ["Nano Banana Pro", "GPT Image 2", "Nano Banana 2", "Nano Banana"]
        )
        assert len({name for name, _, _ in message.files}) == 4
        assert not [m for m in d.results() if m.id != message.id]  # nothing posted on its own

        # Cancel a running job from the gateway while a worker generates it; its late result is dropped.
        d.listenhub.hold()
        job_ix = await d.fake.invoke_slash(bob, d.channel, "imagine", options={"prompt": "take it back"})
        await d.listenhub.wait_for(lambda: d.listenhub.held == 1, timeout=30)
        status = await job_ix.wait_for(
            lambda i: i.original if i.original and "Generating" in (i.original.content or "") else None, 30
        )
        custom_id = cancel_button(status)
        click = await d.fake.click_button(bob, status, custom_id)
        await click.wait_for_response(timeout=15)
        job_id = int(custom_id.rsplit(":", 1)[1])
        await d.wait_db(f"SELECT status FROM jobs WHERE id = {job_id}", lambda s: s == "cancelled")
        d.listenhub.release_all()
        await d.wait_db(
            f"SELECT COUNT(*) FROM jobs WHERE id = {job_id} AND worker_id IS NULL", lambda n: n == 1
        )
        await asyncio.sleep(1.0)
        assert "Cancelled" in job_ix.original.content and not job_ix.original.files
        assert [m.id for m in d.results()] == [message.id]
        assert await d.scalar(f"SELECT refunded FROM jobs WHERE id = {job_id}") == 1
        await d.check_ledger()
        d.assert_clean_logs()
