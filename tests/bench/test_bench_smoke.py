"""The benchmark's machinery works: fakes up, the real bot as a subprocess, jobs driven and measured.

No timing is asserted here: the performance targets live in the benchmark (``python -m bench``).
"""

from __future__ import annotations

import math

from bench.harness import Harness
from bench.report import Figure, jain, percentile, table
from bench.scenarios import reservations


async def test_three_jobs_through_the_real_bot_process() -> None:
    async with Harness(users=2, latency=0.05, concurrency=2) as h:
        interactions = [await h.imagine(h.people[i % 2], f"smoke {i}", resolution="1K") for i in range(3)]
        await h.wait_done(interactions, timeout=60)
        assert all(ix.acked_at is not None for ix in interactions)
        assert all(ix.id in h.discord.done_at for ix in interactions), h.bot.log_tail()
        assert all(h.discord.delivered[ix.id] for ix in interactions)
        assert h.provider.calls["generate"] == 3
        await h.stop_bot()
        assert h.bot.peak_rss is not None and h.bot.peak_rss > 0
        assert h.bot.loop_stall() is not None  # the bot's opt-in loop monitor wrote its file


async def test_reservations_grant_exactly_the_limit() -> None:
    figures, details = await reservations(quick=True)
    assert details["granted"] == 50 and details["refused"] == 950 and not details["errors"]
    assert "reservations" in table(figures)


def test_statistics() -> None:
    assert jain([2.0, 2.0, 2.0]) == 1.0
    assert math.isclose(jain([1.0, 0.0, 0.0, 0.0]), 0.25)
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert "n/a" in table([Figure("s", "f", None, "ms", "< 1 ms", None)])
