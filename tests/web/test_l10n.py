"""The site in the visitor's language: the signed-in user's Discord locale (``/users/@me``), else the
browser's Accept-Language, else English; pages, notices and error pages from the same catalogs as the bot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
