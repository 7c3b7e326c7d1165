"""The site in a real browser (headless Chromium via Playwright) against the real processes: the bot
(``python -m bot``, gateway and worker in one) and the site (``python -m bot web``) share a database and
a data directory; Discord is the loopback fake (gateway, REST and OAuth2)."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import deployment
from tests.fakes.processes import PaletteProcess, start_gateway

pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def login(context: Any, base: str, fake: Any, user: Any) -> Any:
    """Log in as ``user`` the way a person does: the site sends the browser to Discord, which approves."""
    await context.clear_cookies()
    fake.oauth.approve_as(user)
    page = await context.new_page()
    await page.goto(f"{base}/")
    await page.get_by_role("link", name="Log in with Discord").click()
    await page.wait_for_url(f"{base}/gallery")
    return page


async def test_gallery_dashboard_and_security_in_a_browser(tmp_path: Path, browser: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with deployment(tmp_path, f"sqlite:///{tmp_path / 'palette.db'}", users=3) as d:
        fake = d.fake
        alice, bob, carol = d.users
        owner = fake.users[d.guild.owner_id]
        outsider = fake.add_user("outsider")
        nsfw = fake.add_channel(d.guild, "after-dark", nsfw=True)
        web_settings = {
            "DATA_DIR": tmp_path / "data",
            "WEB_BASE_URL": base,
            "WEB_PORT": port,
            "DISCORD_CLIENT_SECRET": fake.oauth.client_secret,
            "DISCORD_OAUTH_URL": fake.oauth.authorize_url,
            "WEB_GUILDS_REFRESH": 1,
        }
        bot = PaletteProcess({**d.env, **{k: str(v) for k, v in web_settings.items() if k == "DATA_DIR"}},
                             tmp_path, name="bot")  # fmt: skip
        d.processes.append(bot)
        await start_gateway(bot, fake)
        web = d.process("web", **web_settings)
        await web.start()

        hostile = 'lighthouse <script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
        asks = [
            await d.imagine(alice, hostile),
            await d.imagine(bob, "bob's secret garden"),
            await fake.invoke_slash(alice, nsfw, "imagine", options={"prompt": "midnight masquerade"}),
        ]
        await d.all_final(asks)
        assert all(ix.original and ix.original.files for ix in asks)
        images = tmp_path / "data" / "images"
        for _ in range(300):  # the worker stores them right after settling, in the background
            if len(list((images / "originals").rglob("*.png"))) == 3:
                break
            await asyncio.sleep(0.05)
        assert len(list((images / "originals").rglob("*.png"))) == 3
        assert not list(images.glob("thumbs/**/*.webp"))  # made when the gallery first shows them
        on = await d.admin(owner, "gallery", mode="on")
        assert "Web gallery: on" in await d.reply(on)

        # --- your own images, not others'; a hostile prompt stays text ---
        page = await login(browser, base, fake, alice)
        grid = page.locator("ul.grid")
        await grid.wait_for()
        text = await grid.inner_text()
        assert "lighthouse <script>" in text and "midnight masquerade" in text
        assert "secret garden" not in text
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("img[alt^='lighthouse <script>']").count() == 1
        # Each thumbnail is made on its first request: wait for them to load, then check they decoded.
        # (A polling loop here: the page's CSP forbids the eval that wait_for_function polls with.)
        for _ in range(300):
            if await page.evaluate(
                "Array.from(document.querySelectorAll('ul.grid img')).every(i => i.complete)"
            ):
                break
            await asyncio.sleep(0.05)
        thumb_ok = await page.evaluate(
            "Array.from(document.querySelectorAll('ul.grid img')).every(i => i.naturalWidth > 0)"
        )
        assert thumb_ok, "a thumbnail did not load"
        assert len(list((images / "thumbs").rglob("*.webp"))) == 2  # alice's two, kept for next time

        # --- the server gallery: members see non-NSFW results; an outsider is refused ---
        await page.goto(f"{base}/servers/{d.guild.id}")
        server_text = await page.locator("main").inner_text()
        assert "secret garden" in server_text and "lighthouse" in server_text
        assert "midnight masquerade" not in server_text

        # --- CSRF: a POST without the page's token is refused, even with the session cookie ---
        forged = await browser.request.post(f"{base}/logout", form={"csrf": "forged"})
        assert forged.status == 403

        # --- delete an image: gone here, from the records and from Discord ---
        await page.goto(f"{base}/gallery")
        await page.locator("img[alt^='lighthouse']").click()
        await page.get_by_role("button", name="Delete this image").click()
        await page.wait_for_url(re.compile(r".*/gallery\?notice=.*"))
        assert "gone from the site" in await page.get_by_role("status").inner_text()
        assert "lighthouse" not in await page.locator("main").inner_text()
        assert asks[0].original.deleted
        assert await d.scalar("SELECT COUNT(*) FROM results WHERE user_id = ?", alice.id) == 1

        # --- a report worked from the dashboard by a moderator ---
        garden = asks[1].original
        report = await fake.click_button(carol, garden, d.button(garden, "report"))
        assert "moderators have been told" in await d.reply(report)
        page = await login(browser, base, fake, bob)
        response = await page.goto(f"{base}/servers/{d.guild.id}/dashboard")
        assert response is not None and response.status == 403  # a plain member
        page = await login(browser, base, fake, owner)
        await page.goto(f"{base}/servers/{d.guild.id}/dashboard")
        reports = page.locator("ul.reports")
        assert "secret garden" in await reports.inner_text()
        await reports.get_by_role("button", name="Delete the result").click()
        await page.wait_for_url(re.compile(r".*/dashboard\?notice=.*"))
        assert "No open reports." in await page.locator("main").inner_text()
        assert garden.deleted
        await page.goto(f"{base}/servers/{d.guild.id}")
        assert "secret garden" not in await page.locator("main").inner_text()

        # --- someone who is not in the server sees nothing of it ---
        page = await login(browser, base, fake, outsider)
        response = await page.goto(f"{base}/servers/{d.guild.id}")
        assert response is not None and response.status == 403
        assert "Deploy Test" not in await page.content()
        await page.get_by_role("button", name="Log out").click()
        await page.wait_for_url(f"{base}/")
        assert await d.scalar("SELECT COUNT(*) FROM web_sessions WHERE user_id = ?", outsider.id) == 0
        problems = [line for line in web.log_problems() if "voice will NOT be supported" not in line]
        assert not problems, problems
        assert fake.oauth.client_secret not in web.log_text()
