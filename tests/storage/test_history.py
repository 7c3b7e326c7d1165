"""History pages, results and /history clear."""

from __future__ import annotations

import pytest

from bot.storage import Database, JobRecord, Limits, NewResult, QuotaExceeded

from .factories import HOUR, NOW, new_job, reference


async def delivered_job(
    db: Database, at: float, user_id: int = 1, images: int = 1, guild_id: int | None = 100, **kw: object
) -> JobRecord:
    job = await db.jobs.reserve_job(
        new_job(user_id=user_id, guild_id=guild_id, count=images, **kw), Limits(), at
    )
    results = [
        NewResult(filename=f"{job.id}-{n}.png", sha256=f"{job.id:032x}{n:032x}", size_bytes=100 * job.id + n,
                  attachment_id=job.id * 10 + n)
        for n in range(images)
    ]  # fmt: skip
    await db.jobs.finish_job(job.id, images, result_message_id=job.id * 1000, results=results, now=at + 5)
    return job


async def test_history_pages_newest_first_without_overlap(db: Database) -> None:
    jobs = [await delivered_job(db, NOW + i * 60, prompt=f"prompt {i}") for i in range(25)]
    failed = await db.jobs.reserve_job(new_job(), Limits(), NOW + 10_000)
    await db.jobs.finish_job(failed.id, 0, status="failed", now=NOW + 10_001)
    await db.jobs.reserve_job(new_job(), Limits(), NOW + 20_000)  # still queued
    await delivered_job(db, NOW + 30_000, user_id=2)  # someone else

    pages = [await db.history.history(1, limit=10, offset=offset) for offset in (0, 10, 20, 30)]
    assert [len(p) for p in pages] == [10, 10, 5, 0]
    ids = [entry.job_id for page in pages for entry in page]
    assert ids == [job.id for job in reversed(jobs)]
    assert await db.history.count_history(1) == 25
    first = pages[0][0]
    assert (first.prompt, first.model, first.kind, first.created_at) == (
        "prompt 24",
        "nano-banana",
        "imagine",
        NOW + 24 * 60,
    )
    assert (first.guild_id, first.channel_id, first.finished_at) == (100, 200, NOW + 24 * 60 + 5)


async def test_history_entry_shows_the_first_result(db: Database) -> None:
    job = await delivered_job(db, NOW, images=3)
    [entry] = await db.history.history(1)
    assert entry.job_id == job.id
    assert entry.image_count == 3
    assert entry.attachment_id == job.id * 10
    assert entry.sha256 == f"{job.id:032x}{0:032x}"
    assert entry.size_bytes == 100 * job.id
    assert entry.message_id == job.id * 1000


async def test_history_of_a_job_without_result_rows(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(), Limits(), NOW)
    await db.jobs.finish_job(job.id, 1, result_message_id=5, now=NOW + 1)
    [entry] = await db.history.history(1)
    assert (entry.image_count, entry.attachment_id, entry.sha256, entry.message_id) == (0, None, None, 5)


async def test_history_filtered_by_guild(db: Database) -> None:
    in_a = await delivered_job(db, NOW, guild_id=100)
    in_b = await delivered_job(db, NOW + 1, guild_id=101)
    in_dm = await delivered_job(db, NOW + 2, guild_id=None)
    assert [e.job_id for e in await db.history.history(1, guild_id=100)] == [in_a.id]
    assert [e.job_id for e in await db.history.history(1, guild_id=101)] == [in_b.id]
    assert [e.job_id for e in await db.history.history(1)] == [in_dm.id, in_b.id, in_a.id]
    assert await db.history.count_history(1, guild_id=101) == 1


async def test_history_rejects_negative_paging(db: Database) -> None:
    with pytest.raises(ValueError):
        await db.history.history(1, limit=-1)


async def test_delete_user_data_clears_content_but_keeps_quota_and_ledger(db: Database) -> None:
    limits = Limits(daily=5)
    done = [await delivered_job(db, NOW - HOUR + i, references=(reference(),)) for i in range(3)]
    in_flight = await db.jobs.reserve_job(
        new_job(prompt="keep me", references=(reference(b"keep"),), interaction_token="tok"), limits, NOW
    )
    other = await delivered_job(db, NOW, user_id=2, references=(reference(),))
    usage_before = await db.jobs.usage(1, NOW)

    assert await db.history.delete_user_data(1, now=NOW + 1) == 3
    assert await db.history.history(1) == []
    assert await db.history.count_history(1) == 0
    for job in done:
        assert await db.history.results_for_job(job.id) == []
        assert await db.jobs.get_references(job.id) == []
        cleared = await db.jobs.get_job(job.id)
        assert cleared is not None
        assert (cleared.prompt, cleared.params_dict, cleared.interaction_token, cleared.purged_at) == (
            "",
            {},
            None,
            NOW + 1,
        )
        assert (cleared.status, cleared.committed) == ("done", 1)
    # The job still running keeps what it needs.
    kept = await db.jobs.get_job(in_flight.id)
    assert kept is not None and kept.prompt == "keep me" and kept.interaction_token == "tok"
    assert [r.data for r in await db.jobs.get_references(in_flight.id)] == [b"keep"]
    # Clearing history does not give quota back, and the ledger still balances.
    assert await db.jobs.usage(1, NOW) == usage_before
    with pytest.raises(QuotaExceeded, match="used 4 of your 5"):
        await db.jobs.reserve_job(new_job(count=2), limits, NOW)
    assert (await db.jobs.ledger_balance()).balanced
    # Other users are untouched; a second clear has nothing to do.
    assert [e.job_id for e in await db.history.history(2)] == [other.id]
    assert len(await db.history.results_for_job(other.id)) == 1
    assert await db.history.delete_user_data(1, now=NOW + 2) == 0
