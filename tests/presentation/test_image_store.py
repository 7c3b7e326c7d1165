"""The web gallery's image store as the bot keeps it: the worker stores the originals of what it
delivers (thumbnails are made when the gallery asks); /history-clear, the owner's Delete button and a
moderator's removal delete them (and the results rows) again; /palette gallery switches a server's
gallery."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bot.imagestore import ImageStore
from tests.presentation.conftest import Palette
from tests.presentation.test_mod_buttons import reported
from tests.presentation.test_moderation import setup_modlog


async def wait_stored(palette: Palette, user: Any, job_id: int, timeout: float = 10) -> None:
    """Until the worker stored the job's images (it does so right after settling, in the background)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not stored(palette, user, job_id)[0]:
        assert asyncio.get_running_loop().time() < deadline, "the images were not stored"
        await asyncio.sleep(0.02)
    store: ImageStore = palette.bot.image_store  # type: ignore[attr-defined]
    while store.incoming.is_dir() and any(store.incoming.iterdir()):
        assert asyncio.get_running_loop().time() < deadline, "held images were not cleaned up"
        await asyncio.sleep(0.02)


def stored(palette: Palette, user: Any, job_id: int) -> tuple[list[Path], list[Path]]:
    store: ImageStore = palette.bot.image_store  # type: ignore[attr-defined]
    originals = sorted((store.root / "originals" / str(user.id) / str(job_id)).glob("*"))
    thumbs = sorted((store.root / "thumbs" / str(user.id) / str(job_id)).glob("*"))
    return originals, thumbs


async def test_delivered_images_are_stored_and_history_clear_deletes_them(palette: Palette) -> None:
    mine = await palette.job_of(await palette.result_message(await palette.imagine(palette.alice, "a fox")))
    theirs = await palette.job_of(await palette.result_message(await palette.imagine(palette.bob, "an owl")))
    await palette.idle()
    await wait_stored(palette, palette.alice, mine.id)
    await wait_stored(palette, palette.bob, theirs.id)
    originals, thumbs = stored(palette, palette.alice, mine.id)
    results = await palette.bot.db.history.results_for_job(mine.id)
    assert [p.stem for p in originals] == [r.filename.rsplit(".", 1)[0] for r in results]
    assert thumbs == []  # made when the web gallery first asks for it
    store: ImageStore = palette.bot.image_store  # type: ignore[attr-defined]
    thumb = await store.thumbnail(palette.alice.id, mine.id, results[0].filename)
    assert thumb is not None and thumb.read_bytes()[8:12] == b"WEBP"
    assert stored(palette, palette.alice, mine.id)[1] == [thumb]

    ix = await palette.fake.invoke_slash(palette.alice, palette.channel, "history-clear")
    await palette.reply(ix)
    confirm = await palette.fake.click_button(palette.alice, ix.original, "palette:forget:confirm")
    await confirm.wait_for(lambda i: "Cleared 1" in (i.original.content if i.original else ""), timeout=10)
    assert stored(palette, palette.alice, mine.id) == ([], [])
    assert stored(palette, palette.bob, theirs.id) != ([], [])


async def test_the_owners_delete_button_removes_records_and_files(palette: Palette) -> None:
    message = await palette.result_message(await palette.imagine(palette.alice, "delete me"))
    job = await palette.job_of(message)
    await wait_stored(palette, palette.alice, job.id)
    click = await palette.fake.click_button(palette.alice, message, palette.button(message, "delete"))
    await palette.reply(click)
    assert message.deleted
    assert stored(palette, palette.alice, job.id) == ([], [])
    assert await palette.bot.db.history.results_for_job(job.id) == []


async def test_a_moderators_removal_removes_records_and_files(palette: Palette) -> None:
    _, log_channel = await setup_modlog(palette)
    message, job, report = await reported(palette, log_channel)
    await palette.idle()
    await wait_stored(palette, palette.alice, job.id)
    owner = palette.fake.users[palette.guild.owner_id]
    done = await palette.fake.click_button(owner, report, f"palette:mod:delete:{job.id}")
    assert "Deleted the result" in await palette.reply(done)
    assert message.deleted
    assert stored(palette, palette.alice, job.id) == ([], [])
    assert await palette.bot.db.history.results_for_job(job.id) == []


async def test_palette_gallery_on_off_is_logged(palette: Palette) -> None:
    manager, log_channel = await setup_modlog(palette)
    assert not await palette.bot.db.web.gallery_enabled(palette.guild.id)
    on = await palette.admin(manager, "gallery", mode="on")
    assert "Web gallery: on" in await palette.reply(on)
    assert await palette.bot.db.web.gallery_enabled(palette.guild.id)
    entry = await palette.modlog_entry(log_channel, "web gallery")
    assert entry.embeds
    off = await palette.admin(manager, "gallery", mode="off")
    assert "Web gallery: off" in await palette.reply(off)
    assert not await palette.bot.db.web.gallery_enabled(palette.guild.id)
