"""A process's periodic row in the database (its liveness for the rest of the deployment): a task that
calls ``beat`` every ``interval`` seconds, and ``farewell`` when the process stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class Heartbeat:
    #: What the log says when a beat or the farewell fails ("heartbeat", "shard heartbeat").
    what = "heartbeat"
    task_name = "palette-heartbeat"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        raise NotImplementedError

    async def farewell(self) -> None:
        """Remove this process's rows (a clean stop; a crashed process's rows go stale instead)."""

    def start_beating(self, *, first_now: bool) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(first_now), name=self.task_name)

    async def _run(self, first_now: bool) -> None:
        if not first_now:
            await asyncio.sleep(self.interval)
        while True:
            try:
                await self.beat()
            except Exception as exc:
                log.warning("%s failed (%s)", self.what, type(exc).__name__)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await self.farewell()
        except Exception as exc:
            log.warning("%s: could not remove this process's rows (%s)", self.what, type(exc).__name__)
