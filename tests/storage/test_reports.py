"""Reports: one per member per job, even when the clicks arrive together."""

from __future__ import annotations

import asyncio

from bot.storage import Database


async def test_a_member_reports_a_job_once_even_when_clicks_race(db: Database) -> None:
    repo = db.moderation
    first = await asyncio.gather(*(repo.add_report(1, 10, 7, 8, 100.0 + i) for i in range(20)))
    assert sum(r is not None for r in first) == 1
    assert [(r.job_id, r.reporter_id) for r in await repo.reports_for_job(10)] == [(10, 7)]
    # Another member, or the same member on another job, is a new report.
    assert await repo.add_report(1, 10, 9, 8, 200.0) is not None
    assert await repo.add_report(1, 11, 7, 8, 200.0) is not None
    # Resolving does not reopen the door for a second report by the same member.
    await repo.resolve_reports(10, "deleted", 300.0)
    assert await repo.add_report(1, 10, 7, 8, 400.0) is None
    assert len(await repo.reports_for_job(10)) == 2
