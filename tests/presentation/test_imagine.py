"""/imagine end to end through the fake Discord and the fake providers."""

from __future__ import annotations

import io

from PIL import Image

from tests.presentation.conftest import Palette


async def test_imagine_posts_the_provider_image(palette: Palette) -> None:
    assert palette.fake.find_command("imagine") is not None
    ix = await palette.imagine(palette.alice, "a red fox in snow", aspect_ratio="16:9")
    await ix.wait_for_response(timeout=5)
    assert ix.deferred and not ix.ephemeral
    message = await palette.result_message(ix)
    await palette.idle()
    (_name, data, _ctype) = message.files[0]
    assert data == palette.listenhub.images[-1]
    with Image.open(io.BytesIO(data)) as img:
        assert img.width > img.height
    request = palette.listenhub.generate_requests[-1].json
    assert request["prompt"] == "a red fox in snow"
    assert request["imageConfig"]["aspectRatio"] == "16:9"
    embed = message.embeds[0]
    assert "a red fox in snow" in embed["title"]
    custom_ids = [c["custom_id"] for row in message.components for c in row["components"]]
    assert any(cid.startswith("palette:reroll:") for cid in custom_ids)
    job = await palette.bot.db.get_job(int(custom_ids[0].rsplit(":", 1)[1]))
    assert job is not None and job.status == "done" and job.committed == 1 and job.refunded == 0
