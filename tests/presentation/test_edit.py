"""/edit and the "Edit with Palette" message command, end to end."""

from __future__ import annotations

import base64
import time

from tests.fakes.http import jpeg_bytes, png_bytes
from tests.presentation.conftest import Palette


async def test_edit_sends_both_attachments_to_the_provider(palette: Palette) -> None:
    first = png_bytes(40, 40, (255, 0, 0))
    second = jpeg_bytes(48, 32)
    a = palette.fake.add_attachment(first, "a.png", "image/png")
    b = palette.fake.add_attachment(second, "b.jpg", "image/jpeg")
    ix = await palette.edit(palette.alice, "put the red square on the blue one", [a, b])
    message = await palette.result_message(ix)
    refs = palette.listenhub.generate_requests[-1].json["referenceImages"]
    assert [r["inlineData"]["mimeType"] for r in refs] == ["image/png", "image/jpeg"]
    assert [base64.b64decode(r["inlineData"]["data"]) for r in refs] == [first, second]
    job = await palette.job_of(message)
    assert job.kind == "edit" and job.status == "done"


async def test_a_text_file_named_png_is_refused_and_costs_nothing(palette: Palette) -> None:
    fake_png = palette.fake.add_attachment(b"just some text, not pixels", "cat.png", "image/png")
    ix = await palette.edit(palette.alice, "make it blue", [fake_png])
    await ix.wait_for(lambda i: any(m.flags & 64 for m in i.followups), timeout=10)
    error = next(m for m in ix.followups if m.flags & 64)
    assert "not a supported image" in error.content
    assert ix.original is None or ix.original.deleted  # the public "thinking" message was removed
    assert palette.listenhub.calls["generate"] == 0
    usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time())
    assert usage.in_flight == 0


async def test_truncated_png_is_refused(palette: Palette) -> None:
    data = png_bytes(64, 64)
    broken = palette.fake.add_attachment(data[: len(data) // 2], "half.png", "image/png")
    ix = await palette.edit(palette.alice, "fix it", [broken])
    await ix.wait_for(lambda i: any(m.flags & 64 for m in i.followups), timeout=10)
    assert palette.listenhub.calls["generate"] == 0


async def test_context_menu_asks_for_a_prompt_and_edits_the_message_images(palette: Palette) -> None:
    photo = png_bytes(30, 20, (0, 200, 0))
    att = palette.fake.add_attachment(photo, "photo.png", "image/png")
    target = palette.fake.post_user_message(palette.bob, palette.channel, "look at this", attachments=[att])
    ix = await palette.fake.invoke_message_command(
        palette.alice, palette.channel, "Edit with Palette", target
    )
    submitted = await palette.fill_modal(ix, palette.alice, ["make it night time"])
    await palette.result_message(submitted)
    body = palette.listenhub.generate_requests[-1].json
    assert body["prompt"] == "make it night time"
    assert base64.b64decode(body["referenceImages"][0]["inlineData"]["data"]) == photo


async def test_context_menu_on_a_message_without_images_is_a_private_error(palette: Palette) -> None:
    target = palette.fake.post_user_message(palette.bob, palette.channel, "no pictures here")
    ix = await palette.fake.invoke_message_command(
        palette.alice, palette.channel, "Edit with Palette", target
    )
    await ix.wait_for_response(timeout=5)
    assert ix.ephemeral and ix.modal is None
    assert "no images" in ix.responses[0]["data"]["content"]
