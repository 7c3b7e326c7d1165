"""Result buttons (Re-roll, Edit, Upscale, Delete) and /history, end to end."""

from __future__ import annotations

import base64
from pathlib import Path

from tests.presentation.conftest import Palette, running_palette


async def make_result(palette: Palette, prompt: str = "a lighthouse", **options) -> object:
    ix = await palette.imagine(palette.alice, prompt, **options)
    message = await palette.result_message(ix)
    await palette.idle()
    return message


async def test_reroll_makes_a_new_job_with_the_same_prompt(palette: Palette) -> None:
    message = await make_result(palette, aspect_ratio="3:2")
    click = await palette.fake.click_button(palette.bob, message, palette.button(message, "reroll"))
    rerolled = await palette.result_message(click)
    await palette.idle()
    assert rerolled.id != message.id
    body = palette.listenhub.generate_requests[-1].json
    assert body["prompt"] == "a lighthouse" and body["imageConfig"]["aspectRatio"] == "3:2"
    job = await palette.job_of(rerolled)
    parent = await palette.job_of(message)
    assert job.kind == "reroll" and job.parent_job_id == parent.id and job.user_id == palette.bob.id


async def test_edit_button_uses_the_result_as_reference(palette: Palette) -> None:
    message = await make_result(palette)
    original_image = message.files[0][1]
    click = await palette.fake.click_button(palette.alice, message, palette.button(message, "edit"))
    submitted = await palette.fill_modal(click, palette.alice, ["add a rainbow"])
    edited = await palette.result_message(submitted)
    body = palette.listenhub.generate_requests[-1].json
    assert body["prompt"] == "add a rainbow"
    assert base64.b64decode(body["referenceImages"][0]["inlineData"]["data"]) == original_image
    assert (await palette.job_of(edited)).kind == "edit"


async def test_upscale_rerenders_at_4k_with_the_image(palette: Palette) -> None:
    message = await make_result(palette)
    click = await palette.fake.click_button(palette.alice, message, palette.button(message, "upscale"))
    upscaled = await palette.result_message(click)
    body = palette.listenhub.generate_requests[-1].json
    assert body["imageConfig"]["imageSize"] == "4K"
    assert len(body["referenceImages"]) == 1
    assert (await palette.job_of(upscaled)).kind == "upscale"


async def test_delete_by_requester_and_refused_for_someone_else(palette: Palette) -> None:
    message = await make_result(palette)
    custom_id = palette.button(message, "delete")
    refused = await palette.fake.click_button(palette.bob, message, custom_id)
    await refused.wait_for_response(timeout=5)
    assert refused.ephemeral and "Only the person" in refused.responses[0]["data"]["content"]
    assert not message.deleted
    allowed = await palette.fake.click_button(palette.alice, message, custom_id)
    await allowed.wait_for(
        lambda i: bool(i.followups) or bool(i.original and "Deleted" in i.original.content), 10
    )
    assert message.deleted


async def test_history_paginates_with_buttons(tmp_path: Path) -> None:
    async with running_palette(tmp_path, user_hourly_limit=0, user_max_concurrent=0) as palette:
        for i in range(7):
            await palette.result_message(await palette.imagine(palette.alice, f"picture number {i}"))
        await palette.idle()
        ix = await palette.fake.invoke_slash(palette.alice, palette.channel, "history")
        await ix.wait_for(lambda i: bool(i.original and i.original.embeds), timeout=10)
        page = ix.original
        assert ix.ephemeral
        text = page.embeds[0]["description"]
        assert "picture number 6" in text and "picture number 2" in text and "picture number 1" not in text
        assert "discord.com/channels/" in text
        assert "Page 1 of 2" in page.embeds[0]["footer"]["text"]
        next_id = next(c["custom_id"] for c in page.iter_components() if c.get("label") == "Next")
        click = await palette.fake.click_button(palette.alice, page, next_id)
        await click.wait_for_response(timeout=5)
        assert "Page 2 of 2" in page.embeds[0]["footer"]["text"]
        assert "picture number 0" in page.embeds[0]["description"]
