"""Start-up and shutdown of the bot process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from bot.config import Settings
from bot.generation import Generator
from bot.loopmonitor import start_from_env
from bot.presentation.client import PaletteBot, point_discord_at
from bot.providers import build_downloader, build_providers, build_reference_downloader
from bot.storage import open_database

log = logging.getLogger(__name__)

EXIT_OK = 0


async def create_bot(settings: Settings, *, sync_only: bool = False, **client_options: Any) -> PaletteBot:
    """Everything the bot needs, wired together (used by `python -m bot` and by the tests)."""
    point_discord_at(settings)
    db = await open_database(settings.database_url, max_job_reference_bytes=settings.max_job_reference_bytes)
    # Provider results and image URLs from Discord messages never share a connection pool: a user's
    # host that trickles its bytes must not hold the connections that results need.
    generator = Generator(settings, build_providers(settings, build_downloader(settings)))
    references = build_reference_downloader(settings)
    return PaletteBot(settings, db, generator, references, sync_only=sync_only, **client_options)


async def shutdown(bot: PaletteBot) -> None:
    """Close the bot, then the provider clients (with the result downloader), the reference downloader
    and the database."""
    if not bot.is_closed():
        await bot.close()
    await bot.generator.aclose()
    await bot.downloader.aclose()
    await bot.db.close()


async def _run(settings: Settings, sync_only: bool) -> int:
    bot = await create_bot(settings, sync_only=sync_only)
    _monitor = start_from_env()  # PALETTE_LOOP_MONITOR=1: record event-loop stalls (benchmark)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    assert settings.discord_token is not None
    runner = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
    stopper = asyncio.create_task(stopping.wait())
    try:
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            log.info(
                "shutting down: no new jobs; running ones get %.0f s, the rest resume on the next start",
                settings.shutdown_grace,
            )
            await bot.jobs.stop(grace=settings.shutdown_grace)
        elif runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
    finally:
        stopper.cancel()
        await shutdown(bot)
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    return EXIT_OK


def run_bot(settings: Settings, *, sync_only: bool = False) -> int:
    import discord

    try:
        return asyncio.run(_run(settings, sync_only))
    except discord.LoginFailure:
        log.error(
            "Discord rejected the token. Check DISCORD_TOKEN in .env "
            "(Developer Portal -> Bot -> Reset Token)."
        )
        return 2
