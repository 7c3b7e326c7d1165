"""Opt-in event-loop stall monitor, used by the benchmark (``python -m bench``); off by default.

With ``PALETTE_LOOP_MONITOR=1`` the bot runs one tiny task that sleeps 10 ms at a time and records by how
much each sleep overshot: the longest overshoot is the longest time the event loop was blocked (plus timer
jitter). The maximum so far (when it happened, on the ``time.monotonic`` clock, and how many stalls were
longer than 50 ms) is written, as JSON, to ``PALETTE_LOOP_MONITOR_FILE`` (default
``loop-monitor.json``) every second and when the monitor stops.

With ``PALETTE_LOOP_MONITOR_STACKS=1`` as well, a watchdog thread looks at the loop every 10 ms and, when
it has not ticked for 60 ms, records where the loop's thread is (the innermost frames): the report's
``stall_stacks`` counts each place seen, which names the callback behind a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

from bot.storage import sqlstats

INTERVAL = 0.010
WRITE_EVERY = 1.0
MAX_SECONDS = 3600
STACK_AFTER = 0.060
STACK_FRAMES = 40


class LoopMonitor:
    def __init__(self, path: Path, *, interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self.max_stall = 0.0
        self.max_stall_at = 0.0
        self.stalls_over_50ms = 0
        self.samples = 0
        #: int(time.monotonic()) -> the longest stall that ended in that second, so that a reader can
        #: take the longest within a window of its own (the benchmark: from its first command, leaving
        #: out start-up and its one-off ``gc.collect()``).
        self.per_second: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None
        # The cyclic garbage collector's pauses (they stop the loop too): the longest, and their sum.
        self.max_gc_pause = 0.0
        self.gc_pauses = 0.0
        self._gc_started = 0.0
        #: Per generation (0, 1, 2): how many passes, the longest, and the most objects the last full
        #: pass had to scan (the tracked, unfrozen objects: what makes a full pass long).
        self.gc_by_generation: dict[int, dict[str, float]] = {}
        #: (time.monotonic() at its end, seconds) of the first full passes.
        self.full_passes: list[tuple[float, float]] = []
        self.write_seconds = 0.0
        self._last_tick = time.monotonic()
        self._loop_thread = 0
        self._stop_watch = threading.Event()
        self._watchdog: threading.Thread | None = None
        #: Where the loop's thread was during stalls (innermost frame first) -> how many stalls.
        self.stall_stacks: Counter[str] = Counter()

    def start(self, *, stacks: bool = False) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="palette-loop-monitor")
        gc.callbacks.append(self._on_gc)
        if stacks:
            self._loop_thread = threading.get_ident()
            self._watchdog = threading.Thread(target=self._watch, name="palette-loop-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        """The watchdog thread: where the loop's thread is while the loop has not ticked for a while."""
        seen_for: float | None = None
        while not self._stop_watch.wait(INTERVAL):
            last = self._last_tick
            if time.monotonic() - last < STACK_AFTER or seen_for == last:
                continue
            seen_for = last  # one sample per stall
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None:
                continue
            summary = traceback.extract_stack(frame)[-STACK_FRAMES:]
            key = " <- ".join(f"{f.name} ({_short(f.filename)}:{f.lineno})" for f in reversed(summary))
            self.stall_stacks[key] += 1

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            pause = time.perf_counter() - self._gc_started
            self.gc_pauses += pause
            self.max_gc_pause = max(self.max_gc_pause, pause)
            gen = self.gc_by_generation.setdefault(
                int(info.get("generation", -1)), {"passes": 0, "max_pause_s": 0.0}
            )
            gen["passes"] += 1
            if gen["passes"] <= 20 and info.get("generation") == 2:  # when each full pass ran (few)
                self.full_passes.append((round(time.monotonic(), 3), round(pause, 4)))
            gen["max_pause_s"] = round(max(gen["max_pause_s"], pause), 6)

    async def _run(self) -> None:
        last_write = time.monotonic()
        try:
            while True:
                before = time.monotonic()
                await asyncio.sleep(self.interval)
                now = self._last_tick = time.monotonic()
                stall = now - before - self.interval
                if stall > self.max_stall:
                    self.max_stall, self.max_stall_at = stall, now
                self.stalls_over_50ms += stall > 0.050
                second = int(now)
                if stall > self.per_second.get(second, -1.0):
                    self.per_second[second] = stall
                    if len(self.per_second) > MAX_SECONDS:
                        del self.per_second[next(iter(self.per_second))]
                self.samples += 1
                if now - last_write >= WRITE_EVERY:
                    self.write()
                    last_write = now
        finally:
            self.write(final=True)

    def write(self, *, final: bool = False) -> None:
        started = time.perf_counter()
        data = {
            "max_stall_s": round(self.max_stall, 6),
            "max_stall_at": self.max_stall_at,
            "stalls_over_50ms": self.stalls_over_50ms,
            "per_second": [[k, round(v, 6)] for k, v in self.per_second.items()],
            "samples": self.samples,
            "pid": os.getpid(),
            "max_gc_pause_s": round(self.max_gc_pause, 6),
            "gc_pauses_s": round(self.gc_pauses, 3),
            "gc_by_generation": {str(g): v for g, v in sorted(self.gc_by_generation.items())},
            "gc_full_passes": self.full_passes,
            "gc_threshold": gc.get_threshold(),
            "sql": sqlstats.snapshot(),
            # The monitor's own cost on the loop (its writes), so that a reader can tell it apart.
            "write_s": round(self.write_seconds, 4),
            "stall_stacks": self.stall_stacks.most_common(15),
        }
        if final:
            # Both walk a list of every object in it (the frozen generation: ~150 000 objects after
            # start-up, tens of milliseconds in a process whose heap is scattered): once, when the
            # monitor stops, never on the periodic write, where they were the loop's longest stall.
            data["gc_oldest_generation_objects"] = len(gc.get_objects(generation=2))
            data["gc_frozen_objects"] = gc.get_freeze_count()
        with contextlib.suppress(OSError):
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)
        self.write_seconds += time.perf_counter() - started

    async def stop(self) -> None:
        self._stop_watch.set()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _short(filename: str) -> str:
    return filename.split("site-packages/")[-1] if "site-packages/" in filename else os.path.relpath(filename)


def start_from_env() -> LoopMonitor | None:
    """Start the monitor if ``PALETTE_LOOP_MONITOR`` is set to 1/true/yes; call from inside the loop."""
    if os.environ.get("PALETTE_LOOP_MONITOR", "").strip().lower() not in ("1", "true", "yes"):
        return None
    monitor = LoopMonitor(Path(os.environ.get("PALETTE_LOOP_MONITOR_FILE", "loop-monitor.json")))
    stacks = os.environ.get("PALETTE_LOOP_MONITOR_STACKS", "").strip().lower() in ("1", "true", "yes")
    monitor.start(stacks=stacks)
    return monitor
