"""Styles and cancelling in storage (issue 12), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from bot.storage import Database, Limits
from bot.storage.styles import StyleImage
from bot.styles import StyleProblem, StyleService
from tests.storage.factories import new_job

NOW = 1_700_000_000.0


async def test_styles_are_saved_replaced_listed_and_deleted(db: Database) -> None:
    service = StyleService(db.styles, clock=lambda: NOW)
    png = StyleImage(mime_type="image/png", data=b"\x89PNG fake bytes")
    saved = await service.save(
        "personal", user_id=1, guild_id=10, name=" Water  Color ", template="{prompt}, wet", images=[png]
    )
    assert saved.name == "water color" and saved.references == 1
    await service.save("server", user_id=2, guild_id=10, name="house", template="{prompt}, house")
    await service.save("server", user_id=2, guild_id=11, name="elsewhere", template="{prompt}")
    replaced = await service.save(
        "personal", user_id=1, guild_id=10, name="water color", template="wet {prompt}", model="gpt-image-2"
    )
    assert replaced.id == saved.id and replaced.references == 0 and replaced.model == "gpt-image-2"
    assert [(s.scope, s.name) for s in await service.usable(1, 10)] == [
        ("personal", "water color"),
        ("server", "house"),
    ]
    assert [s.name for s in await service.usable(1, None)] == ["water color"]
    found = await service.resolve("water color", user_id=1, guild_id=10)
    assert found.expand("rain", max_length=100) == "wet rain" and found.images == ()
    with pytest.raises(StyleProblem) as problem:
        await service.find("me:house", user_id=1, guild_id=10)
    assert problem.value.kind == "not_found"
    assert (await service.find("house", user_id=1, guild_id=10)).scope == "server"
    assert await service.delete(found.record)
    assert [s.name for s in await service.usable(1, 10)] == ["house"]


async def test_cancel_refunds_once_and_not_after_settling(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(count=3), Limits(), NOW)
    assert await db.jobs.cancel_job(job.id, 99, NOW + 1)
    assert not await db.jobs.cancel_job(job.id, 99, NOW + 2)
    assert not await db.jobs.finish_job(job.id, 3, now=NOW + 3)  # a late result changes nothing
    after = await db.jobs.get_job(job.id)
    assert after is not None and after.status == "cancelled" and after.refunded == 3 and after.committed == 0
    assert after.cancelled_by == 99 and await db.jobs.job_status(job.id) == "cancelled"
    done = await db.jobs.reserve_job(new_job(), Limits(), NOW)
    assert await db.jobs.finish_job(done.id, 1, now=NOW + 1)
    assert not await db.jobs.cancel_job(done.id, 99, NOW + 2)
    assert (await db.jobs.ledger_balance()).balanced
