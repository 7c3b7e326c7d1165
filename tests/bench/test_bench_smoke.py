"""The benchmark's machinery works: fakes up, the real bot as a subprocess, jobs driven and measured.

No timing is asserted here: the performance targets live in the benchmark (``python -m bench``).
"""

from __future__ import annotations

import math

from bench.fakes import photo_png
from bench.harness import Harness
from bench.report import Figure, jain, percentile, table
from bench.scenarios import cpu_floor, deploy_1k, reservations


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


async def test_one_gateway_and_two_workers_scenario_runs_quickly() -> None:
    figures, details = await deploy_1k(quick=True)
    assert details["failed"] == 0 and details["jobs"] == 40, details
    processes = details["processes"]
    assert [p["role"] for p in processes.values()] == ["gateway", "worker", "worker"]
    for name, p in processes.items():
        assert p["peak_rss_mb"] and p["cpu_s"] is not None, name
        assert p["max_loop_stall_ms"] is not None, name  # every process wrote its own loop report
    assert details["provider_calls"] == 40
    assert all(f.measured is not None for f in figures), table(figures)


async def test_cpu_floor_times_the_bots_encoder_in_a_process_pool() -> None:
    seconds, cores = await cpu_floor(photo_png(256, 256), 4)
    assert seconds > 0 and cores >= 1


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
