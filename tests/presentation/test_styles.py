"""Styles (issue 12), end to end: /style save|list|delete, the style option of /imagine and /edit."""

from __future__ import annotations

import base64
import time
from typing import Any

from tests.fakes.http import png_bytes
from tests.presentation.conftest import Palette

MANAGER = 1 << 5  # Manage Server


async def style(
    palette: Palette, who: Any, subcommand: str, *, attachments: Any = None, **options: Any
) -> str:
    ix = await palette.fake.invoke_slash(
        who, palette.channel, "style", options=options, subcommand=subcommand, attachments=attachments or []
    )
    return await palette.reply(ix)


async def choices(
    palette: Palette, who: Any, command: str, typed: str = "", **kw: Any
) -> list[dict[str, Any]]:
    options = [{"name": "prompt", "value": "x"}, {"name": "style", "value": typed, "focused": True}]
    if command == "style":
        options = [{"name": "name", "value": typed, "focused": True}]
    ix = await palette.fake.autocomplete(who, palette.channel, command, options=options, **kw)
    await ix.wait_for(lambda i: i.autocomplete_choices is not None, timeout=5)
    return list(ix.autocomplete_choices)


async def test_a_personal_style_expands_the_prompt_with_its_defaults(palette: Palette) -> None:
    saved = await style(
        palette, palette.alice, "save", name="Watercolor", template="{prompt}, soft watercolor, pastel",
        aspect_ratio="16:9",
    )  # fmt: skip
    assert "Saved your style **watercolor** (16:9)" in saved
    ix = await palette.imagine(palette.alice, "a lighthouse", style="me:watercolor")
    message = await palette.result_message(ix)
    body = palette.listenhub.generate_requests[-1].json
    assert body["prompt"] == "a lighthouse, soft watercolor, pastel"
    assert body["imageConfig"]["aspectRatio"] == "16:9"
    job = await palette.job_of(message)
    assert job.prompt == "a lighthouse, soft watercolor, pastel" and job.status == "done"
    # A bare name works too; an option chosen by the user beats the style's default.
    await palette.result_message(
        await palette.imagine(palette.alice, "a fox", style="watercolor", aspect_ratio="1:1")
    )
    body = palette.listenhub.generate_requests[-1].json
    assert body["prompt"] == "a fox, soft watercolor, pastel" and body["imageConfig"]["aspectRatio"] == "1:1"
    # Bob has no such style.
    refused = await palette.imagine(palette.bob, "a fox", style="me:watercolor")
    assert "no style called `watercolor`" in await palette.reply(refused)
    assert palette.listenhub.calls["generate"] == 2


async def test_autocomplete_offers_the_users_and_the_servers_styles(palette: Palette) -> None:
    manager = palette.member("manager", permissions=MANAGER)
    await style(palette, palette.alice, "save", name="noir", template="{prompt}, film noir")
    await style(palette, palette.bob, "save", name="bobs secret", template="{prompt}, bob")
    saved = await style(
        palette, manager, "save", name="house", template="{prompt}, house style", scope="server"
    )
    assert "Saved the server style **house**" in saved
    offered = {c["value"] for c in await choices(palette, palette.alice, "imagine")}
    assert offered == {"me:noir", "server:house"}
    assert {c["value"] for c in await choices(palette, palette.alice, "edit", "hou")} == {"server:house"}
    assert {c["value"] for c in await choices(palette, palette.bob, "imagine")} == {
        "me:bobs secret",
        "server:house",
    }
    # A member uses the server's style.
    await palette.result_message(await palette.imagine(palette.bob, "a tower", style="server:house"))
    assert palette.listenhub.generate_requests[-1].json["prompt"] == "a tower, house style"
    listing = await palette.fake.invoke_slash(palette.alice, palette.channel, "style", subcommand="list")
    await listing.wait_for(lambda i: bool(i.responses), timeout=5)
    fields = listing.responses[0]["data"]["embeds"][0]["fields"]
    assert {f["name"].split(" · ")[0] for f in fields} == {"noir", "house"}


async def test_server_styles_need_a_moderator(palette: Palette) -> None:
    refused = await style(
        palette, palette.alice, "save", name="house", template="{prompt}, x", scope="server"
    )
    assert "Only the server's moderators" in refused
    manager = palette.member("manager", permissions=MANAGER)
    await style(palette, manager, "save", name="house", template="{prompt}, x", scope="server")
    assert "Only the server's moderators" in await style(
        palette, palette.alice, "delete", name="server:house"
    )
    assert "Deleted the server style **house**" in await style(
        palette, manager, "delete", name="server:house"
    )
    assert await choices(palette, palette.alice, "imagine") == []


async def test_bad_templates_get_clear_messages(palette: Palette) -> None:
    assert "needs `{prompt}`" in await style(palette, palette.alice, "save", name="a", template="just words")
    assert "Only `{prompt}` may be in braces" in await style(
        palette, palette.alice, "save", name="a", template="{prompt} {style}"
    )
    assert "at most 1000" in await style(
        palette, palette.alice, "save", name="a", template="{prompt}" + "x" * 1000
    )
    assert "A style name is" in await style(
        palette, palette.alice, "save", name="bad/name", template="{prompt}"
    )
    assert "Unknown model" in await style(
        palette, palette.alice, "save", name="a", template="{prompt}", model="nope"
    )
    assert await palette.bot.styles.usable(palette.alice.id, palette.guild.id) == []
    # The expansion must fit the prompt limit too.
    await style(palette, palette.alice, "save", name="long", template="{prompt} " + "y" * 990)
    refused = await palette.imagine(palette.alice, "z" * 3500, style="long")
    assert "at most 4000 fit" in await palette.reply(refused)
    assert palette.listenhub.calls["generate"] == 0


async def test_the_prompt_filter_sees_the_expanded_prompt(palette: Palette) -> None:
    manager = palette.member("manager", permissions=MANAGER)
    assert "Blocked" in await palette.reply(await palette.admin(manager, "blocklist add", pattern="gore"))
    await style(palette, palette.alice, "save", name="grim", template="{prompt}, lots of gore")
    refused = await palette.imagine(palette.alice, "a quiet meadow", style="grim")
    assert "isn't allowed" in await palette.reply(refused)
    assert palette.listenhub.calls["generate"] == 0
    usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time())
    assert usage.daily_used == 0


async def test_a_styles_images_are_references_and_count_toward_the_limit(palette: Palette) -> None:
    ref = png_bytes(40, 40, (0, 200, 0))
    att = palette.fake.add_attachment(ref, "green.png", "image/png")
    saved = await style(
        palette,
        palette.alice,
        "save",
        name="green",
        template="{prompt} in green",
        image=att,
        attachments=[att],
    )
    assert "1 image" in saved
    ix = await palette.imagine(palette.alice, "a car", style="green")
    await palette.result_message(ix)
    body = palette.listenhub.generate_requests[-1].json
    assert body["prompt"] == "a car in green"
    assert [base64.b64decode(r["inlineData"]["data"]) for r in body["referenceImages"]] == [ref]
    # GPT Image 2 takes 4 references: four attached plus the style's one is too many, refused for free.
    images = [palette.fake.add_attachment(png_bytes(32, 32), f"{i}.png", "image/png") for i in range(4)]
    calls = palette.listenhub.calls["generate"]
    refused = await palette.edit(palette.alice, "combine", images, model="gpt-image-2", style="green")
    assert "at most 4 reference images" in await palette.reply(refused)
    assert palette.listenhub.calls["generate"] == calls
    # Three attached plus the style's one fit.
    ok = await palette.edit(palette.alice, "combine", images[:3], model="gpt-image-2", style="green")
    await palette.result_message(ok)
    body = palette.listenhub.generate_requests[-1].json
    assert len(body["referenceImages"]) == 4 and body["prompt"] == "combine in green"
    await palette.idle()
    assert (await palette.bot.db.jobs.ledger_balance()).balanced
