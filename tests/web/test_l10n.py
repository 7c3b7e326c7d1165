"""The site in the visitor's language: the signed-in user's Discord locale (``/users/@me``), else the
browser's Accept-Language, else English; pages, notices and error pages from the same catalogs as the bot."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest

from bot.moderation import bans
from bot.storage import Ban
from bot.web.app import accepted_locale
from tests.web.harness import running_site


@pytest.fixture
async def site(tmp_path: Path):
    async with running_site(tmp_path) as running:
        yield running


def lang_of(html: str) -> str:
    match = re.search(r'<html lang="([^"]+)">', html)
    assert match, "no <html lang>"
    return match.group(1)


async def test_a_german_discord_user_sees_the_gallery_in_german(site) -> None:
    site.alice.locale = "de"
    await site.seed(site.alice, "blue whale at dawn")
    alice = await site.login(site.alice)
    page = await alice.get("/gallery", headers={"Accept-Language": "fr-FR,fr;q=0.9"})  # Discord's wins
    assert page.status_code == 200
    assert lang_of(page.text) == "de"
    for german in ("Deine Bilder", "Prompts durchsuchen", "Alle Modelle", "Abmelden", "Anzeigen"):
        assert german in page.text, german
    assert "Your images" not in page.text and "Search prompts" not in page.text
    assert "blue whale at dawn" in page.text  # the user's own words stay as they are
    # A notice after a form, and an error page, are German too.
    servers = await alice.get("/servers")
    assert "Deine Server" in servers.text
    missing = await alice.get("/images/999999")
    assert missing.status_code == 404 and "Hier gibt es nichts" in missing.text


async def test_an_english_discord_user_stays_english(site) -> None:
    alice = await site.login(site.alice)  # the fake's users are en-US
    page = await alice.get("/gallery", headers={"Accept-Language": "de"})
    assert lang_of(page.text) == "en-US" and "Your images" in page.text


async def test_anonymous_visitors_get_their_browser_language(site) -> None:
    web = site.browser()
    home = await web.get("/", headers={"Accept-Language": "ja,en;q=0.5"})
    assert lang_of(home.text) == "ja" and "Discordでログイン" in home.text
    plain = await web.get("/")
    assert lang_of(plain.text) == "en-US" and "Log in with Discord" in plain.text


def test_accept_language_negotiation() -> None:
    assert accepted_locale(None) == "en-US"
    assert accepted_locale("de-DE,de;q=0.9,en;q=0.8") == "de"
    assert accepted_locale("en-GB,de;q=0.5") == "en-US"  # English first: English
    assert accepted_locale("it, pt;q=0.8") == "pt-BR"  # no Italian; Portuguese reads Brazil's catalog
    assert accepted_locale("es-MX") == "es-ES"
    assert accepted_locale("fr;q=0.1, ja;q=0.9") == "ja"  # by weight, not by order
    assert accepted_locale("de;q=0, zz") == "en-US"  # q=0 means "not this"
    assert accepted_locale("x" * 5000) == "en-US"


def ban_reasons(html: str) -> dict[str, str]:
    """The dashboard's ban table: reason by the member's id."""
    rows = re.findall(r'<span class="small">\((\d+)\)</span></td><td>[^<]*</td><td>([^<]*)</td>', html)
    return {user_id: unescape(reason) for user_id, reason in rows}


async def test_the_dashboard_shows_ban_reasons_in_the_viewers_language(site) -> None:
    """Palette's own reasons are translated for whoever reads the dashboard; a moderator's typed reason
    and a ban stored before reasons had codes (English text only) are shown as they are."""
    gid = site.guild.id
    job, _, _ = await site.seed(site.bob, "reported thing")
    await site.db.moderation.add_report(gid, job, site.alice.id, site.bob.id, 1.0)
    mod = site.ctx.moderation
    await mod.ban(gid, site.alice.id, actor_id=site.owner.id, duration="1d", reason="Spam & <Werbung>")
    await mod.ban(gid, site.outsider.id, actor_id=site.owner.id, duration=None,
                  reason=bans.auto_ban_reason(3, 600.0))  # fmt: skip
    legacy = site.fake.add_user("legacy")
    await site.db.moderation.ban(Ban(gid, legacy.id, None, "3 blocked prompts within 10m", None, True, 1.0))
    site.owner.locale = "de"
    owner = await site.login(site.owner)
    token = re.search(r'name="csrf" value="([^"]+)"', (await owner.get(f"/servers/{gid}/dashboard")).text)
    assert token
    banned = await owner.post(f"/servers/{gid}/reports/{job}/ban", data={"csrf": token[1], "duration": "1d"})
    assert banned.status_code == 303

    board = await owner.get(f"/servers/{gid}/dashboard")
    assert lang_of(board.text) == "de"
    assert ban_reasons(board.text) == {
        str(site.bob.id): f"gemeldetes Ergebnis (Auftrag {job}), über das Dashboard",
        str(site.outsider.id): "3 blockierte Prompts innerhalb von 10 Min.",
        str(site.alice.id): "Spam & <Werbung>",  # escaped in the page, as typed
        str(legacy.id): "3 blocked prompts within 10m",
    }
    assert "&lt;Werbung&gt;" in board.text
    # The same bans for a Japanese moderator.
    site.owner.locale = "ja"
    japanese = await (await site.login(site.owner)).get(f"/servers/{gid}/dashboard")
    reasons = ban_reasons(japanese.text)
    assert reasons[str(site.bob.id)] == f"報告された結果（ジョブ {job}）、ダッシュボードから"
    assert reasons[str(site.outsider.id)] == "10 分以内にプロンプトが 3 回ブロックされた"
    assert reasons[str(legacy.id)] == "3 blocked prompts within 10m"
