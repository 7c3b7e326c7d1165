"""The benchmark's machinery works: fakes up, the real bot as a subprocess, jobs driven and measured.

No timing is asserted here: the performance targets live in the benchmark (``python -m bench``).
"""

from __future__ import annotations

import math
from pathlib import Path

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


def test_loop_stall_since_leaves_out_what_came_before(tmp_path: Path) -> None:
    import json

    from bench.harness import BotProcess

    proc = BotProcess({}, tmp_path, name="bot")
    report = {"max_stall_s": 0.3, "per_second": [[100, 0.3], [105, 0.02], [106, 0.04]]}
    (tmp_path / "loop-bot.json").write_text(json.dumps(report))
    assert proc.loop_stall() == 0.3  # the whole life, start-up included
    assert proc.loop_stall(since=104.5) == 0.04  # from the first command on
    assert proc.loop_stall(since=200.0) == 0.0


async def test_loop_monitor_keeps_each_seconds_longest_stall(tmp_path: Path) -> None:
    import asyncio
    import json
    import time

    from bot.loopmonitor import LoopMonitor

    monitor = LoopMonitor(tmp_path / "loop.json", interval=0.005)
    monitor.start()
    await asyncio.sleep(0.05)
    asyncio.get_running_loop().call_soon(time.sleep, 0.06)  # a blocking callback: a stall
    await asyncio.sleep(0.05)
    await monitor.stop()
    report = json.loads((tmp_path / "loop.json").read_text())
    assert max(v for _, v in report["per_second"]) >= 0.05
    assert report["max_stall_s"] == max(v for _, v in report["per_second"])
    assert "gc_oldest_generation_objects" in report and "gc_by_generation" in report
