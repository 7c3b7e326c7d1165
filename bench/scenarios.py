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

from bench.fakes import cached_photo_png
from bench.harness import Harness, cpu_seconds
from bench.report import Figure, check, jain, percentile
from tests.fakes.providers.common import image_dimensions
from tests.fakes.providers.listenhub import SIZES

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
        "bot_max_loop_stall_ms": _ms(h.bot.loop_stall(since=h.t0)),  # from the first command on
        "bot_max_loop_stall_ms_with_start_up": _ms(h.bot.loop_stall()),
        "bench_process_max_loop_stall_ms": round(h.monitor.max_stall * 1000, 1),
        "provider_max_in_flight": h.provider.max_in_flight,
        "provider_calls": h.provider.calls["generate"],
        **slot_use(h),
        "png_bytes": {f"{w}x{hh}": size for (w, hh), size in h.provider.png_sizes.items()},
        "bot_log_warnings": h.bot.log_errors()[:20],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def _stop(h: Harness) -> None:
    await h.stop_bot()
    await h.refresh()  # fakes in their own processes: copy their final figures


# ---------------------------------------------------------------------------------------------- burst


async def burst(quick: bool, database_url: str | None = None) -> Result:
    """500 /imagine from 200 users within 2 s: how fast is each one acknowledged?"""
    n, users, window = (100, 40, 0.4) if quick else (500, 200, 2.0)
    name = "burst"
    async with Harness(users=users, latency=1.0, concurrency=32, database_url=database_url) as h:
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


async def single_1k(quick: bool, database_url: str | None = None) -> Result:
    """One 1K job, provider latency 2.0 s: end-to-end / provider latency."""
    latency, runs = 2.0, (2 if quick else 3)
    async with Harness(users=1, latency=latency, concurrency=4, database_url=database_url) as h:
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


async def single_4k(quick: bool, database_url: str | None = None) -> Result:
    """One 4K job whose PNG exceeds the 10 MiB upload limit: end-to-end minus provider latency."""
    latency, runs = 2.0, (1 if quick else 2)
    async with Harness(
        users=1, latency=latency, concurrency=4, prepare=("4K",), database_url=database_url
    ) as h:
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


async def _submit(
    h: Harness, jobs: int, resolution: str, tag: str = "load"
) -> tuple[list[Any], dict[int, int]]:
    """``jobs`` /imagine from every user in turn, like many people typing at once; (interactions, owner)."""
    users = len(h.people)
    per_user = math.ceil(jobs / users)
    commands: list[tuple[int, str, dict[str, Any]]] = []
    for round_ in range(per_user):
        for u in range(users):
            if len(commands) == jobs:
                break
            commands.append((u, f"{tag} {resolution} {u}/{round_}", {"resolution": resolution}))
    interactions = await h.imagine_many(commands)
    owner = {ix.id: command[0] for ix, command in zip(interactions, commands, strict=True)}
    return interactions, owner


def _stats(h: Harness, interactions: list[Any], owner: dict[int, int]) -> dict[str, Any]:
    jobs, users = len(interactions), len(set(owner.values()))
    ideal = math.ceil(jobs / h.concurrency) * h.latency
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
        "failed": len(failed),
        # Results posted as a new channel message because the status message could not be edited.
        "posted_in_channel": sum(1 for ix in interactions if ix.id in h.discord.in_channel),
        "makespan_s": round(makespan, 3),
        "ideal_s": ideal,
        "makespan_ratio": makespan / ideal if ideal else math.nan,
        "jain": jain(means),
        "user_mean_wait_s": {
            "min": round(min(means, default=math.nan), 3),
            "max": round(max(means, default=math.nan), 3),
        },
        "ack_p99_ms": round(percentile(acks, 99), 1),
    }


async def _load(h: Harness, jobs: int, resolution: str) -> dict[str, Any]:
    started = time.monotonic()
    interactions, owner = await _submit(h, jobs, resolution)
    submitted_in = time.monotonic() - started
    ideal = math.ceil(jobs / h.concurrency) * h.latency
    await h.wait_done(interactions, timeout=ideal * 4 + 60)
    return {"submitted_in_s": round(submitted_in, 3), **_stats(h, interactions, owner)}


async def load_1k(quick: bool, database_url: str | None = None) -> Result:
    """1000 jobs from 200 users, provider cap 32 in flight, latency 1 s."""
    jobs, users = (200, 40) if quick else (1000, 200)
    async with Harness(users=users, latency=1.0, concurrency=32, database_url=database_url) as h:
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


async def load_4k(quick: bool, database_url: str | None = None) -> Result:
    """4K images with 32 in flight: peak memory of the bot."""
    jobs, users = (32, 32) if quick else (64, 32)
    async with Harness(
        users=users, latency=1.0, concurrency=32, prepare=("4K",), database_url=database_url
    ) as h:
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


async def reservations(quick: bool, database_url: str | None = None) -> Result:
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


# ---------------------------------------------------------------------------------------------- deployments


def _processes(h: Harness) -> dict[str, Any]:
    """Peak RSS, CPU and the longest loop stall of every bot process (read when they were stopped)."""
    return {
        p.name: {
            "role": p.role or "all",
            "peak_rss_mb": None if p.peak_rss is None else round(p.peak_rss / MB, 1),
            "cpu_s": None if p.cpu_s is None else round(p.cpu_s, 1),
            # From the first command on: start-up (and its one-off gc.collect() before freezing) is not
            # part of the run. ``max_loop_stall_ms_with_start_up`` is the process's whole life.
            "max_loop_stall_ms": _ms(p.loop_stall(since=h.t0)),
            "max_loop_stall_ms_with_start_up": _ms(p.loop_stall()),
            "loop_stalls_over_50ms": p.loop_report().get("stalls_over_50ms"),
            "max_gc_pause_ms": _ms(p.loop_report().get("max_gc_pause_s")),
            "gc_pauses_s": p.loop_report().get("gc_pauses_s"),
            "gc_by_generation": p.loop_report().get("gc_by_generation"),
            # Seconds after the first command (negative: during start-up) of the longest stall and of
            # each full GC pass, with its length.
            "max_stall_at_s": _since(h, p.loop_report().get("max_stall_at")),
            # The five worst seconds of the run (seconds after the first command, longest stall in ms).
            "worst_seconds": sorted(
                (
                    (_since(h, sec), round(v * 1000, 1))
                    for sec, v in p.loop_report().get("per_second", [])
                    if h.t0 is not None and sec + 1 > h.t0
                ),
                key=lambda item: -item[1],
            )[:5],
            "gc_full_passes": [
                (_since(h, at), round(pause * 1000, 1))
                for at, pause in p.loop_report().get("gc_full_passes", [])
            ],
            "gc_oldest_generation_objects": p.loop_report().get("gc_oldest_generation_objects"),
            "gc_frozen_objects": p.loop_report().get("gc_frozen_objects"),
            "loop_monitor_write_s": p.loop_report().get("write_s"),
            # With PALETTE_LOOP_MONITOR_STACKS=1: where the loop's thread was during stalls.
            "stall_stacks": p.loop_report().get("stall_stacks") or [],
            "log_warnings": p.log_errors()[:10],
            "sql": p.loop_report().get("sql") or {},
        }
        for p in h.processes
    }


def _since(h: Harness, at: float | None) -> float | None:
    return None if at is None or h.t0 is None else round(at - h.t0, 2)


def _deploy_common(h: Harness) -> dict[str, Any]:
    return {
        "processes": _processes(h),
        "database": "postgresql" if h.db_url.startswith("postgres") else "sqlite",
        "bench_process_cpu_s": round(sum(os.times()[:2]) - h.cpu0, 1),
        "bench_process_max_loop_stall_ms": round(h.monitor.max_stall * 1000, 1),
        "provider_max_in_flight": h.provider.max_in_flight,
        "provider_calls": h.provider.calls["generate"],
        **slot_use(h),
        # The fakes' own loops (processes of their own): a stall there would delay the times they take.
        "fake_discord_loop": getattr(h.discord, "loop", None),
        "fake_provider_loop": getattr(h.provider, "loop", None),
    }


def slot_use(h: Harness) -> dict[str, float | None]:
    """How busy the provider's ``concurrency`` slots were from its first call to its last answer, and the
    mean time a slot stood empty between one call and the next (the deployment's per-job overhead as the
    makespan sees it)."""
    provider = h.provider
    busy = getattr(provider, "busy_s", 0.0)
    span = getattr(provider, "span_s", None)
    if span is None:  # the fake in this process
        first, last = getattr(provider, "first_call_at", None), getattr(provider, "last_end_at", None)
        span = (last - first) if first is not None and last is not None else 0.0
    calls = provider.calls["generate"]
    if not span or not calls:
        return {"provider_slot_use": None, "provider_slot_gap_ms": None}
    return {
        "provider_slot_use": round(busy / (h.concurrency * span), 3),
        "provider_slot_gap_ms": round((h.concurrency * span - busy) * 1000 / calls, 1),
    }


def sql_per_job(processes: dict[str, Any], jobs: int) -> dict[str, float]:
    """Every bot process's SQL counts (statements by kind, transactions), summed, per job."""
    total: dict[str, int] = {}
    for info in processes.values():
        for key, n in (info.get("sql") or {}).items():
            total[key] = total.get(key, 0) + n
    per_job = {key: round(n / max(1, jobs), 2) for key, n in total.items()}
    return dict(sorted(per_job.items(), key=lambda item: -item[1]))


async def deploy_1k(quick: bool, database_url: str | None = None) -> Result:
    """One gateway + two workers: 1000 jobs from 200 users (cap 32, latency 1 s), then a burst of 200 more
    commands while those are queued. Makespan over every job, the gateway's loop, the burst's acks."""
    jobs, users, burst_n, latency = (30, 10, 10, 0.1) if quick else (1000, 200, 200, 1.0)
    name = "deploy_1k"
    async with Harness(
        users=users, latency=latency, concurrency=32, workers=2, database_url=database_url, fakes_process=True
    ) as h:
        interactions, owner = await _submit(h, jobs, "1K")
        # "Fired while the 1000 jobs are queued": once they are acknowledged (stored in the queue), not
        # while the gateway still has 1000 commands of its own to answer.
        await h.wait_acked(interactions, timeout=60)
        # The burst: one more command from every user, as fast as the fake can send them.
        burst = await h.imagine_many(
            [(i % users, f"burst {i}", {"resolution": "1K"}) for i in range(burst_n)]
        )
        owner.update({ix.id: i % users for i, ix in enumerate(burst)})
        await h.refresh()
        finished = set(h.discord.done_at) | getattr(h.discord, "failed", set())
        queued_during_burst = sum(1 for ix in interactions if ix.id not in finished)
        everything = interactions + burst
        ideal = math.ceil(len(everything) / h.concurrency) * h.latency
        await h.wait_done(everything, timeout=ideal * 4 + 60)
        await _stop(h)
        stats = _stats(h, everything, owner)
        acks = [(ix.acked_at - ix.created_at) * 1000 for ix in burst if ix.acked_at is not None]
        first_acks = [(ix.acked_at - ix.created_at) * 1000 for ix in interactions if ix.acked_at is not None]
        details = {
            **stats,
            "burst": burst_n,
            "queued_during_burst": queued_during_burst,
            "ack_p99_of_the_1000_ms": round(percentile(first_acks, 99), 1),
            **_deploy_common(h),
        }
    gateway = details["processes"]["bot"]
    stall = gateway["max_loop_stall_ms"]
    cpu_ms = sum(v["cpu_s"] or 0 for v in details["processes"].values()) * 1000 / len(everything)
    sql = details["sql_per_job"] = sql_per_job(details["processes"], len(everything))
    p99 = percentile(acks, 99)
    unacked = burst_n - len(acks)
    figures = [
        Figure(name, f"makespan / ideal ({len(everything)} jobs, ideal {stats['ideal_s']:.0f} s, 2 workers)",
               stats["makespan_ratio"], "x", "<= 1.05", check(stats["makespan_ratio"], "<=", 1.05)),
        Figure(name, "longest event-loop stall (gateway)", stall, "ms", "< 50 ms", check(stall, "<", 50)),
        Figure(name, f"ack p99 of a {burst_n}-command burst ({queued_during_burst} jobs queued)", p99, "ms",
               "< 50 ms", check(p99, "<", 50)),
        Figure(name, "unacknowledged burst commands", unacked, "count", "0", unacked == 0),
        Figure(name, "results posted in the channel, not on their status message",
               stats["posted_in_channel"], "count", "0", stats["posted_in_channel"] == 0),
        Figure(name, f"Jain's index over {users} users' mean wait", stats["jain"], "x", ">= 0.9",
               check(stats["jain"], ">=", 0.9)),
        Figure(name, "failed jobs", stats["failed"], "count", "0", stats["failed"] == 0),
        Figure(name, "CPU ms per job (all bot processes, start to stop)", cpu_ms, "ms", "", None),
        Figure(name, "provider slots in use, first call to last answer", details["provider_slot_use"],
               "x", "", None),
        Figure(name, "mean time a provider slot stood empty between calls", details["provider_slot_gap_ms"],
               "ms", "", None),
        Figure(name, "SQL statements per job (all bot processes)", sql.get("statements"), "", "", None),
        Figure(name, "write transactions per job", sql.get("transactions (write)"), "", "", None),
    ]  # fmt: skip
    return figures, details


_FLOOR_PNG: list[bytes] = []


def _keep_png(png: bytes) -> None:
    _FLOOR_PNG[:] = [png]


def _fit_one(budget: int) -> int:
    from bot.images import fit_for_upload

    return len(fit_for_upload(_FLOOR_PNG[0], limit_bytes=budget).data)


async def cpu_floor(png: bytes, count: int) -> tuple[float, int]:
    """Seconds to fit ``count`` copies of ``png`` into an upload with the bot's encoder, one process per
    core (the least time a deployment on this machine could need for it); and the processes used.

    Each process gets the image once, up front, and is warmed up: only the encoding is timed."""
    from concurrent.futures import ProcessPoolExecutor

    from bot.presentation.presenter import DEFAULT_UPLOAD_LIMIT, UPLOAD_OVERHEAD

    budget = DEFAULT_UPLOAD_LIMIT - UPLOAD_OVERHEAD
    cores = os.cpu_count() or 1
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(cores, initializer=_keep_png, initargs=(png,)) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, _fit_one, budget) for _ in range(cores)))
        started = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(pool, _fit_one, budget) for _ in range(count)))
        return time.perf_counter() - started, cores


async def deploy_4k(quick: bool, database_url: str | None = None) -> Result:
    """One gateway + two workers: 64 4K jobs, 32 in flight. Peak RSS per worker; makespan / CPU floor."""
    jobs, users = (8, 8) if quick else (64, 32)
    name = "deploy_4k"
    png = await asyncio.to_thread(cached_photo_png, *image_dimensions(SIZES["4K"], "1:1", 1.0))
    floor, cores = await cpu_floor(png, jobs)
    async with Harness(
        users=users,
        latency=1.0,
        concurrency=32,
        prepare=("4K",),
        workers=2,
        database_url=database_url,
        fakes_process=True,
    ) as h:
        stats = await _load(h, jobs, "4K")
        await _stop(h)
        details = {**stats, "cpu_floor_s": round(floor, 2), "cpu_floor_cores": cores, **_deploy_common(h)}
    workers = {k: v for k, v in details["processes"].items() if v["role"] == "worker"}
    rss = max((v["peak_rss_mb"] or 0 for v in workers.values()), default=None)
    ratio = stats["makespan_s"] / floor if floor else math.nan
    figures = [
        Figure(name, f"peak RSS per worker (max of {len(workers)}; {jobs} 4K jobs, 32 in flight)", rss, "MB",
               "< 600 MB", check(rss, "<", 600)),
        Figure(name, f"makespan / CPU floor (floor {floor:.1f} s: {jobs} encodes on {cores} cores)", ratio,
               "x", "<= 1.5", check(ratio, "<=", 1.5)),
        Figure(name, "peak RSS of the gateway", details["processes"]["bot"]["peak_rss_mb"], "MB", "", None),
        Figure(name, "failed jobs", stats["failed"], "count", "0", stats["failed"] == 0),
    ]  # fmt: skip
    return figures, details


async def _throughput_once(workers: int, jobs: int, users: int, database_url: str | None) -> dict[str, Any]:
    async with Harness(
        users=users,
        latency=0.0,
        concurrency=64,
        workers=workers,
        database_url=database_url,
        fakes_process=True,
    ) as h:
        cpu0 = {p.name: cpu_seconds(p.pid) or 0.0 for p in h.processes}
        interactions, owner = await _submit(h, jobs, "1K", tag="throughput")
        await h.wait_done(interactions, timeout=jobs + 60)
        cpu1 = {p.name: cpu_seconds(p.pid) or 0.0 for p in h.processes}
        await _stop(h)
        stats = _stats(h, interactions, owner)
        cpu = {name: round(cpu1[name] - cpu0[name], 2) for name in cpu0}
        return {**stats, "cpu_s": cpu, **_deploy_common(h)}


async def deploy_throughput(quick: bool, database_url: str | None = None) -> Result:
    """Zero provider latency (pure overhead): jobs/s and CPU ms per job for the all-in-one process and for
    one gateway with 1, 2 and 4 workers, side by side."""
    jobs, users = (20, 10) if quick else (300, 50)
    name = "deploy_throughput"
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    for workers in (0, 1, 2, 4):
        label = "all-in-one" if workers == 0 else f"gateway + {workers} worker{'s' * (workers > 1)}"
        run = await _throughput_once(workers, jobs, users, database_url)
        details[label] = run
        rate = run["jobs"] / run["makespan_s"] if run["makespan_s"] else math.nan
        cpu_ms = sum(run["cpu_s"].values()) * 1000 / run["jobs"]
        sql = sql_per_job(run["processes"], run["jobs"])
        run["sql_per_job"] = sql
        figures += [
            Figure(name, f"{label}: jobs/s ({jobs} jobs, zero latency)", rate, "/s", "", None),
            Figure(name, f"{label}: CPU ms per job (all bot processes)", cpu_ms, "ms", "", None),
            Figure(name, f"{label}: SQL statements per job", sql.get("statements"), "", "", None),
            Figure(
                name, f"{label}: write transactions per job", sql.get("transactions (write)"), "", "", None
            ),
            Figure(name, f"{label}: failed jobs", run["failed"], "count", "0", run["failed"] == 0),
        ]
    return figures, details


SCENARIOS: dict[str, Callable[..., Awaitable[Result]]] = {
    "burst": burst,
    "single_1k": single_1k,
    "single_4k": single_4k,
    "load_1k": load_1k,
    "load_4k": load_4k,
    "reservations": reservations,
    "deploy_1k": deploy_1k,
    "deploy_4k": deploy_4k,
    "deploy_throughput": deploy_throughput,
}
