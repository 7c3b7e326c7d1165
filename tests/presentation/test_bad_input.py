"""Hostile or broken attachments and options through the real bot: a clear private message, no crash,
no charge, and no provider call."""

from __future__ import annotations

import io
import os
import time

import pytest
from PIL import Image

from tests.fakes.http import noisy_png
from tests.presentation.conftest import Palette
from tests.test_images import png_header_only


def gif_animated() -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def heic() -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(buf, "HEIF")
    return buf.getvalue()


REFUSED = {
    "random bytes": (os.urandom(4096), "noise.png"),
    "truncated png": (noisy_png(64, 64)[: len(noisy_png(64, 64)) // 2], "half.png"),
    "text named png": (b"hello, I am text\n" * 20, "cat.png"),
    "100000x100000 claim": (png_header_only(100_000, 100_000), "bomb.png"),
    "empty file": (b"", "empty.png"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_bad_attachments_are_refused_privately_and_cost_nothing(palette: Palette, case: str) -> None:
    data, name = REFUSED[case]
    att = palette.fake.add_attachment(data, name, "image/png")
    ix = await palette.edit(palette.alice, "make it nicer", [att])
    await ix.wait_for(lambda i: any(m.flags & 64 for m in i.followups) or (i.ephemeral and i.responses), 10)
    texts = [m.content for m in ix.followups if m.flags & 64] or [ix.responses[0]["data"]["content"]]
    assert texts[0] and "wrong" not in texts[0].lower()  # a specific message, not the generic fallback
    assert palette.listenhub.calls["generate"] == 0
    usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time())
    assert usage.daily_used == 0 and usage.in_flight == 0


async def test_a_30_mb_attachment_is_refused_before_downloading(palette: Palette) -> None:
    att = palette.fake.add_attachment(b"\x89PNG" + b"\0" * (30 * 1024 * 1024), "huge.png", "image/png")
    ix = await palette.edit(palette.alice, "shrink it", [att])
    response = await ix.wait_for_response(timeout=10)
    assert ix.ephemeral and "30.0 MB" in response["data"]["content"]
    assert palette.listenhub.calls["generate"] == 0


@pytest.mark.parametrize("kind", ["animated gif", "heic"])
async def test_gif_and_heic_references_are_accepted(palette: Palette, kind: str) -> None:
    data = gif_animated() if kind == "animated gif" else heic()
    att = palette.fake.add_attachment(data, "ref.gif" if kind == "animated gif" else "ref.heic", None)
    await palette.result_message(await palette.edit(palette.alice, "use this", [att]))
    sent = palette.listenhub.generate_requests[-1].json["referenceImages"][0]["inlineData"]["mimeType"]
    assert sent in {"image/gif", "image/heic", "image/png", "image/jpeg", "image/webp"}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"model": "dall-e-9"}, "Unknown model"),
        ({"aspect_ratio": "banana"}, "aspect ratio"),
        ({"model": "gpt-image-2", "seed": 5}, "seed"),
        ({"model": "nano-banana", "resolution": "4K"}, "4K"),
    ],
)
async def test_bad_options_get_a_private_explanation(palette: Palette, options: dict, fragment: str) -> None:
    ix = await palette.imagine(palette.alice, "a cat", **options)
    response = await ix.wait_for_response(timeout=5)
    assert ix.ephemeral and fragment in response["data"]["content"]
    assert palette.listenhub.calls["generate"] == 0 and palette.mountsea.submit_calls == 0


async def test_zero_width_rtl_and_control_characters_in_prompts_are_handled(palette: Palette) -> None:
    prompt = "\u202eتنين\u200b\u200d dragon \x07\x1b[31m in \u0000 fog"
    message = await palette.result_message(await palette.imagine(palette.alice, prompt))
    sent = palette.listenhub.generate_requests[-1].json["prompt"]
    assert "\x07" not in sent and "\x1b" not in sent and "\x00" not in sent
    assert "dragon" in sent and "تنين" in sent
    assert message.embeds[0]["title"]
