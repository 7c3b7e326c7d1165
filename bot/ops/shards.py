"""Gateway shards across the processes of a deployment, coordinated through the database.

* :class:`IdentifyGate`: discord.py's ``before_identify_hook``. Discord lets shards IDENTIFY in buckets
  (``shard_id % max_concurrency``, ``max_concurrency`` from ``GET /gateway/bot``), each bucket once per
  5 seconds *for the whole bot*; a gateway claims its bucket's next turn with one conditional update in
  the database, so any number of gateway processes restarting at once never identify too fast (which
  Discord answers with INVALID_SESSION, and, repeated, by resetting the bot's token).
* :class:`ShardPresence`: which process runs which shard, and its heartbeat latency, kept in the database
  for ``/palette status``.
* :func:`claim_command_sync`: the first gateway process to see a new command tree syncs it; the others
  wait until it is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable

from bot.ops.heartbeat import Heartbeat
from bot.storage.shards import SqlShardRepository

log = logging.getLogger(__name__)

#: Discord's identify window per bucket is 5 s; the margin absorbs the time between claim and IDENTIFY.
IDENTIFY_INTERVAL = 5.5
#: Seconds between two shard heartbeats in the database (like the workers table's).
SHARD_HEARTBEAT_SECONDS = 5.0
#: A sync claim older than this was left by a process that died before it synced: it may be taken over.
SYNC_STALE_AFTER = 60.0


class IdentifyGate:
    """Waits until a shard's identify bucket is this process's to use (see the module docstring)."""

    def __init__(
        self,
        repo: SqlShardRepository,
        holder: str,
        max_concurrency: Callable[[], Awaitable[int]],
        *,
        interval: float = IDENTIFY_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.holder = holder
        self._fetch_max_concurrency = max_concurrency
        self._max_concurrency: int | None = None
        self.interval = interval
        self.clock = clock
        #: (shard id, unix time) of every identify this gate let through, for logs and tests.
        self.granted: list[tuple[int, float]] = []

    async def max_concurrency(self) -> int:
        if self._max_concurrency is None:
            try:
                self._max_concurrency = max(1, int(await self._fetch_max_concurrency()))
            except Exception as exc:
                log.warning("could not read session_start_limit (%s); identifying one at a time", exc)
                return 1
        return self._max_concurrency

    async def wait_turn(self, shard_id: int | None) -> None:
        bucket = (shard_id or 0) % await self.max_concurrency()
        waited = 0.0
        while True:
            try:
                wait = await self.repo.claim_identify(bucket, self.holder, self.clock(), self.interval)
            except Exception as exc:  # the database is away: fall back to discord.py's own 5 s spacing
                log.warning("identify bucket %d: database unavailable (%s); waiting 5 s", bucket, exc)
                await asyncio.sleep(5.0)
                break
            if wait <= 0:
                break
            waited += wait
            # A little jitter so processes waiting for the same bucket do not all ask at the same instant.
            await asyncio.sleep(wait + random.uniform(0.01, 0.1))
        self.granted.append((shard_id or 0, self.clock()))
        log.info(
            "shard %s: identifying (bucket %d%s)",
            shard_id,
            bucket,
            f", after waiting {waited:.1f} s for its turn" if waited else "",
        )


class ShardPresence(Heartbeat):
    """This process's shards in ``gateway_shards``, refreshed every few seconds with their latency."""

    what = "shard heartbeat"
    task_name = "palette-shard-heartbeat"

    def __init__(
        self,
        repo: SqlShardRepository,
        worker_id: str,
        shard_count: Callable[[], int],
        latencies: Callable[[], Iterable[tuple[int, float]]],
        *,
        interval: float = SHARD_HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(interval)
        self.repo = repo
        self.worker_id = worker_id
        self.shard_count = shard_count
        self.latencies = latencies
        self.clock = clock

    def start(self) -> None:
        self.start_beating(first_now=True)

    async def beat(self) -> None:
        rows = [(sid, None if math.isnan(lat) or math.isinf(lat) else lat) for sid, lat in self.latencies()]
        await self.repo.beat(
            self.worker_id, socket.gethostname(), os.getpid(), self.shard_count(), rows, self.clock()
        )

    async def farewell(self) -> None:
        await self.repo.forget(self.worker_id)


async def claim_command_sync(
    repo: SqlShardRepository,
    scope: str,
    digest: str,
    holder: str,
    recorded: Callable[[], Awaitable[str | None]],
    *,
    wait: float = 30.0,
    clock: Callable[[], float] = time.time,
) -> bool:
    """True when this process should sync ``digest`` for ``scope``. Otherwise another gateway claimed it:
    wait (up to ``wait`` s) until ``recorded()`` shows the digest, then False."""
    if await repo.claim_sync(scope, digest, holder, clock(), SYNC_STALE_AFTER):
        return True
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if await recorded() == digest:
            break
        await asyncio.sleep(0.2)
    else:
        log.warning("another gateway claimed the command sync but it is not recorded after %.0f s", wait)
    return False
