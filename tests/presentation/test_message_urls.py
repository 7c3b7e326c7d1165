""" "Edit with Palette" on a message whose images are embed URLs (hosts the message's author chose): a host
that trickles its bytes ends at the deadline with a private message and no charge, other users' jobs go
on, and one user cannot have more than a few such downloads at once (issue 13)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.presentation.flows import URL_FETCHES_PER_USER
from tests.fakes.http import FakeServer, TrickleServer, png_bytes
from tests.presentation.conftest import Palette, running_palette

EPHEMERAL = 64


@pytest.fixture
async def trickle() -> AsyncIterator[TrickleServer]:
    async with TrickleServer() as server:
        yield server


def image_embeds(*urls: str) -> list[dict[str, Any]]:
    return [{"type": "image", "image": {"url": url}} for url in urls]


async def edit_message(palette: Palette, user: Any, target: Any, prompt: str) -> Any:
    """Right-click -> Apps -> Edit with Palette on ``target`` as ``user``, then type ``prompt``."""
    ix = await palette.fake.invoke_message_command(user, palette.channel, "Edit with Palette", target)
    return await palette.fill_modal(ix, user, [prompt])


async def private_error(ix: Any, timeout: float = 30) -> str:
    """The ephemeral error ``ix`` ends with: a followup after a deferral, or the response itself."""

    def find(i: Any) -> str | None:
        for message in i.followups:
            if message.flags & EPHEMERAL:
                return str(message.content)
        for response in i.responses:
            data = response.get("data") or {}
            if response.get("type") == 4 and (data.get("flags") or 0) & EPHEMERAL:
                return str(data.get("content"))
        return None

    return await ix.wait_for(find, timeout)


async def assert_nothing_charged(palette: Palette, user: Any) -> None:
    usage = await palette.bot.db.jobs.usage(user.id, time.time())
    assert (usage.daily_used, usage.hourly_used, usage.in_flight) == (0, 0, 0)


async def test_a_trickling_image_url_ends_privately_costs_nothing_and_others_carry_on(
    tmp_path: Path, trickle: TrickleServer
) -> None:
    async with running_palette(tmp_path, users=2, reference_download_deadline=1.0) as palette:
        target = palette.fake.post_user_message(
            palette.bob,
            palette.channel,
            "look at these",
            embeds=image_embeds(f"{trickle.base_url}/a.png", f"{trickle.base_url}/b.png"),
        )
        submitted = await edit_message(palette, palette.alice, target, "make it night time")
        await trickle.wait_until(lambda t: t.started == 2)

        # Bob's job is served by a provider whose result is a URL (ListenHub is down): it downloads fine.
        palette.listenhub.script(500, {"error": "down"}, times=None)
        other = await palette.imagine(palette.bob, "a lighthouse")
        result = await palette.result_message(other, timeout=30)
        assert (await palette.job_of(result)).status == "done"

        error = await private_error(submitted)
        assert "could not be downloaded" in error and "timed out" in error
        assert submitted.original is None or submitted.original.deleted
        await trickle.wait_until(lambda t: t.active == 0 and t.hung_up == 2)
        await assert_nothing_charged(palette, palette.alice)


async def test_one_user_has_at_most_a_few_message_images_downloading(
    tmp_path: Path, trickle: TrickleServer
) -> None:
    good = png_bytes(24, 16, (0, 90, 200))

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=good, content_type="image/png")

    app = web.Application()
    app.router.add_get("/good.png", image)
    async with FakeServer(app) as images, running_palette(tmp_path, users=2) as palette:
        many = [f"{trickle.base_url}/{i}.png" for i in range(URL_FETCHES_PER_USER + 2)]
        busy = palette.fake.post_user_message(
            palette.bob, palette.channel, "many", embeds=image_embeds(*many)
        )
        one = palette.fake.post_user_message(
            palette.bob, palette.channel, "one", embeds=image_embeds(f"{trickle.base_url}/one.png")
        )
        first = await edit_message(palette, palette.alice, busy, "first")
        # At most URL_FETCHES_PER_USER images are taken from one message.
        await trickle.wait_until(lambda t: t.started == URL_FETCHES_PER_USER)

        second = await edit_message(palette, palette.alice, one, "second")
        refusal = await private_error(second, timeout=10)
        assert "still downloading" in refusal
        assert second.response_type == 4  # refused at once: not deferred, nothing downloaded
        assert trickle.started == URL_FETCHES_PER_USER

        # The limit is Alice's own: Bob's edit downloads meanwhile.
        await edit_message(palette, palette.bob, one, "bob's")
        await trickle.wait_until(lambda t: t.started == URL_FETCHES_PER_USER + 1)

        trickle.release.set()  # the bodies end now, as something that is not an image
        assert "could not be read" in await private_error(first)  # a PNG signature, then zeros
        await assert_nothing_charged(palette, palette.alice)

        # Alice's slots were given back: her next edit from a message runs.
        ok = palette.fake.post_user_message(
            palette.bob, palette.channel, "ok", embeds=image_embeds(f"{images.base_url}/good.png")
        )
        third = await edit_message(palette, palette.alice, ok, "make it green")
        await palette.result_message(third, timeout=30)
        refs = palette.listenhub.generate_requests[-1].json["referenceImages"]
        assert [base64.b64decode(r["inlineData"]["data"]) for r in refs] == [good]


async def test_an_image_named_as_both_image_and_thumbnail_is_fetched_once(tmp_path: Path) -> None:
    picture = png_bytes(20, 20, (200, 200, 0))
    served: list[str] = []

    async def image(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.Response(body=picture, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", image)
    async with FakeServer(app) as images, running_palette(tmp_path) as palette:
        url = f"{images.base_url}/preview.png"
        embed = {"type": "article", "image": {"url": url}, "thumbnail": {"url": url}}
        target = palette.fake.post_user_message(palette.bob, palette.channel, url, embeds=[embed])
        await palette.result_message(await edit_message(palette, palette.alice, target, "in watercolour"))
    refs = palette.listenhub.generate_requests[-1].json["referenceImages"]
    assert [base64.b64decode(r["inlineData"]["data"]) for r in refs] == [picture]
    assert served == ["/preview.png"]
