"""The scenarios of issue 6. Each returns its figures and a dict of details for the JSON file.

Everything except ``reservations`` is measured from outside the bot process: times come from the fake
Discord (``Interaction.created_at`` when it dispatched INTERACTION_CREATE, ``acked_at`` when the callback
arrived, and the moment the final message with a file arrived), memory from ``/proc/<pid>/status``, and the
event-loop stall from the bot's opt-in loop monitor (``PALETTE_LOOP_MONITOR``).
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.harness import Harness
from bench.report import Figure, check, jain, percentile

MB = 1_000_000
MIB = 1024 * 1024
Result = tuple[list[Figure], dict[str, Any]]


def _common(h: Harness) -> dict[str, Any]:
    loop = h.bot.loop_report()
    return {
        "bot_cpu_s": None if h.bot.cpu_s is None else round(h.bot.cpu_s, 1),
        "bench_process_cpu_s": round(sum(os.times()[:2]) - h.cpu0, 1),
        "bot_loop_stalls_over_50ms": loop.get("stalls_over_50ms"),
        "bot_max_stall_at_s": None
        if h.t0 is None or "max_stall_at" not in loop
        else round(loop["max_stall_at"] - h.t0, 2),
        "bot_peak_rss_mb": None if h.bot.peak_rss is None else round(h.bot.peak_rss / MB, 1),
        "bot_max_loop_stall_ms": _ms(h.bot.loop_stall()),
        "bench_process_max_loop_stall_ms": round(h.monitor.max_stall * 1000, 1),
        "provider_max_in_flight": h.provider.max_in_flight,
        "provider_calls": h.provider.calls["generate"],
        "png_bytes": {f"{w}x{hh}": size for (w, hh), size in h.provider.png_sizes.items()},
        "bot_log_warnings": h.bot.log_errors()[:20],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def _stop(h: Harness) -> None:
    await h.stop_bot()


# ---------------------------------------------------------------------------------------------- burst


async def burst(quick: bool) -> Result:
    """500 /imagine from 200 users within 2 s: how fast is each one acknowledged?"""
    n, users, window = (100, 40, 0.4) if quick else (500, 200, 2.0)
    name = "burst"
    async with Harness(users=users, latency=1.0, concurrency=32) as h:
        loop = asyncio.get_running_loop()
        start = loop.time()
        interactions = []
        for i in range(n):
            delay = start + i * window / n - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            interactions.append(await h.imagine(h.people[i % users], f"burst {i}", resolution="1K"))
        sent_in = loop.time() - start
        await h.wait_acked(interactions, timeout=10)
        await _stop(h)
        lat = [(ix.acked_at - ix.created_at) * 1000 for ix in interactions if ix.acked_at is not None]
        unacked = n - len(lat)
        p99 = percentile(lat, 99)
        figures = [
            Figure(name, f"ack latency p50 ({n} cmds, {users} users, {sent_in:.1f} s)",
                   percentile(lat, 50), "ms", "", None),
            Figure(name, "ack latency p99", p99, "ms", "< 100 ms", check(p99, "<", 100)),
            Figure(name, "ack latency max", max(lat, default=math.nan), "ms", "< 3000 ms",
                   check(max(lat, default=math.nan), "<", 3000)),
            Figure(name, "unacknowledged interactions", unacked, "count", "0", unacked == 0),
        ]  # fmt: skip
        details = {"commands": n, "users": users, "sent_in_s": round(sent_in, 3), **_common(h)}
        return figures, details


# ---------------------------------------------------------------------------------------------- single jobs


async def _single(h: Harness, runs: int, resolution: str) -> list[float]:
    e2e = []
    for i in range(runs):
        ix = await h.imagine(h.people[0], f"single {resolution} {i}", resolution=resolution)
        await h.wait_done([ix], timeout=120)
        if ix.id not in h.discord.done_at:
            raise RuntimeError(f"single {resolution} job did not deliver:\n{h.bot.log_tail()}")
        e2e.append(h.discord.done_at[ix.id] - ix.created_at)
    return e2e


async def single_1k(quick: bool) -> Result:
    """One 1K job, provider latency 2.0 s: end-to-end / provider latency."""
    latency, runs = 2.0, (2 if quick else 3)
    async with Harness(users=1, latency=latency, concurrency=4) as h:
        e2e = await _single(h, runs, "1K")
        await _stop(h)
        ratio = statistics.median(e2e) / latency
        figures = [
            Figure("single_1k", f"end-to-end / provider latency (median of {runs})", ratio, "x",
                   "<= 1.03", check(ratio, "<=", 1.03)),
            Figure("single_1k", "bot overhead (end-to-end - latency)",
                   (statistics.median(e2e) - latency) * 1000, "ms", "", None),
        ]  # fmt: skip
        details = {"e2e_s": [round(x, 4) for x in e2e], **_common(h)}
        return figures, details


async def single_4k(quick: bool) -> Result:
    """One 4K job whose PNG exceeds the 10 MiB upload limit: end-to-end minus provider latency."""
    latency, runs = 2.0, (1 if quick else 2)
    async with Harness(users=1, latency=latency, concurrency=4, prepare=("4K",)) as h:
        e2e = await _single(h, runs, "4K")
        delivered = [size for files in h.discord.delivered.values() for _, size in files]
        await _stop(h)
        overhead = statistics.median(e2e) - latency
        figures = [
            Figure("single_4k", f"end-to-end - provider latency (median of {runs})", overhead, "s",
                   "< 1.5 s", check(overhead, "<", 1.5)),
        ]  # fmt: skip
        details = {
            "e2e_s": [round(x, 4) for x in e2e],
            "delivered_bytes": delivered,
            "upload_limit": h.discord.upload_limit,
            **_common(h),
        }
        return figures, details


# ---------------------------------------------------------------------------------------------- load


async def _load(h: Harness, jobs: int, resolution: str) -> dict[str, Any]:
    users = len(h.people)
    per_user = math.ceil(jobs / users)
    interactions: list[Any] = []
    owner: dict[int, int] = {}
    started = time.monotonic()
    for round_ in range(per_user):  # interleaved, like many people typing at once
        for u, user in enumerate(h.people):
            if len(interactions) == jobs:
                break
            ix = await h.imagine(user, f"load {resolution} {u}/{round_}", resolution=resolution)
            interactions.append(ix)
            owner[ix.id] = u
            if len(interactions) % 25 == 0:
                await asyncio.sleep(0)  # let the gateway writer flush
    submitted_in = time.monotonic() - started
    ideal = math.ceil(jobs / h.concurrency) * h.latency
    await h.wait_done(interactions, timeout=ideal * 4 + 60)
    done = h.discord.done_at
    failed = [ix for ix in interactions if ix.id not in done]
    first = min(ix.created_at for ix in interactions)
    makespan = max((done[ix.id] for ix in interactions if ix.id in done), default=math.nan) - first
    waits: dict[int, list[float]] = defaultdict(list)
    for ix in interactions:
        if ix.id in done:
            waits[owner[ix.id]].append(done[ix.id] - ix.created_at)
    means = [statistics.fmean(w) for w in waits.values()]
    acks = [(ix.acked_at - ix.created_at) * 1000 for ix in interactions if ix.acked_at is not None]
    return {
        "jobs": jobs,
        "users": users,
        "submitted_in_s": round(submitted_in, 3),
        "failed": len(failed),
        "makespan_s": round(makespan, 3),
        "ideal_s": ideal,
        "makespan_ratio": makespan / ideal,
        "jain": jain(means),
        "user_mean_wait_s": {
            "min": round(min(means, default=math.nan), 3),
            "max": round(max(means, default=math.nan), 3),
        },
        "ack_p99_ms": round(percentile(acks, 99), 1),
    }


async def load_1k(quick: bool) -> Result:
    """1000 jobs from 200 users, provider cap 32 in flight, latency 1 s."""
    jobs, users = (200, 40) if quick else (1000, 200)
    async with Harness(users=users, latency=1.0, concurrency=32) as h:
        stats = await _load(h, jobs, "1K")
        await _stop(h)
        details = {**stats, **_common(h)}
    name = "load_1k"
    stall = details["bot_max_loop_stall_ms"]
    rss = details["bot_peak_rss_mb"]
    figures = [
        Figure(name, f"makespan / ideal ({jobs} jobs, ideal {stats['ideal_s']:.0f} s)",
               stats["makespan_ratio"], "x", "<= 1.10", check(stats["makespan_ratio"], "<=", 1.10)),
        Figure(name, f"Jain's index over {users} users' mean wait", stats["jain"], "x", ">= 0.9",
               check(stats["jain"], ">=", 0.9)),
        Figure(name, "longest event-loop stall (bot)", stall, "ms", "< 100 ms", check(stall, "<", 100)),
        Figure(name, "peak RSS of the bot (1K images)", rss, "MB", "< 300 MB", check(rss, "<", 300)),
        Figure(name, "failed jobs", stats["failed"], "count", "0", stats["failed"] == 0),
    ]  # fmt: skip
    return figures, details


async def load_4k(quick: bool) -> Result:
    """4K images with 32 in flight: peak memory of the bot."""
    jobs, users = (32, 32) if quick else (64, 32)
    async with Harness(users=users, latency=1.0, concurrency=32, prepare=("4K",)) as h:
        stats = await _load(h, jobs, "4K")
        await _stop(h)
        details = {**stats, **_common(h)}
    rss = details["bot_peak_rss_mb"]
    figures = [
        Figure("load_4k", f"peak RSS of the bot ({jobs} 4K jobs, 32 in flight)", rss, "MB", "< 800 MB",
               check(rss, "<", 800)),
        Figure("load_4k", "makespan / ideal (informational)", stats["makespan_ratio"], "x", "", None),
        Figure("load_4k", "failed jobs", stats["failed"], "count", "0", stats["failed"] == 0),
    ]  # fmt: skip
    return figures, details


# ---------------------------------------------------------------------------------------------- storage


async def reservations(quick: bool) -> Result:
    """1000 concurrent reservations by one user whose daily limit is 50 (in-process: a storage figure).

    This one calls the storage layer (``Database.jobs.reserve_job``) directly in the benchmark process:
    it measures SQLite + the reservation protocol, not Discord or the bot process.
    """
    from bot.storage import Limits, NewJob, QuotaExceeded, open_database

    n, limit = 1000, 50
    with tempfile.TemporaryDirectory(prefix="palette-bench-") as tmp:
        db = await open_database(Path(tmp) / "reservations.db")
        try:
            limits = Limits(daily=limit)
            new_job = NewJob(user_id=42, channel_id=1, guild_id=7, kind="imagine", model="nano-banana-pro",
                             prompt="a lighthouse", params={"resolution": "1K"})  # fmt: skip
            now = time.time()
            started = time.perf_counter()
            results = await asyncio.gather(
                *(db.jobs.reserve_job(new_job, limits, now) for _ in range(n)), return_exceptions=True
            )
            elapsed = time.perf_counter() - started
        finally:
            await db.close()
    granted = sum(1 for r in results if not isinstance(r, BaseException))
    refused = sum(1 for r in results if isinstance(r, QuotaExceeded))
    errors = [repr(r) for r in results if isinstance(r, BaseException) and not isinstance(r, QuotaExceeded)]
    rate = n / elapsed
    figures = [
        Figure("reservations", f"grants of {n} concurrent (limit {limit}, in-process storage)", granted,
               "count", "exactly 50", granted == limit and not errors),
        Figure("reservations", "reservations per second", rate, "/s", ">= 2000/s", check(rate, ">=", 2000)),
    ]  # fmt: skip
    return figures, {"granted": granted, "refused": refused, "errors": errors[:5], "elapsed_s": elapsed}


SCENARIOS: dict[str, Callable[[bool], Awaitable[Result]]] = {
    "burst": burst,
    "single_1k": single_1k,
    "single_4k": single_4k,
    "load_1k": load_1k,
    "load_4k": load_4k,
    "reservations": reservations,
}
