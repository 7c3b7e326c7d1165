"""/compare (issue 12), end to end: one prompt on several models, one labelled message."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

from tests.fakes.providers.mountsea import MountseaScript
from tests.presentation.conftest import Palette, running_palette


async def compare(palette: Palette, user: Any, prompt: str, **options: Any) -> Any:
    return await palette.fake.invoke_slash(
        user, palette.channel, "compare", options={"prompt": prompt, **options}
    )


async def group_jobs(palette: Palette, message_id: int) -> list[Any]:
    rows = await palette.bot.db.fetchall(
        f"SELECT id FROM jobs WHERE status_message_id = {int(message_id)} ORDER BY id"
    )
    return [await palette.bot.db.jobs.get_job(int(r[0])) for r in rows]


async def all_settled(palette: Palette, message_id: int, n: int, timeout: float = 15) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = await group_jobs(palette, message_id)
        if len(jobs) == n and all(j.finished for j in jobs):
            return jobs
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError([j.status for j in jobs])
        await asyncio.sleep(0.02)


def part_buttons(message: Any) -> list[str]:
    return [
        c["custom_id"] for c in message.iter_components() if c.get("custom_id", "").startswith("palette:")
    ]


async def test_compare_posts_one_labelled_image_per_model(palette: Palette) -> None:
    ix = await compare(palette, palette.alice, "a red bicycle")
    message = await ix.wait_for(
        lambda i: i.original if i.original and len(i.original.files) == 2 else None, 20
    )
    titles = [e["title"] for e in message.embeds]
    assert titles == ["Nano Banana Pro", "GPT Image 2"]
    assert all(e["image"]["url"] for e in message.embeds)
    assert "2 of 2 done" in message.content and "a red bicycle" in message.content
    prompts = {(r.json["prompt"], r.json.get("model")) for r in palette.listenhub.generate_requests}
    assert {p for p, _ in prompts} == {"a red bicycle"} and len(palette.listenhub.generate_requests) == 2
    jobs = await all_settled(palette, message.id, 2)
    assert [j.model for j in jobs] == ["nano-banana-pro", "gpt-image-2"]
    assert all(j.status == "done" and j.committed == 1 and j.refunded == 0 for j in jobs)
    assert len({j.group_id for j in jobs}) == 1 and jobs[0].group_id is not None
    ids = part_buttons(message)
    for job in jobs:
        assert {f"palette:{a}:{job.id}" for a in ("reroll", "edit", "upscale")} <= set(ids)
    assert not any(i.startswith("palette:cancel:") for i in ids)  # nothing left to cancel
    # Each image's filename names its own job, and each job's history points at this message.
    for job in jobs:
        results = await palette.bot.db.history.results_for_job(job.id)
        assert len(results) == 1 and results[0].message_id == message.id
        assert results[0].filename.startswith(f"palette-{job.id}-")
    assert (await palette.bot.db.jobs.ledger_balance()).balanced
    usage = await palette.bot.db.jobs.usage(palette.alice.id, palette.bot.jobs.clock())
    assert usage.daily_used == 2


async def test_a_failed_model_is_refunded_on_its_own_exactly_once(palette: Palette) -> None:
    palette.mountsea.default = MountseaScript(outcome="failed", polls=1)
    ix = await compare(palette, palette.alice, "a blue boat", models="nano-banana-pro, nano-banana")

    def final(i: Any) -> Any:
        m = i.original
        return m if m and len(m.files) == 1 and "1 failed" in (m.content or "") else None

    message = await ix.wait_for(final, 20)
    jobs = await all_settled(palette, message.id, 2)
    ok, bad = jobs
    assert ok.model == "nano-banana-pro" and ok.status == "done" and ok.committed == 1
    assert bad.model == "nano-banana" and bad.status == "failed" and bad.committed == 0 and bad.refunded == 1
    assert [e["title"] for e in message.embeds] == ["Nano Banana Pro", "Nano Banana"]
    assert "Not charged" in message.embeds[1]["description"]
    assert message.files[0][0].startswith(f"palette-{ok.id}-")
    await palette.idle()
    rows = await palette.bot.db.fetchall(
        f"SELECT entry, amount FROM ledger WHERE job_id = {bad.id} ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [("reserve", 1), ("commit", 0), ("refund", 1)]
    assert (await palette.bot.db.jobs.ledger_balance()).balanced
    # Nothing else was posted in the channel for the failure.
    others = [m for m in palette.fake.channel_messages(palette.channel) if m.id != message.id]
    assert not [m for m in others if "Nano Banana" in (m.content or "") or m.files]


async def test_unknown_or_too_few_models_are_refused_at_no_cost(palette: Palette) -> None:
    for models, words in (
        ("nano-banana-pro, dall-e-9", "Unknown model `dall-e-9`"),
        ("nano-banana-pro", "Name 2 to 4 different models"),
        ("nano-banana-pro, nano-banana-pro", "Name 2 to 4 different models"),
    ):
        ix = await compare(palette, palette.alice, "x", models=models)
        assert words in await palette.reply(ix)
        assert ix.ephemeral
    # A ratio one of the models does not draw is refused before anything is charged.
    ix = await compare(palette, palette.alice, "x", models="nano-banana-2, gpt-image-2", aspect_ratio="1:8")
    assert "does not support aspect ratio" in await palette.reply(ix)
    assert await palette.bot.db.fetchval("SELECT COUNT(*) FROM jobs") == 0
    assert palette.listenhub.calls["generate"] == 0


async def test_buttons_act_on_their_own_image(palette: Palette) -> None:
    ix = await compare(palette, palette.alice, "a green kite")
    message = await ix.wait_for(
        lambda i: i.original if i.original and len(i.original.files) == 2 else None, 20
    )
    _first, second = await all_settled(palette, message.id, 2)
    reroll = await palette.fake.click_button(palette.bob, message, f"palette:reroll:{second.id}")
    rerolled = await palette.result_message(reroll)
    job = await palette.job_of(rerolled)
    assert job.model == "gpt-image-2" and job.kind == "reroll" and job.parent_job_id == second.id
    assert job.prompt == "a green kite" and job.group_id is None
    edit = await palette.fake.click_button(palette.alice, message, f"palette:edit:{second.id}")
    submitted = await palette.fill_modal(edit, palette.alice, ["add clouds"])
    await palette.result_message(submitted)
    body = palette.listenhub.generate_requests[-1].json
    second_image = next(data for name, data, _ in message.files if name.startswith(f"palette-{second.id}-"))
    assert body["prompt"] == "add clouds"
    assert [base64.b64decode(r["inlineData"]["data"]) for r in body["referenceImages"]] == [second_image]
    await palette.idle()
    assert (await palette.bot.db.jobs.ledger_balance()).balanced


async def test_cancelling_a_queued_compare_refunds_every_model(tmp_path: Path) -> None:
    async with running_palette(tmp_path, role="gateway") as palette:
        ix = await compare(
            palette, palette.alice, "never mind", models="nano-banana-pro, gpt-image-2, nano-banana-2"
        )
        status = await ix.wait_for(
            lambda i: i.original if i.original and "Queued" in i.original.content else None
        )
        cancel = next(c for c in part_buttons(status) if c.startswith("palette:cancel:"))
        click = await palette.fake.click_button(palette.alice, status, cancel)
        await click.wait_for(lambda i: bool(i.followups), timeout=10)
        jobs = await all_settled(palette, status.id, 3)
        assert all(j.status == "cancelled" and j.refunded == 1 for j in jobs)
        await ix.wait_for(lambda i: "Cancelled" in str(i.original.embeds), timeout=5)
        assert not any(c.startswith("palette:cancel:") for c in part_buttons(ix.original))
        assert (await palette.bot.db.jobs.ledger_balance()).balanced
        usage = await palette.bot.db.jobs.usage(palette.alice.id, palette.bot.jobs.clock())
        assert usage.daily_used == 0


async def test_cancel_mid_compare_keeps_posted_images_and_refunds_the_rest(palette: Palette) -> None:
    palette.listenhub.hold()
    ix = await compare(palette, palette.alice, "half done", models="nano-banana, nano-banana-pro")

    def one_posted(i: Any) -> Any:
        m = i.original
        return m if m and len(m.files) == 1 else None

    message = await ix.wait_for(one_posted, 20)
    assert "1 of 2 done" in message.content
    cancel = next(c for c in part_buttons(message) if c.startswith("palette:cancel:"))
    click = await palette.fake.click_button(palette.alice, message, cancel)
    await click.wait_for(lambda i: bool(i.followups), timeout=10)
    palette.listenhub.release_all()  # the held model answers after all
    posted, cancelled = await all_settled(palette, message.id, 2)
    await palette.idle()
    await asyncio.sleep(0.3)
    assert posted.model == "nano-banana" and posted.status == "done" and posted.committed == 1
    assert (
        cancelled.status == "cancelled"
        and cancelled.refunded == 1
        and cancelled.cancelled_by == palette.alice.id
    )
    final = ix.original
    assert len(final.files) == 1 and final.files[0][0].startswith(f"palette-{posted.id}-")
    assert "Cancelled" in final.embeds[1]["description"]
    assert not any(c.startswith("palette:cancel:") for c in part_buttons(final))
    assert f"palette:reroll:{posted.id}" in part_buttons(final)
    assert (await palette.bot.db.jobs.ledger_balance()).balanced


async def test_models_autocomplete_completes_the_last_name(palette: Palette) -> None:
    async def offered(typed: str) -> list[str]:
        ix = await palette.fake.autocomplete(
            palette.alice,
            palette.channel,
            "compare",
            options=[{"name": "prompt", "value": "x"}, {"name": "models", "value": typed, "focused": True}],
        )
        await ix.wait_for(lambda i: i.autocomplete_choices is not None, timeout=5)
        return [c["value"] for c in ix.autocomplete_choices]

    assert (await offered(""))[0] == "nano-banana-pro, gpt-image-2"
    assert "nano-banana-pro, gpt-image-2" in await offered("nano-banana-pro, gpt")
    assert all(v.startswith("nano-banana-pro, ") for v in await offered("nano-banana-pro, "))


async def test_a_compare_over_the_quota_is_refused_whole_and_costs_nothing(tmp_path: Path) -> None:
    async with running_palette(tmp_path, user_daily_limit=1) as palette:
        ix = await compare(palette, palette.alice, "two images, one allowed")
        answer = await palette.reply(ix)
        assert "needs 2 images but your daily limit is 1" in answer
        await palette.idle()
        assert palette.listenhub.calls["generate"] == 0
        usage = await palette.bot.db.jobs.usage(palette.alice.id, palette.bot.jobs.clock())
        assert usage.daily_used == 0 and usage.in_flight == 0
        assert (await palette.bot.db.jobs.ledger_balance()).balanced
        # One image is still allowed afterwards.
        await palette.result_message(await palette.imagine(palette.alice, "just one"))


async def test_a_reservation_refused_midway_refunds_the_ones_already_made(palette: Palette) -> None:
    """Another request of the user's can take the last image between the check and the reservations:
    the comparison is then refused whole and what it had reserved is refunded at once."""
    from bot.storage.errors import QuotaExceeded

    real_submit = palette.bot.jobs.submit
    calls = 0

    async def second_refused(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise QuotaExceeded("daily", limit=1, used=1, now=palette.bot.jobs.clock())
        return await real_submit(*args, **kwargs)

    palette.bot.jobs.submit = second_refused  # type: ignore[method-assign]
    ix = await compare(palette, palette.alice, "raced")
    assert "You've used 1 of your 1" in await palette.reply(ix)
    rows = await palette.bot.db.fetchall("SELECT status, refunded, reserved FROM jobs")
    assert [tuple(r) for r in rows] == [("cancelled", 1, 1)]
    await palette.idle()
    assert palette.listenhub.calls["generate"] == 0
    assert (await palette.bot.db.jobs.ledger_balance()).balanced
