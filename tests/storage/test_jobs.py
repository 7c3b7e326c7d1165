"""Job lifecycle: running/task bookkeeping, finish_job settlement, recovery, references."""

from __future__ import annotations

import asyncio
import os

import pytest
from sqlalchemy.exc import IntegrityError

from bot.storage import Database, JobNotFound, Limits, NewReference, NewResult, open_database

from .factories import NOW, claim_job, new_job, reference


def result(n: int, **kw: object) -> NewResult:
    return NewResult(**{"filename": f"image-{n}.png", "sha256": f"{n:064x}", "size_bytes": 1000 + n,
                        "mime_type": "image/png", "width": 1024, "height": 1024, "attachment_id": 9000 + n,
                        **kw})  # fmt: skip


async def ledger_rows(db: Database, job_id: int) -> list[tuple[str, int]]:
    rows = await db.fetchall(
        "SELECT entry, amount FROM ledger WHERE job_id = :id ORDER BY id", {"id": job_id}
    )
    return [(r.entry, r.amount) for r in rows]


async def test_running_and_task_bookkeeping(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(), Limits(), NOW)
    await claim_job(db, job.id, NOW + 1)
    assert await db.jobs.set_task(job.id, "apimart", "gemini-3-pro-image", "task-123") is True
    assert await db.jobs.increment_attempts(job.id) == 1
    assert await db.jobs.increment_attempts(job.id) == 2
    assert await db.jobs.set_status_message(job.id, 555) is True
    assert await db.jobs.set_interaction(job.id, "new-token", NOW + 2) is True
    stored = await db.jobs.get_job(job.id)
    assert stored is not None
    assert stored.status == "running"
    assert stored.started_at == NOW + 1
    assert (stored.provider, stored.provider_model, stored.task_id) == (
        "apimart",
        "gemini-3-pro-image",
        "task-123",
    )
    assert (stored.attempts, stored.status_message_id) == (2, 555)
    assert (stored.interaction_token, stored.interaction_created_at) == ("new-token", NOW + 2)
    assert stored.open_reservation == 1 and not stored.finished


async def test_unknown_job(db: Database) -> None:
    assert await db.jobs.get_job(424242) is None
    assert await db.jobs.set_task(424242, "x", None, "t") is False
    assert await db.jobs.set_status_message(424242, 1) is False
    with pytest.raises(JobNotFound):
        await db.jobs.increment_attempts(424242)
    with pytest.raises(JobNotFound):
        await db.jobs.finish_job(424242, 0, now=NOW)
    assert await db.jobs.get_references(424242) == []


async def test_finish_done_commits_everything(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(count=2), Limits(), NOW)
    await claim_job(db, job.id, NOW + 1)
    finished = await db.jobs.finish_job(
        job.id,
        2,
        result_message_id=777,
        results=[result(1), result(2, message_id=778)],
        provider="listenhub",
        now=NOW + 30,
    )
    assert finished is True
    stored = await db.jobs.get_job(job.id)
    assert stored is not None
    assert (stored.status, stored.committed, stored.refunded, stored.finished_at) == ("done", 2, 0, NOW + 30)
    assert stored.result_message_id == 777 and stored.open_reservation == 0 and stored.finished
    assert await ledger_rows(db, job.id) == [("reserve", 2), ("commit", 2)]
    results = await db.history.results_for_job(job.id)
    assert [(r.filename, r.message_id, r.attachment_id) for r in results] == [
        ("image-1.png", 777, 9001),
        ("image-2.png", 778, 9002),
    ]
    first = results[0]
    assert (first.user_id, first.guild_id, first.channel_id, first.provider) == (1, 100, 200, "listenhub")
    assert (first.sha256, first.size_bytes, first.width, first.created_at) == (
        f"{1:064x}",
        1001,
        1024,
        NOW + 30,
    )


async def test_finish_records_the_serving_provider(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(), Limits(), NOW)
    await claim_job(db, job.id, NOW)
    await db.jobs.finish_job(
        job.id, 1, results=[result(1)], provider="apimart", provider_model="gemini-3-pro-image", now=NOW + 1
    )
    stored = await db.jobs.get_job(job.id)
    assert stored is not None
    assert (stored.provider, stored.provider_model) == ("apimart", "gemini-3-pro-image")
    [row] = await db.history.results_for_job(job.id)
    assert row.provider == "apimart"


async def test_partial_delivery_refunds_the_rest(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(count=4), Limits(), NOW)
    assert await db.jobs.finish_job(job.id, 3, results=[result(i) for i in range(3)], now=NOW + 5)
    stored = await db.jobs.get_job(job.id)
    assert stored is not None
    assert (stored.status, stored.reserved, stored.committed, stored.refunded) == ("done", 4, 3, 1)
    assert await ledger_rows(db, job.id) == [("reserve", 4), ("commit", 3), ("refund", 1)]
    assert (await db.jobs.usage(1, NOW + 6)).daily_used == 3


@pytest.mark.parametrize("status", ["failed", "cancelled"])
async def test_failed_or_cancelled_refunds_all(db: Database, status: str) -> None:
    job = await db.jobs.reserve_job(new_job(count=2), Limits(), NOW)
    assert await db.jobs.finish_job(
        job.id,
        0,
        status=status,
        error="The provider is busy.",
        error_kind="ProviderBusy",
        now=NOW + 5,  # type: ignore[arg-type]
    )
    stored = await db.jobs.get_job(job.id)
    assert stored is not None
    assert (stored.status, stored.committed, stored.refunded) == (status, 0, 2)
    assert (stored.error, stored.error_kind) == ("The provider is busy.", "ProviderBusy")
    assert await ledger_rows(db, job.id) == [("reserve", 2), ("commit", 0), ("refund", 2)]
    assert (await db.jobs.usage(1, NOW + 6)).daily_used == 0


async def test_double_finish_is_a_no_op(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(count=2), Limits(), NOW)
    assert await db.jobs.finish_job(job.id, 1, results=[result(1)], now=NOW + 1) is True
    before = await db.jobs.get_job(job.id)
    assert (
        await db.jobs.finish_job(job.id, 0, status="failed", error="late", results=[result(2)], now=NOW + 2)
        is False
    )
    assert await db.jobs.finish_job(job.id, 2, now=NOW + 3) is False
    assert await db.jobs.get_job(job.id) == before
    assert await ledger_rows(db, job.id) == [("reserve", 2), ("commit", 1), ("refund", 1)]
    assert len(await db.history.results_for_job(job.id)) == 1


async def test_concurrent_finishes_settle_once(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(count=3), Limits(), NOW)
    outcomes = await asyncio.gather(
        *(
            db.jobs.finish_job(job.id, n % 4, status="done" if n % 2 else "failed", now=NOW + n)
            for n in range(20)
        )
    )
    assert outcomes.count(True) == 1
    rows = await ledger_rows(db, job.id)
    assert [entry for entry, _ in rows].count("commit") == 1
    assert (await db.jobs.ledger_balance()).balanced


async def test_finish_rejects_bad_arguments(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(count=2), Limits(), NOW)
    with pytest.raises(ValueError, match="reserved 2"):
        await db.jobs.finish_job(job.id, 3, now=NOW)
    with pytest.raises(ValueError):
        await db.jobs.finish_job(job.id, -1, now=NOW)
    with pytest.raises(ValueError):
        await db.jobs.finish_job(job.id, 1, status="queued", now=NOW)  # type: ignore[arg-type]
    stored = await db.jobs.get_job(job.id)
    assert stored is not None and stored.status == "queued" and stored.committed == 0
    assert await ledger_rows(db, job.id) == [("reserve", 2)]


async def test_result_insert_failure_rolls_back_the_settlement(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(count=2), Limits(), NOW)
    bad = NewResult(filename=None, sha256="x")  # type: ignore[arg-type]  # violates NOT NULL
    with pytest.raises(IntegrityError):
        await db.jobs.finish_job(job.id, 2, results=[result(1), bad], now=NOW)
    stored = await db.jobs.get_job(job.id)
    assert stored is not None and stored.status == "queued"
    assert await ledger_rows(db, job.id) == [("reserve", 2)]
    assert await db.history.results_for_job(job.id) == []
    assert await db.jobs.finish_job(job.id, 2, results=[result(1)], now=NOW)


async def test_database_refuses_to_reopen_a_finished_job(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(), Limits(), NOW)
    await db.jobs.finish_job(job.id, 1, now=NOW)
    with pytest.raises(IntegrityError, match="finished job"):
        await db.execute("UPDATE jobs SET status = 'queued' WHERE id = :id", {"id": job.id})


async def test_unfinished_jobs_survive_a_restart(database_url: str) -> None:
    db = await open_database(database_url)
    old_queued = await db.jobs.reserve_job(new_job(prompt="first"), Limits(), NOW - 30)
    running = await db.jobs.reserve_job(new_job(prompt="second", count=2), Limits(), NOW - 20)
    done = await db.jobs.reserve_job(new_job(prompt="third"), Limits(), NOW - 10)
    new_queued = await db.jobs.reserve_job(new_job(prompt="fourth"), Limits(), NOW)
    await claim_job(db, running.id, NOW - 19, "apimart")
    await db.jobs.set_task(running.id, "apimart", "nano-banana-pro", "task-abc")
    await db.jobs.finish_job(done.id, 1, now=NOW - 5)
    await db.close()

    db = await open_database(database_url)
    try:
        unfinished = await db.jobs.unfinished_jobs()
        assert [j.id for j in unfinished] == [old_queued.id, running.id, new_queued.id]
        resumed = unfinished[1]
        assert (resumed.status, resumed.task_id, resumed.provider, resumed.reserved) == (
            "running", "task-abc", "apimart", 2,
        )  # fmt: skip
        assert [j.id for j in await db.jobs.queued_jobs()] == [old_queued.id, new_queued.id]
        # Recovery can settle them after the restart, exactly once.
        assert await db.jobs.finish_job(resumed.id, 2, now=NOW + 1)
        assert not await db.jobs.finish_job(resumed.id, 2, now=NOW + 2)
        assert [j.id for j in await db.jobs.unfinished_jobs()] == [old_queued.id, new_queued.id]
    finally:
        await db.close()


async def test_reference_blobs_round_trip_across_restart(database_url: str) -> None:
    big = os.urandom(3 * 1024 * 1024)
    refs = (
        reference(big, source_attachment_id=111),
        NewReference(mime_type="image/jpeg", url="https://cdn.example/a.jpg"),
        reference(b"\x00\x01\x02\xff" * 10, mime_type="image/webp", url="https://cdn.example/b.webp"),
    )
    db = await open_database(database_url)
    job = await db.jobs.reserve_job(new_job(kind="edit", references=refs), Limits(), NOW)
    await db.close()

    db = await open_database(database_url)
    try:
        stored = await db.jobs.get_references(job.id)
    finally:
        await db.close()
    assert [r.position for r in stored] == [0, 1, 2]
    assert stored[0].data == big and stored[0].source_attachment_id == 111 and stored[0].url is None
    assert (stored[1].data, stored[1].url, stored[1].mime_type) == (
        None,
        "https://cdn.example/a.jpg",
        "image/jpeg",
    )
    assert stored[2].data == b"\x00\x01\x02\xff" * 10 and stored[2].url == "https://cdn.example/b.webp"
    assert "bytes=3145728" in repr(stored[0]) and len(repr(stored[0])) < 200


async def test_reference_positions_may_be_given(db: Database) -> None:
    refs = [NewReference(position=i, mime_type="image/png", data=bytes([i])) for i in (2, 0, 1)]
    job = await db.jobs.reserve_job(new_job(kind="edit", references=refs), Limits(), NOW)
    stored = await db.jobs.get_references(job.id)
    assert [(r.position, r.data) for r in stored] == [(0, b"\x00"), (1, b"\x01"), (2, b"\x02")]
    duplicate = [NewReference(position=0, mime_type="image/png", data=b"a")] * 2
    with pytest.raises(IntegrityError):
        await db.jobs.reserve_job(new_job(kind="edit", references=duplicate), Limits(), NOW)
    assert await db.fetchval("SELECT COUNT(*) FROM jobs") == 1  # the failed reservation left nothing
    assert await db.fetchval("SELECT COUNT(*) FROM reference_blobs") == 3  # nor staged bytes


def test_reference_needs_data_or_url() -> None:
    with pytest.raises(ValueError):
        NewReference(mime_type="image/png")


def test_new_job_needs_a_positive_count() -> None:
    with pytest.raises(ValueError):
        new_job(count=0)


async def test_parent_job_link(db: Database) -> None:
    parent = await db.jobs.reserve_job(new_job(), Limits(), NOW)
    child = await db.jobs.reserve_job(new_job(kind="reroll", parent_job_id=parent.id), Limits(), NOW + 1)
    assert child.parent_job_id == parent.id
    with pytest.raises(IntegrityError):  # foreign keys are enforced
        await db.jobs.reserve_job(new_job(kind="reroll", parent_job_id=999_999), Limits(), NOW + 2)


# --- the queue's columns, and settling frees what the job held ------------------------------------------


async def test_queue_provider_is_stored_at_insert(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(queue_provider="apimart"), Limits(), NOW)
    assert job.queue_provider == "apimart"
    assert (job.worker_id, job.lease_expires_at, job.delivery) == (None, None, None)
    stored = await db.jobs.get_job(job.id)
    assert stored is not None and stored.queue_provider == "apimart"
    assert (await db.jobs.reserve_job(new_job(), Limits(), NOW)).queue_provider is None


async def test_finish_frees_the_lease_the_slots_and_the_reference_bytes(db: Database) -> None:
    refs = (reference(b"a" * 5000), NewReference(mime_type="image/png", url="https://cdn.example/x.png"))
    job = await db.jobs.reserve_job(new_job(kind="edit", references=refs), Limits(), NOW)
    other = await db.jobs.reserve_job(new_job(kind="edit", references=(reference(b"keep"),)), Limits(), NOW)
    # What a worker holds while it runs the job (written by the queue; raw SQL here).
    await db.execute(
        "UPDATE jobs SET status = 'running', worker_id = 'w1', lease_expires_at = :until WHERE id = :id",
        {"until": NOW + 30, "id": job.id},
    )
    for slot, (job_id, worker) in enumerate([(job.id, "w1"), (job.id, "w1"), (other.id, "w2"), (None, None)]):
        await db.execute(
            "INSERT INTO provider_slots (provider, slot, job_id, worker_id, lease_expires_at) "
            "VALUES ('listenhub', :slot, :job, :worker, :until)",
            {"slot": slot, "job": job_id, "worker": worker, "until": NOW + 30 if worker else None},
        )
    assert await db.jobs.finish_job(job.id, 1, now=NOW + 5)

    stored = await db.jobs.get_job(job.id)
    assert stored is not None and (stored.worker_id, stored.lease_expires_at) == (None, None)
    slots = await db.fetchall(
        "SELECT slot, job_id, worker_id, lease_expires_at FROM provider_slots ORDER BY slot"
    )
    assert [tuple(r) for r in slots] == [
        (0, None, None, None),
        (1, None, None, None),
        (2, other.id, "w2", NOW + 30),  # another job's slot is untouched
        (3, None, None, None),
    ]
    # Nothing reads a settled job's references (Re-roll, Edit and Upscale use the posted images).
    assert await db.jobs.get_references(job.id) == []
    assert [r.data for r in await db.jobs.get_references(other.id)] == [b"keep"]
    assert await db.fetchval("SELECT COUNT(*) FROM reference_blobs") == 1
    assert (await db.jobs.ledger_balance()).balanced


async def test_references_over_the_per_job_cap_are_refused_and_cost_nothing(database_url: str) -> None:
    from bot.errors import ValidationError
    from bot.storage import ReferencesTooLarge

    db = await open_database(database_url, max_job_reference_bytes=10_000)
    try:
        refs = (reference(b"x" * 6000), reference(b"y" * 6000))
        with pytest.raises(ReferencesTooLarge) as info:
            await db.jobs.reserve_job(new_job(kind="edit", references=refs), Limits(daily=5), NOW)
        assert isinstance(info.value, ValidationError)  # shown to the user as it is, nothing charged
        assert (info.value.total_bytes, info.value.limit_bytes) == (12_000, 10_000)
        assert "at most" in info.value.message
        for table in ("jobs", "ledger", "job_references", "reference_blobs"):
            assert await db.fetchval(f"SELECT COUNT(*) FROM {table}") == 0, table
        assert (await db.jobs.usage(1, NOW)).daily_used == 0
        # URL-only references weigh nothing; exactly the cap fits.
        url_only = NewReference(mime_type="image/png", url="https://cdn.example/big.png")
        await db.jobs.reserve_job(
            new_job(kind="edit", references=(reference(b"z" * 10_000), url_only)), Limits(), NOW
        )
    finally:
        await db.close()


async def test_storing_references_lets_other_writes_through_between_images(db: Database) -> None:
    """Each image's bytes are written in a transaction of their own: a small write issued while the
    first image is stored completes before the job's other images are written (on the old single
    transaction it would wait for all of them; on SQLite it would wait for the write lock)."""
    repo = db.jobs
    original = repo._stage_blob  # type: ignore[attr-defined]
    order: list[str] = []
    small_write_done = asyncio.Event()

    async def stage_then_let_a_writer_in(data: bytes, now: float) -> int:
        blob_id = await original(data, now)
        order.append(f"image {sum(o.startswith('image') for o in order)}")
        if not small_write_done.is_set():
            writer = asyncio.create_task(db.kv.set("small", "write"))
            # Generous: the point is that it completes at all before the next image is written.
            await asyncio.wait_for(writer, timeout=10)
            order.append("small write")
            small_write_done.set()
        return blob_id

    repo._stage_blob = stage_then_let_a_writer_in  # type: ignore[attr-defined,method-assign]
    refs = tuple(reference(bytes([i]) * 200_000) for i in range(3))
    job = await repo.reserve_job(new_job(kind="edit", references=refs), Limits(daily=5), NOW)
    assert order == ["image 0", "small write", "image 1", "image 2"]
    assert await db.kv.get("small") == "write"
    assert [r.data for r in await repo.get_references(job.id)] == [bytes([i]) * 200_000 for i in range(3)]


async def test_a_refused_reservation_leaves_no_staged_bytes(db: Database) -> None:
    await db.jobs.reserve_job(new_job(), Limits(), NOW)
    with pytest.raises(Exception, match="in progress"):
        await db.jobs.reserve_job(
            new_job(kind="edit", references=(reference(b"x" * 1000),)), Limits(max_concurrent=1), NOW
        )
    assert await db.fetchval("SELECT COUNT(*) FROM reference_blobs") == 0
    assert await db.fetchval("SELECT COUNT(*) FROM jobs") == 1


async def test_orphaned_reference_bytes_are_swept_after_an_hour(db: Database) -> None:
    job = await db.jobs.reserve_job(new_job(kind="edit", references=(reference(b"linked"),)), Limits(), NOW)
    # A process that died between staging the bytes and reserving the job.
    await db.execute(
        "INSERT INTO reference_blobs (data, created_at) VALUES (:d, :at)", {"d": b"orphan", "at": NOW - 7200}
    )
    await db.execute(
        "INSERT INTO reference_blobs (data, created_at) VALUES (:d, :at)", {"d": b"young", "at": NOW - 60}
    )
    assert await db.jobs.sweep_reference_blobs(NOW) == 1  # type: ignore[attr-defined]
    remaining = await db.fetchall("SELECT data FROM reference_blobs ORDER BY id")
    assert [bytes(r.data) for r in remaining] == [b"linked", b"young"]
    assert [r.data for r in await db.jobs.get_references(job.id)] == [b"linked"]
