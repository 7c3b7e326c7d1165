"""Start-up and shutdown of a Palette process, in one of three roles.

* ``all`` (``python -m bot``, ``python -m bot run``): the gateway and a worker in one process.
* ``gateway`` (``python -m bot gateway``): connected to Discord's gateway; answers interactions and
  queues jobs in the database. Never calls a provider (the generator only validates requests).
* ``worker`` (``python -m bot worker``): no gateway connection. Logs in to Discord's REST API, claims
  jobs from the database, calls providers, posts results and mod-log entries.

Any number of each may run against one database. Each part closes what it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import discord

from bot.config import Settings
from bot.generation import Generator
from bot.imagestore import ImageStore
from bot.jobs.spool import SPOOL_DIR_NAME, EncoderPool, ImageSpool
from bot.jobs.worker import Presence, Worker, new_worker_id
from bot.loopmonitor import start_from_env
from bot.moderation import modlog
from bot.ops import metrics
from bot.ops.server import ProcessProbe, start_ops_server
from bot.presentation.client import PaletteBot, ShardedPaletteBot, WorkerClient, point_discord_at
from bot.presentation.embeds import job_locale
from bot.presentation.moderation import ModLoggingPresenter
from bot.presentation.presenter import DEFAULT_UPLOAD_LIMIT, UPLOAD_OVERHEAD, DiscordPresenter
from bot.providers import build_downloader, build_providers, build_reference_downloader
from bot.storage import Database, open_database
from bot.storage.queue import HealthRepository, QueueRepository
from bot.storage.queue_sql import SqlHealthRepository, SqlQueueRepository
from bot.tenants import provider_label

log = logging.getLogger(__name__)

EXIT_OK = 0
ROLES = ("all", "gateway", "worker", "web")


async def open_storage(settings: Settings) -> tuple[Database, QueueRepository, HealthRepository]:
    """The database, the queue in it and the shared provider health."""
    db = await open_database(settings.database_url, max_job_reference_bytes=settings.max_job_reference_bytes)
    return db, SqlQueueRepository(db.engine), SqlHealthRepository(db.engine)


def build_generator(settings: Settings, health: HealthRepository) -> Generator:
    # Provider results and image URLs from Discord messages never share a connection pool: a user's
    # host that trickles its bytes must not hold the connections that results need.
    downloader = build_downloader(settings)
    providers = build_providers(settings, downloader)
    # Clients for the providers the operator has no key for: only servers' own keys use them (off
    # without PALETTE_SECRET_KEY, when servers cannot add keys).
    spare = build_providers(settings, downloader, spare=True) if settings.palette_secret_key else {}
    return Generator(settings, providers, health=health, spare=spare)


def discord_connector(settings: Settings) -> aiohttp.TCPConnector:
    """The connection pool of a client's REST calls (closed with discord.py's session, which owns it)."""
    return aiohttp.TCPConnector(limit=settings.discord_http_connections)


async def create_bot(
    settings: Settings, *, role: str = "all", sync_only: bool = False, **client_options: Any
) -> PaletteBot:
    """The gateway client with everything it needs (and, for ``all``, this process's worker); used by
    `python -m bot` and by the tests."""
    if role not in ("all", "gateway"):
        raise ValueError(f"create_bot makes the 'all' or 'gateway' role, not {role!r}")
    point_discord_at(settings)
    metrics.set_role(role)
    client_options.setdefault("http_trace", metrics.discord_trace())  # 429s and interaction ack times
    client_options.setdefault("connector", discord_connector(settings))
    cls: type[PaletteBot] = PaletteBot
    if settings.sharded and not sync_only:
        cls = ShardedPaletteBot
        client_options.update(await shard_options(settings))
    db, queue, health = await open_storage(settings)
    generator = build_generator(settings, health)
    references = build_reference_downloader(settings)
    bot = cls(
        settings,
        db,
        generator,
        references,
        queue=queue,
        role=role,
        worker_id=new_worker_id(role),
        sync_only=sync_only,
        **client_options,
    )
    bot.image_store = build_image_store(settings)  # type: ignore[attr-defined]
    if role == "all":
        bot.worker, bot.presenter, bot.encoders = attach_worker(
            bot, settings, db, queue, generator, bot.worker_id
        )
        bot.jobs.worker = bot.worker
    return bot


async def shard_options(settings: Settings) -> dict[str, Any]:
    """``shard_count`` and ``shard_ids`` for the AutoShardedClient: SHARD_COUNT, else the count Discord
    recommends (``GET /gateway/bot``); SHARD_IDS, else all of them."""
    count = settings.shard_count
    if count is None:
        count = int((await fetch_bot_gateway(settings))["shards"])
    ids = settings.shard_id_list() or list(range(count))
    if ids[-1] >= count:
        raise ValueError(f"SHARD_IDS names shard {ids[-1]}, but there are {count} shards (0-{count - 1})")
    log.info("running shard(s) %s of %d", ",".join(map(str, ids)), count)
    return {"shard_count": count, "shard_ids": ids}


async def fetch_bot_gateway(settings: Settings) -> dict[str, Any]:
    """Discord's ``GET /gateway/bot``: the recommended shard count and the session start limits."""
    assert settings.discord_token is not None
    headers = {"Authorization": f"Bot {settings.discord_token.get_secret_value()}"}
    url = settings.discord_api_base.rstrip("/") + "/gateway/bot"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        if response.status == 401:
            raise discord.LoginFailure("Improper token has been passed.")
        response.raise_for_status()
        return dict(await response.json())


def attach_worker(
    client: discord.Client,
    settings: Settings,
    db: Database,
    queue: QueueRepository,
    generator: Generator,
    worker_id: str,
) -> tuple[Worker, DiscordPresenter, EncoderPool]:
    """A worker posting through ``client`` (which carries ``moderation`` for the mod log): its image
    spool (memory budget, then disk in the data directory), encoder processes and presenter."""
    # Results too big for Discord's default upload limit are re-encoded from a file: they wait on disk.
    spool = ImageSpool(
        spool_directory(settings, worker_id),
        settings.image_memory_budget,
        direct_bytes=DEFAULT_UPLOAD_LIMIT - UPLOAD_OVERHEAD,
    )
    encoders = EncoderPool(settings.image_encoders)
    presenter = DiscordPresenter(client, spool=spool, encoders=encoders, groups=db.groups)
    # Each delivered result also goes to the server's mod log (in the background).
    worker = Worker(
        db.jobs,
        queue,
        generator,
        ModLoggingPresenter(presenter, client),  # type: ignore[arg-type]
        settings,
        worker_id=worker_id,
        spool=spool,
    )
    # Servers' own provider keys: looked up (and decrypted) here for each job's server; a key a provider
    # refuses goes to that server's mod log.
    worker.tenants = client.tenants  # type: ignore[attr-defined]
    moderation = client.moderation  # type: ignore[attr-defined]

    def key_rejected(job: Any, error: Any) -> None:
        if job.guild_id is not None:
            moderation.emit(
                modlog.key_rejected(
                    job.guild_id,
                    provider=provider_label(error.provider),
                    out_of_credits=error.status == 402 or type(error).__name__ == "OutOfCredits",
                    user_id=job.user_id,
                    job_id=job.id,
                    locale=job_locale(job),
                )
            )

    worker.on_key_rejected = key_rejected
    worker.image_store = build_image_store(settings)
    client.image_store = worker.image_store  # type: ignore[attr-defined]  # /history-clear, moderators
    return worker, presenter, encoders


def build_image_store(settings: Settings) -> ImageStore:
    """The folder of delivered images the web gallery serves (IMAGE_STORE_DIR)."""
    return ImageStore(settings.image_store_directory, retention_days=settings.image_retention_days or None)


def spool_directory(settings: Settings, worker_id: str) -> Path:
    """This process's spool, ``<data dir>/spool/<worker id>``; spools of dead processes of this host
    (a crash leaves files behind) are removed on the way."""
    root = settings.data_directory / SPOOL_DIR_NAME
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            # <role>-<host>-<pid>-<tail>; host names may contain dashes.
            parts = entry.name.rsplit("-", 2)
            if len(parts) != 3 or not parts[1].isdigit() or not parts[0].endswith(f"-{host}"):
                continue
            if not _alive(int(parts[1])):
                shutil.rmtree(entry, ignore_errors=True)
    return root / worker_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def shutdown(bot: PaletteBot) -> None:
    """Close the bot (its worker gives unfinished jobs back), then the provider clients (with the result
    downloader), the reference downloader, the encoder processes, the queue and the database."""
    if not bot.is_closed():
        await bot.close()
    await bot.generator.aclose()
    await bot.downloader.aclose()
    if bot.encoders is not None:
        await asyncio.to_thread(bot.encoders.close)
    await bot.queue.aclose()
    await bot.db.close()


def _stop_event() -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    return stopping


def gateway_probe(bot: PaletteBot) -> ProcessProbe:
    """What /readyz and /metrics look at in a gateway (or all-in-one) process."""
    probe = ProcessProbe()
    probe.db, probe.queue, probe.generator = bot.db, bot.queue, bot.generator
    probe.worker, probe.gateway, probe.expects_gateway = bot.worker, bot, True
    return probe


async def _run(settings: Settings, sync_only: bool, role: str) -> int:
    bot = await create_bot(settings, role=role, sync_only=sync_only)
    _monitor = start_from_env()  # PALETTE_LOOP_MONITOR=1: record event-loop stalls (benchmark)
    stopping = _stop_event()
    assert settings.discord_token is not None
    ops = (
        None
        if sync_only
        else await start_ops_server(gateway_probe(bot), settings.metrics_host, settings.metrics_port)
    )
    runner = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
    stopper = asyncio.create_task(stopping.wait())
    web: asyncio.Task[None] | None = None
    if role == "all" and settings.web_enabled and not sync_only:
        web = asyncio.create_task(_serve_web_when_logged_in(settings, bot))
    try:
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            bot.jobs.stop()
            if bot.worker is not None:
                log.info(
                    "shutting down: no new jobs; running ones get %.0f s, the rest go back to the queue",
                    settings.shutdown_grace,
                )
                await bot.worker.stop(grace=settings.shutdown_grace)
        elif runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
    finally:
        stopper.cancel()
        if web is not None:
            await _stop_web(bot, web)
        if ops is not None:
            await ops.stop()
        await shutdown(bot)
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    return EXIT_OK


async def _serve_web_when_logged_in(settings: Settings, bot: PaletteBot) -> None:
    """All-in-one with WEB_BASE_URL and DISCORD_CLIENT_SECRET set: the site, once the bot knows its
    application id."""
    from bot.web.server import serve_beside

    while bot.application_id is None and not bot.is_closed():  # noqa: ASYNC110 (set by discord.py's login)
        await asyncio.sleep(0.1)
    if bot.is_closed():
        return
    task = await serve_beside(settings, bot)
    await task


async def _stop_web(bot: PaletteBot, web: asyncio.Task[None]) -> None:
    server = getattr(bot, "web_server", None)
    if server is not None:
        server.should_exit = True
    try:
        await asyncio.wait_for(web, 10)
    except BaseException:
        web.cancel()


class WorkerRole:
    """The worker role's parts: the database, the queue, providers, a REST-only Discord client, the
    worker and its heartbeat. ``python -m bot worker`` runs one; tests run one beside a gateway."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = new_worker_id("worker")
        self.db: Database | None = None
        self.queue: QueueRepository | None = None
        self.generator: Generator | None = None
        self.client: WorkerClient | None = None
        self.worker: Worker | None = None
        self.encoders: EncoderPool | None = None
        self.presence: Presence | None = None
        #: What /readyz and /metrics look at (filled in as the parts start).
        self.probe = ProcessProbe()

    async def start(self) -> None:
        settings = self.settings
        point_discord_at(settings)
        metrics.set_role("worker")
        self.db, self.queue, health = await open_storage(settings)
        self.generator = build_generator(settings, health)
        self.client = WorkerClient(
            settings, self.db, http_trace=metrics.discord_trace(), connector=discord_connector(settings)
        )
        assert settings.discord_token is not None
        await self.client.login(settings.discord_token.get_secret_value())
        self.worker, _presenter, self.encoders = attach_worker(
            self.client, settings, self.db, self.queue, self.generator, self.worker_id
        )
        self.presence = Presence(self.queue, "worker", self.worker_id)
        await self.presence.start()
        self.client.moderation.watch()
        assert self.encoders is not None
        await asyncio.to_thread(self.encoders.start)
        # What start-up made lives as long as the process: out of the collector's full passes, which
        # otherwise rescan it while jobs churn through objects. Before the first claim: a full pass then
        # would stall running jobs, and freezing a job's objects would keep them (and its images) forever.
        gc.collect()
        gc.freeze()
        await self.worker.start()
        self.probe.db, self.probe.queue, self.probe.generator = self.db, self.queue, self.generator
        self.probe.worker = self.worker
        log.info("worker %s ready (REST only, no gateway)", self.worker_id)

    async def stop(self, grace: float = 0.0) -> None:
        """Running jobs get ``grace`` seconds, the rest go back to the queue; then everything closes."""
        if self.worker is not None:
            await self.worker.stop(grace=grace)
        if self.presence is not None:
            await self.presence.stop()
        if self.client is not None:
            await self.client.modlog.drain(timeout=5)
            await self.client.close()
        if self.generator is not None:
            await self.generator.aclose()
        if self.encoders is not None:
            await asyncio.to_thread(self.encoders.close)
        if self.queue is not None:
            await self.queue.aclose()
        if self.db is not None:
            await self.db.close()
        self.worker = self.presence = self.client = self.generator = self.encoders = None
        self.queue = self.db = None
        self.probe.db = self.probe.queue = self.probe.generator = self.probe.worker = None


async def _run_worker(settings: Settings) -> int:
    """The worker role: Discord's REST API only, jobs from the database."""
    role = WorkerRole(settings)
    _monitor = start_from_env()
    stopping = _stop_event()
    metrics.set_role("worker")
    ops = await start_ops_server(role.probe, settings.metrics_host, settings.metrics_port)
    try:
        await role.start()  # which freezes start-up's objects out of the collector, as on_ready does
        await stopping.wait()
        log.info(
            "shutting down: no new jobs; running ones get %.0f s, the rest go back to the queue",
            settings.shutdown_grace,
        )
        await role.stop(grace=settings.shutdown_grace)
    finally:
        await role.stop()
        if ops is not None:
            await ops.stop()
    return EXIT_OK


async def _run_web(settings: Settings) -> int:
    """The web role: the gallery and dashboard, Discord's REST API as the bot, the shared database."""
    from bot.web.server import run_web_role

    await run_web_role(settings, _stop_event())
    return EXIT_OK


def run_bot(settings: Settings, *, sync_only: bool = False, role: str = "all") -> int:
    try:
        if role == "worker":
            return asyncio.run(_run_worker(settings))
        if role == "web":
            return asyncio.run(_run_web(settings))
        return asyncio.run(_run(settings, sync_only, role))
    except discord.LoginFailure:
        log.error(
            "Discord rejected the token. Check DISCORD_TOKEN in .env "
            "(Developer Portal -> Bot -> Reset Token)."
        )
        return 2
