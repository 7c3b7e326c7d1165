"""``/metrics``, ``/healthz`` and ``/readyz`` of one process (``METRICS_PORT``), served by aiohttp on the
process's own event loop (each request is a few awaits; nothing here blocks the loop).

* ``/healthz``: the process answers: 200.
* ``/readyz``: 200 when the database answers and, for a gateway, every shard is connected and ready;
  otherwise 503 with the reasons in the body, one a line.
* ``/metrics``: :mod:`bot.ops.metrics` in Prometheus' text format; the gauges that describe the
  deployment (queue depth, breakers) are read from the database first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from bot.ops import metrics

if TYPE_CHECKING:
    import discord

    from bot.generation import Generator
    from bot.jobs.worker import Worker
    from bot.storage import Database
    from bot.storage.queue import QueueRepository

log = logging.getLogger(__name__)

#: A check that takes longer than this is a failed check (a database that hangs is not ready).
CHECK_TIMEOUT = 3.0

#: Returns the reason the process is not ready, or None when it is.
Check = Callable[[], Awaitable[str | None]]


async def database_problem(db: Database | None) -> str | None:
    """Why the database does not answer (a ``SELECT 1`` on a fresh or pooled connection), or None."""
    if db is None:
        return "database: not open yet"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            async with db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except TimeoutError:
        return f"database: no answer within {CHECK_TIMEOUT:.0f} s"
    except Exception as exc:  # the reason's kind only: driver messages may name hosts or users
        return f"database: {type(exc).__name__}"
    return None


def gateway_problem(client: discord.Client) -> str | None:
    """Why the gateway client is not connected and ready (every shard it runs), or None."""
    if client.is_closed():
        return "gateway: closed"
    shard_ids = getattr(client, "shard_ids", None)
    get_shard = getattr(client, "get_shard", None)
    if get_shard is not None:  # AutoShardedClient
        expected = list(shard_ids or range(client.shard_count or 0))
        missing = [sid for sid in expected if (s := get_shard(sid)) is None or s.is_closed()]
        if not expected or missing:
            return f"gateway: shard(s) {', '.join(map(str, missing)) or '?'} not connected"
    else:
        ws = getattr(client, "ws", None)
        if ws is None or not getattr(ws, "open", False):
            return "gateway: not connected"
    if not client.is_ready():
        return "gateway: connected, not ready yet"
    return None


def gateway_latencies(client: discord.Client) -> list[tuple[int, float]]:
    latencies = getattr(client, "latencies", None)
    if latencies is not None and getattr(client, "get_shard", None) is not None:
        return list(latencies)
    return [(client.shard_id or 0, client.latency)]


class ProcessProbe:
    """What the endpoints look at in one process: its database, queue, generator, worker and gateway
    client (each optional: a worker has no gateway, a gateway no worker). Attributes may be set after
    the server started (the worker role opens its database after)."""

    def __init__(self) -> None:
        self.db: Database | None = None
        self.queue: QueueRepository | None = None
        self.generator: Generator | None = None
        self.worker: Worker | None = None
        self.gateway: discord.Client | None = None
        self.expects_gateway = False

    async def problems(self) -> list[str]:
        found = [await database_problem(self.db)]
        if self.expects_gateway:
            found.append("gateway: not started" if self.gateway is None else gateway_problem(self.gateway))
        return [p for p in found if p]

    async def refresh(self) -> None:
        """Update the gauges read at scrape time; a part that fails leaves its last values."""
        if self.queue is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CHECK_TIMEOUT):
                    metrics.set_queue_depth((await self.queue.depth()).queued)
        if self.generator is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CHECK_TIMEOUT):
                    rows = await self.generator.health_snapshot()
                metrics.set_breakers({row.provider: row.state for row in rows})
        if self.worker is not None:
            running = Counter(r.claim.provider for r in list(self.worker._running.values()))
            providers = self.generator.providers if self.generator is not None else ()
            metrics.set_jobs_running(running, providers)
        if self.gateway is not None and not self.gateway.is_closed():
            latencies = [(s, lat) for s, lat in gateway_latencies(self.gateway) if not math.isnan(lat)]
            metrics.set_gateway_latencies(latencies)


class OpsServer:
    """The HTTP server of the three endpoints, on ``host:port`` (port 0: a free one, see ``port``)."""

    def __init__(self, probe: ProcessProbe, host: str, port: int) -> None:
        self.probe = probe
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info(
            "metrics and health checks on http://%s:%d (/metrics, /healthz, /readyz)", self.host, self.port
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = await self.probe.problems()
        if problems:
            return web.Response(status=503, text="\n".join(problems) + "\n")
        return web.Response(text="ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.probe.refresh()
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


async def start_ops_server(probe: ProcessProbe, host: str, port: int | None) -> OpsServer | None:
    """The endpoints when ``METRICS_PORT`` is set (None otherwise)."""
    if port is None:
        return None
    server = OpsServer(probe, host, port)
    await server.start()
    return server
