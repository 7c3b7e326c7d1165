"""MAX_JOB_REFERENCE_BYTES end to end: an /edit whose images add up to more than the database keeps for one
job gets a clear private answer, and nothing is stored, charged or sent to a provider."""

from __future__ import annotations

import time
from pathlib import Path

from tests.fakes.http import png_bytes
from tests.presentation.conftest import running_palette


async def test_references_over_the_per_job_cap_are_refused_privately_for_free(tmp_path: Path) -> None:
    first, second = png_bytes(120, 120, (255, 0, 0)), png_bytes(120, 120, (0, 0, 255))
    cap = len(first) + len(second) - 1
    async with running_palette(tmp_path, max_job_reference_bytes=cap) as palette:
        a = palette.fake.add_attachment(first, "a.png", "image/png")
        b = palette.fake.add_attachment(second, "b.png", "image/png")
        ix = await palette.edit(palette.alice, "put them together", [a, b])
        await ix.wait_for(lambda i: any(m.flags & 64 for m in i.followups), timeout=10)
        error = next(m for m in ix.followups if m.flags & 64)
        assert "at most" in error.content and "fewer or smaller images" in error.content
        assert palette.listenhub.calls["generate"] == 0
        assert await palette.bot.db.fetchval("SELECT COUNT(*) FROM jobs") == 0
        assert await palette.bot.db.fetchval("SELECT COUNT(*) FROM reference_blobs") == 0
        usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time())
        assert (usage.daily_used, usage.in_flight) == (0, 0)
        # One image fits: the same command with it goes through.
        ok = await palette.edit(
            palette.alice, "just this one", [palette.fake.add_attachment(first, "c.png", "image/png")]
        )
        await palette.result_message(ok)
