"""How the site is run: ``python -m bot web`` refuses without its settings; the all-in-one process serves
it too when it is configured (the application id read from Discord)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.fakes.discord import FakeDiscord
from tests.fakes.processes import PaletteProcess, palette_env, run_cli, start_gateway
from tests.web.test_browser import free_port


async def test_web_role_needs_its_settings(tmp_path: Path) -> None:
    async with FakeDiscord() as fake:
        env = palette_env(fake, database_url=f"sqlite:///{tmp_path / 'p.db'}")
        done = await run_cli(env, tmp_path, "web")
        assert done.returncode == 2
        assert "WEB_BASE_URL" in done.stderr and "DISCORD_CLIENT_SECRET" in done.stderr


async def test_all_in_one_serves_the_site_when_configured(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with FakeDiscord() as fake:
        fake.add_guild("Somewhere")
        env = palette_env(
            fake,
            database_url=f"sqlite:///{tmp_path / 'p.db'}",
            WEB_BASE_URL=base,
            WEB_PORT=port,
            DISCORD_CLIENT_SECRET=fake.oauth.client_secret,
            DISCORD_OAUTH_URL=fake.oauth.authorize_url,
        )
        bot = PaletteProcess(env, tmp_path, name="bot")
        try:
            await start_gateway(bot, fake)
            await bot.wait_ready(30, ready=lambda: "web site ready at" in bot.current_log())
            async with httpx.AsyncClient(base_url=base) as web:
                home = await web.get("/")
                assert home.status_code == 200 and "Log in with Discord" in home.text
                login = await web.get("/login")
                assert login.status_code == 303
                assert re.search(rf"client_id={fake.application_id}\b", login.headers["location"])
        finally:
            assert await bot.stop() == 0
        assert fake.oauth.client_secret not in bot.log_text()
