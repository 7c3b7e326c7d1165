"""ledger_balance: the audit that every reserved image is committed, refunded or still open."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from bot.storage import Database, Limits
from bot.storage.dialect import drop_trigger_statement

from .factories import NOW, claim_job, new_job


async def populate(db: Database) -> dict[str, int]:
    """A mix of settled and open jobs; returns a few ids."""
    a = await db.jobs.reserve_job(new_job(count=4), Limits(), NOW)
    b = await db.jobs.reserve_job(new_job(count=2), Limits(), NOW)
    c = await db.jobs.reserve_job(new_job(count=1, user_id=2), Limits(), NOW)
    d = await db.jobs.reserve_job(new_job(count=3, user_id=2), Limits(), NOW)  # stays queued
    e = await db.jobs.reserve_job(new_job(count=2, user_id=3), Limits(), NOW)  # stays running
    await claim_job(db, e.id, NOW)
    await db.jobs.finish_job(a.id, 3, now=NOW + 1)
    await db.jobs.finish_job(b.id, 0, status="failed", now=NOW + 1)
    await db.jobs.finish_job(c.id, 1, now=NOW + 1)
    return {"a": a.id, "b": b.id, "c": c.id, "d": d.id, "e": e.id}


async def test_empty_ledger_is_balanced(db: Database) -> None:
    report = await db.jobs.ledger_balance()
    assert (report.reserved, report.committed, report.refunded, report.open) == (0, 0, 0, 0)
    assert report.balanced


async def test_ledger_balances_after_normal_use(db: Database) -> None:
    await populate(db)
    report = await db.jobs.ledger_balance()
    assert (report.reserved, report.committed, report.refunded, report.open) == (12, 4, 3, 5)
    assert report.discrepancies == ()
    assert report.balanced
    assert report.describe().splitlines() == [
        "reserved 12 = committed 4 + refunded 3 + open 5",
        "ledger balanced",
    ]


async def test_extra_ledger_entry_is_detected(db: Database) -> None:
    ids = await populate(db)
    # A second commit for an already settled job, as a buggy code path might write it.
    await db.execute(
        "INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at) "
        "VALUES (:job, 1, 100, 'commit', 1, :at)",
        {"job": ids["a"], "at": NOW + 2},
    )
    report = await db.jobs.ledger_balance()
    assert not report.balanced
    assert report.reserved != report.committed + report.refunded + report.open
    [bad] = report.discrepancies
    assert bad.job_id == ids["a"]
    assert (bad.ledger_committed, bad.job_committed) == (4, 3)
    assert "ledger committed 4, job committed 3" in bad.problem
    text = report.describe()
    assert "does not add up" in text and f"job {ids['a']} (done)" in text and "NOT BALANCED" in text


async def test_tampered_job_row_is_detected(db: Database) -> None:
    ids = await populate(db)
    # Forgive a refund in the jobs table without a ledger entry: totals still add up, the job does not.
    await db.execute("UPDATE jobs SET refunded = 0 WHERE id = :id", {"id": ids["a"]})
    report = await db.jobs.ledger_balance()
    assert not report.balanced
    [bad] = report.discrepancies
    assert bad.job_id == ids["a"]
    assert "ledger refunded 1, job refunded 0" in bad.problem
    assert "settles 3 of 4" in bad.problem


async def test_open_job_with_a_settlement_is_detected(db: Database) -> None:
    ids = await populate(db)
    await db.execute(
        "INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at) "
        "VALUES (:job, 2, 100, 'refund', 3, :at)",
        {"job": ids["d"], "at": NOW + 2},
    )
    [bad] = (await db.jobs.ledger_balance()).discrepancies
    assert bad.job_id == ids["d"] and "unfinished job already committed or refunded" in bad.problem


async def test_orphan_and_missing_ledger_rows_are_detected(db: Database) -> None:
    await populate(db)
    await db.execute(
        "INSERT INTO ledger (job_id, user_id, guild_id, entry, amount, created_at) "
        "VALUES (999999, 1, 100, 'reserve', 2, :at)",
        {"at": NOW},
    )
    await db.execute(drop_trigger_statement(db.dialect, "jobs_ledger_reserve"))
    await db.execute(
        "INSERT INTO jobs (user_id, kind, model, count, reserved, created_at) "
        "VALUES (5, 'imagine', 'm', 1, 1, :at)",
        {"at": NOW},
    )
    report = await db.jobs.ledger_balance()
    problems = {d.job_id: d.problem for d in report.discrepancies}
    assert problems[999999] == "ledger rows for a job that does not exist"
    assert "job has no ledger rows" in problems.values()
    assert not report.balanced


async def test_ledger_is_append_only(db: Database) -> None:
    await populate(db)
    with pytest.raises(IntegrityError, match="append-only"):
        await db.execute("UPDATE ledger SET amount = 0")
    with pytest.raises(IntegrityError, match="append-only"):
        await db.execute("DELETE FROM ledger")
    if db.is_postgresql:  # TRUNCATE skips row triggers: it has a guard of its own
        with pytest.raises(IntegrityError, match="append-only"):
            await db.execute("TRUNCATE ledger")
    assert (await db.jobs.ledger_balance()).balanced


async def test_the_database_writes_the_ledger_whatever_code_path_changes_a_job(db: Database) -> None:
    """Raw SQL, not the repository: the triggers still write the entries and guard finished jobs."""
    await db.execute(
        "INSERT INTO jobs (user_id, guild_id, kind, model, count, reserved, created_at) "
        "VALUES (9, 100, 'imagine', 'm', 3, 3, :at)",
        {"at": NOW},
    )
    job_id = await db.fetchval("SELECT id FROM jobs WHERE user_id = 9")
    await db.execute(
        "UPDATE jobs SET status = 'done', committed = 1, refunded = 2, finished_at = :at WHERE id = :id",
        {"at": NOW + 1, "id": job_id},
    )
    rows = await db.fetchall(
        "SELECT entry, amount, created_at FROM ledger WHERE job_id = :id ORDER BY id", {"id": job_id}
    )
    assert [tuple(r) for r in rows] == [("reserve", 3, NOW), ("commit", 1, NOW + 1), ("refund", 2, NOW + 1)]
    with pytest.raises(IntegrityError, match="finished job cannot change status"):
        await db.execute("UPDATE jobs SET status = 'running' WHERE id = :id", {"id": job_id})
    # A settlement without finished_at is stamped with the database's clock.
    await db.execute(
        "INSERT INTO jobs (user_id, kind, model, count, reserved, created_at) "
        "VALUES (10, 'imagine', 'm', 1, 1, :at)",
        {"at": NOW},
    )
    other = await db.fetchval("SELECT id FROM jobs WHERE user_id = 10")
    await db.execute("UPDATE jobs SET status = 'failed', refunded = 1 WHERE id = :id", {"id": other})
    stamped = await db.fetchval(
        "SELECT MIN(created_at) FROM ledger WHERE job_id = :id AND entry = 'refund'", {"id": other}
    )
    assert stamped > NOW - 10 * 365 * 86_400  # a unix time, not a julian day or zero
    assert (await db.jobs.ledger_balance()).balanced
