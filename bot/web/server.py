"""Running the site: ``python -m bot web`` (its own REST-only Discord client), or beside the gateway in
the all-in-one process (:func:`serve_beside`), with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import uvicorn

from bot.config import Settings
from bot.imagestore import ImageStore
from bot.storage import Database
from bot.web.app import WebContext, create_app
from bot.web.discord import ClientActions, OAuthClient
from bot.web.security import Signer, TokenBox

log = logging.getLogger(__name__)

READY_LINE = "web site ready at %s"


def build_context(settings: Settings, db: Database, client: Any, application_id: int | None) -> WebContext:
    """The site's parts around a logged-in discord.py client (``client.moderation`` posts to the mod log)."""
    from bot.app import build_image_store

    secret = settings.discord_client_secret
    if secret is None or not secret.get_secret_value() or not settings.web_base_url:
        raise RuntimeError("the web site needs WEB_BASE_URL and DISCORD_CLIENT_SECRET")
    client_id = settings.discord_client_id or application_id
    if client_id is None:
        raise RuntimeError("set DISCORD_CLIENT_ID (Discord did not name the application)")
    oauth = OAuthClient(
        api_base=settings.discord_api_base,
        authorize_url=settings.discord_oauth_url,
        client_id=int(client_id),
        client_secret=secret.get_secret_value(),
        redirect_uri=settings.web_base_url.rstrip("/") + "/auth/callback",
    )
    store: ImageStore = getattr(client, "image_store", None) or build_image_store(settings)
    return WebContext(
        settings=settings,
        db=db,
        store=store,
        oauth=oauth,
        moderation=client.moderation,
        bot=ClientActions(client),
        tokens=TokenBox(secret.get_secret_value()),
        signer=Signer(secret.get_secret_value()),
    )


def make_server(settings: Settings, ctx: WebContext) -> uvicorn.Server:
    # No access log: a login's callback URL carries its code and state.
    config = uvicorn.Config(
        create_app(ctx),
        host=settings.web_host,
        port=settings.web_port,
        access_log=False,
        log_config=None,
        lifespan="on",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the role owns signals
    return server


async def serve(server: uvicorn.Server, settings: Settings) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn only sets a flag)
        await asyncio.sleep(0.02)
    if server.started:
        log.info(READY_LINE, settings.web_base_url)
    await task


async def serve_beside(settings: Settings, bot: Any) -> asyncio.Task[None]:
    """All-in-one: serve the site from the gateway's process once the bot has logged in."""
    ctx = build_context(settings, bot.db, bot, bot.application_id)
    server = make_server(settings, ctx)
    task = asyncio.create_task(serve(server, settings), name="palette-web")
    bot.web_server = server
    return task


async def run_web_role(settings: Settings, stopping: asyncio.Event) -> None:
    """``python -m bot web``: the database, a REST-only Discord client (deleting messages, member roles,
    the mod log), the site."""
    from bot.app import open_storage
    from bot.presentation.client import WorkerClient, point_discord_at

    point_discord_at(settings)
    db, queue, _health = await open_storage(settings)
    client = WorkerClient(settings, db)
    ctx: WebContext | None = None
    try:
        assert settings.discord_token is not None
        await client.login(settings.discord_token.get_secret_value())
        client.moderation.watch()
        ctx = build_context(settings, db, client, client.application_id)
        server = make_server(settings, ctx)
        task = asyncio.create_task(serve(server, settings))
        stopper = asyncio.create_task(stopping.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 10)
        stopper.cancel()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    finally:
        if ctx is not None:
            await ctx.oauth.aclose()
        await client.modlog.drain(timeout=5)
        await client.close()
        await queue.aclose()
        await db.close()
