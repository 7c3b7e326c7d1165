"""The dispatcher: one task, woken by an :class:`asyncio.Event`, that starts queued jobs.

Fairness: users are served round-robin, so one user's twenty jobs cannot starve everyone else; within
a user, jobs run in submission order. Capacity: each job counts against its provider's cap (jobs whose
provider is full wait while other providers' jobs go ahead). The queue itself lives in the database;
this is the in-memory index of it, rebuilt from the database on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedJob:
    job_id: int
    user_id: int
    provider: str


class Dispatcher:
    def __init__(
        self, run_job: Callable[[int, Callable[[], None]], Awaitable[None]], capacity: dict[str, int]
    ) -> None:
        """``run_job(job_id, release)`` runs one job and may call ``release()`` once it no longer needs
        its provider slot (before posting the result), so the next job can start."""
        self._run_job = run_job
        self.capacity = dict(capacity)
        self.in_flight: dict[str, int] = dict.fromkeys(capacity, 0)
        # user -> that user's queued jobs, in order; the dict order is the round-robin rotation.
        self._queues: OrderedDict[int, deque[QueuedJob]] = OrderedDict()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = True

    # ------------------------------------------------------------------ queue

    def enqueue(self, job: QueuedJob) -> None:
        self._queues.setdefault(job.user_id, deque()).append(job)
        self._wake.set()

    def remove(self, job_id: int) -> bool:
        for user_id, queue in list(self._queues.items()):
            for job in queue:
                if job.job_id == job_id:
                    queue.remove(job)
                    if not queue:
                        del self._queues[user_id]
                    return True
        return False

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def running(self) -> int:
        return len(self._tasks)

    def position(self, job_id: int) -> int | None:
        """1-based place in line under round-robin service (None if not queued)."""
        rounds = [list(q) for q in self._queues.values()]
        position = 0
        depth = max((len(r) for r in rounds), default=0)
        for level in range(depth):
            for jobs in rounds:
                if level < len(jobs):
                    position += 1
                    if jobs[level].job_id == job_id:
                        return position
        return None

    def _next(self) -> QueuedJob | None:
        """The first user in rotation whose next job has a free provider slot; that user goes last."""
        for user_id, queue in self._queues.items():
            job = queue[0]
            if self.in_flight.get(job.provider, 0) < self.capacity.get(job.provider, 1):
                queue.popleft()
                del self._queues[user_id]
                if queue:
                    self._queues[user_id] = queue  # back of the rotation
                return job
        return None

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="palette-dispatcher")

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._accepting and (job := self._next()) is not None:
                self.in_flight[job.provider] = self.in_flight.get(job.provider, 0) + 1
                task = asyncio.create_task(self._run(job), name=f"palette-job-{job.job_id}")
                self._tasks.add(task)

    async def _run(self, job: QueuedJob) -> None:
        released = False

        def release() -> None:
            """The job is done with its provider (posting the result needs no provider slot)."""
            nonlocal released
            if not released:
                released = True
                self.in_flight[job.provider] -= 1
                self._wake.set()

        try:
            await self._run_job(job.job_id, release)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s crashed in the runner", job.job_id)
        finally:
            release()
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def stop(self, grace: float = 0.0) -> None:
        """Stop starting jobs; wait up to ``grace`` seconds for running ones, then cancel them."""
        self._accepting = False
        if self._tasks and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
