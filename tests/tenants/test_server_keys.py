"""Servers' own provider keys, end to end: the real bot against the fake Discord and fake providers.

A server's key reaches the provider for that server's jobs while another server's jobs use the operator's
key; failover only goes where the server allows; a refused key is reported to the server's mod log and
the member told to ask the server's admins; the key is found nowhere in plain text.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from bot.app import WorkerRole
from bot.storage import open_database
from bot.storage.copy import copy_database
from tests.fakes.discord.models import Permission
from tests.fakes.providers.nanobanana_pro import FakeNanoBananaPro
from tests.presentation.conftest import Palette, running_palette

MANAGER = int(Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES | Permission.MANAGE_GUILD)
SERVER_KEY = "lh-server-own-key-7f3c9a1e5b2d4k9Q"


def everything_sent(palette: Palette) -> str:
    """Every message and interaction answer the bot sent to the fake Discord, as one text."""
    parts: list[str] = []
    for message in palette.fake.messages.values():
        parts.append(repr(message.content))
        parts.append(repr(message.embeds))
    for ix in palette.fake.interactions.values():
        parts.append(repr(ix.responses))
        parts.extend(repr((m.content, m.embeds)) for m in ix.followups)
    return "\n".join(parts)


async def set_key(palette: Palette, manager: Any, provider: str, key: str) -> str:
    ix = await palette.admin(manager, "provider set", provider=provider)
    submitted = await palette.fill_modal(ix, manager, [key])
    return await palette.reply(submitted, timeout=15)


def last_key(fake: Any, path_part: str) -> str | None:
    keys = [k for path, k in fake.keyring.used if path_part in path]
    return keys[-1] if keys else None


async def test_a_servers_key_is_used_for_its_jobs_only_and_is_never_in_plain_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = Fernet.generate_key().decode()
    async with running_palette(tmp_path, palette_secret_key=secret) as palette:
        palette.listenhub.keyring.extra.add(SERVER_KEY)
        manager = palette.member("manager", permissions=MANAGER)
        # The key goes in a modal, never as an option; the provider checks it (its balance endpoint).
        text = await set_key(palette, manager, "listenhub", SERVER_KEY)
        assert "own key" in text and SERVER_KEY[-4:] in text and SERVER_KEY not in text
        assert last_key(palette.listenhub, "subscription") == SERVER_KEY
        listed = await palette.reply(await palette.admin(manager, "provider list"))
        assert "ListenHub" in listed and SERVER_KEY[-4:] in listed and SERVER_KEY[:-4] not in listed
        assert "off" in listed  # fallback is off by default once the server has a key
        shown = await palette.admin(manager, "settings")
        await shown.wait_for(lambda i: bool(i.responses), timeout=10)
        fields = {f["name"]: f["value"] for f in shown.responses[0]["data"]["embeds"][0]["fields"]}
        assert fields["Own provider keys"].startswith("ListenHub · fallback to the bot's providers off")

        # This server's job goes to ListenHub with the server's key.
        await palette.result_message(await palette.imagine(palette.alice, "a fox", model="nano-banana-pro"))
        assert last_key(palette.listenhub, "generation") == SERVER_KEY

        # Another server's job uses the operator's key.
        other = palette.fake.add_guild(name="Other")
        other_channel = palette.fake.add_channel(other, name="art")
        carol = palette.fake.add_user(name="carol")
        palette.fake.add_member(other, carol)
        ix = await palette.fake.invoke_slash(
            carol, other_channel, "imagine", options={"prompt": "a cat", "model": "nano-banana-pro"}
        )
        await palette.result_message(ix)
        assert last_key(palette.listenhub, "generation") == palette.listenhub.api_key
        await palette.idle()

        # Usage of this month: one image for alice in this server.
        usage = await palette.admin(manager, "usage")
        await usage.wait_for(lambda i: bool(i.followups), timeout=10)
        embed = usage.followups[0].embeds[0]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert "**1**" in fields["By model and size"] and "Nano Banana Pro" in fields["By model and size"]
        assert f"<@{palette.alice.id}>: **1**" in fields["By member"]
        assert "ListenHub balance of this server's key" in fields

        # Nowhere in plain text: the database file, a copy-db target, the logs, what Discord was sent.
        target = f"sqlite:///{tmp_path / 'copy.db'}"
        copy = await open_database(target)
        try:
            await copy_database(palette.bot.db, copy)
        finally:
            await copy.close()
        sent = everything_sent(palette)
        db_path = tmp_path / "palette.db"
    for path in (db_path, Path(f"{db_path}-wal"), tmp_path / "copy.db"):
        if path.exists():
            assert SERVER_KEY.encode() not in path.read_bytes(), path
    assert SERVER_KEY not in sent
    assert SERVER_KEY not in caplog.text
    # The copy keeps the encrypted key: readable with the same PALETTE_SECRET_KEY.
    copy = await open_database(target)
    try:
        stored = await copy.tenants.keys(palette.guild.id)
    finally:
        await copy.close()
    assert Fernet(secret.encode()).decrypt(stored[0].secret.encode()).decode() == SERVER_KEY


async def test_a_refused_key_goes_to_the_mod_log_and_failover_respects_the_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_palette(tmp_path, palette_secret_key=Fernet.generate_key().decode()) as palette:
        palette.listenhub.keyring.extra.add(SERVER_KEY)
        manager = palette.member("manager", permissions=MANAGER)
        modlog = palette.fake.add_channel(palette.guild, name="mod-log")
        await palette.reply(await palette.admin(manager, "modlog", channel=modlog))
        await set_key(palette, manager, "listenhub", SERVER_KEY)
        audit = await palette.modlog_entry(modlog, "Policy changed: ListenHub key")
        assert SERVER_KEY[-4:] in repr(audit.embeds) and SERVER_KEY not in repr(audit.embeds)
        # The key is revoked at the provider after it was stored.
        palette.listenhub.keyring.extra.discard(SERVER_KEY)
        mountsea_calls = len(palette.mountsea.keyring.used)

        # Fallback off: nano-banana-pro has a Mountsea route, but that is the operator's: not tried.
        ix = await palette.imagine(palette.alice, "a fox", model="nano-banana-pro")
        text = await ix.wait_for_message(lambda m: "admins" in (m.content or ""), timeout=15)
        assert "server's admins" in text.content and "not the bot's owner" in text.content
        assert len(palette.mountsea.keyring.used) == mountsea_calls
        entry = await palette.modlog_entry(modlog, "Provider key was refused")
        assert "ListenHub" in repr(entry.embeds)
        await palette.idle()
        usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time(), guild_id=palette.guild.id)
        assert usage.daily_used == 0  # refused: nothing charged

        # Fallback on: the same request fails over to the operator's Mountsea key.
        await palette.reply(await palette.admin(manager, "provider fallback", mode="on"))
        result = await palette.result_message(
            await palette.imagine(palette.alice, "a fox", model="nano-banana-pro")
        )
        assert result.files
        assert last_key(palette.mountsea, "") == palette.mountsea.key
        await palette.idle()
    assert SERVER_KEY not in caplog.text


async def test_without_a_secret_key_the_feature_is_off_and_says_why(tmp_path: Path) -> None:
    async with running_palette(tmp_path) as palette:
        manager = palette.member("manager", permissions=MANAGER)
        ix = await palette.admin(manager, "provider set", provider="listenhub")
        text = await palette.reply(ix)
        assert "PALETTE_SECRET_KEY" in text and ix.modal is None and ix.ephemeral
        assert "PALETTE_SECRET_KEY" in await palette.reply(await palette.admin(manager, "provider list"))


async def test_a_key_the_provider_refuses_is_not_stored(tmp_path: Path) -> None:
    async with running_palette(tmp_path, palette_secret_key=Fernet.generate_key().decode()) as palette:
        manager = palette.member("manager", permissions=MANAGER)
        text = await set_key(palette, manager, "listenhub", "lh-wrong-key-000000000000")
        assert "refused" in text and "lh-wrong-key" not in text
        assert await palette.bot.db.tenants.keys(palette.guild.id) == []


async def test_a_provider_the_operator_has_no_key_for_and_a_key_checked_on_first_use(tmp_path: Path) -> None:
    async with FakeNanoBananaPro() as nano:
        nano.keyring.extra.add(SERVER_KEY)
        async with running_palette(
            tmp_path, palette_secret_key=Fernet.generate_key().decode(), nanobanana_pro_base_url=nano.base_url
        ) as palette:
            assert "nanobanana_pro" not in palette.bot.generator.providers  # no operator key
            manager = palette.member("manager", permissions=MANAGER)
            text = await set_key(palette, manager, "nanobanana_pro", SERVER_KEY)
            assert "checked on first use" in text and nano.keyring.used == []  # nothing to call
            await palette.result_message(
                await palette.imagine(palette.alice, "a fox", model="nano-banana-pro")
            )
            assert nano.keyring.keys_used() == [SERVER_KEY]
            # Nothing went to the operator's providers for this server (fallback off).
            assert all(k != SERVER_KEY for k in palette.listenhub.keyring.keys_used())
            assert not [p for p, _ in palette.listenhub.keyring.used if "generation" in p]
            # Removed: the server is back on the bot's providers.
            text = await palette.reply(
                await palette.admin(manager, "provider remove", provider="nanobanana_pro")
            )
            assert "no longer" in text
            await palette.result_message(
                await palette.imagine(palette.alice, "a cat", model="nano-banana-pro")
            )
            assert last_key(palette.listenhub, "generation") == palette.listenhub.api_key
            assert nano.keyring.keys_used() == [SERVER_KEY]
            await palette.idle()


async def test_a_separate_worker_reads_the_key_from_the_database(tmp_path: Path, database_url: str) -> None:
    secret = Fernet.generate_key().decode()
    async with running_palette(
        tmp_path, database_url=database_url, role="gateway", palette_secret_key=secret
    ) as palette:
        palette.listenhub.keyring.extra.add(SERVER_KEY)
        manager = palette.member("manager", permissions=MANAGER)
        await set_key(palette, manager, "listenhub", SERVER_KEY)
        ix = await palette.imagine(palette.alice, "made by a worker", model="nano-banana-pro")
        role = WorkerRole(palette.bot.settings)  # its own database connections, caches and cipher
        await role.start()
        try:
            await palette.result_message(ix)
            assert last_key(palette.listenhub, "generation") == SERVER_KEY
        finally:
            await role.stop()


async def test_an_account_out_of_credits_is_the_servers_business_too(tmp_path: Path) -> None:
    async with running_palette(tmp_path, palette_secret_key=Fernet.generate_key().decode()) as palette:
        palette.listenhub.keyring.extra.add(SERVER_KEY)
        manager = palette.member("manager", permissions=MANAGER)
        modlog = palette.fake.add_channel(palette.guild, name="mod-log")
        await palette.reply(await palette.admin(manager, "modlog", channel=modlog))
        await set_key(palette, manager, "listenhub", SERVER_KEY)
        palette.listenhub.script(402, {"code": 402, "message": "Insufficient credits"})
        ix = await palette.imagine(palette.alice, "a fox", model="nano-banana-pro")
        text = await ix.wait_for_message(lambda m: "admins" in (m.content or ""), timeout=15)
        assert "no credits left" in text.content
        await palette.modlog_entry(modlog, "Provider key is out of credits")
        # The provider is fine: its breaker did not count the server's empty account.
        health = {row.provider: row for row in await palette.bot.generator.health_snapshot()}
        assert health["listenhub"].consecutive_failures == 0
        await palette.idle()


async def test_only_the_operator_sees_every_servers_usage(tmp_path: Path) -> None:
    async with running_palette(tmp_path) as palette:
        await palette.result_message(await palette.imagine(palette.alice, "a fox"))
        await palette.idle()
        manager = palette.member("manager", permissions=MANAGER)
        refused = await palette.admin(manager, "usage", every_server=True)
        assert "Only the bot's owner" in await palette.reply(refused)
        owner = palette.fake.app_owner
        palette.fake.add_member(palette.guild, owner, permissions=MANAGER)
        ix = await palette.admin(owner, "usage", every_server=True)
        await ix.wait_for(lambda i: bool(i.followups), timeout=10)
        embed = ix.followups[0].embeds[0]
        assert "every server" in embed["title"]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert fields[f"Server {palette.guild.id}"].startswith("1 image\n")


async def test_server_keys_speak_the_admins_language_and_the_mod_log_the_servers(tmp_path: Path) -> None:
    """The modal and the answers are in the admin's language, the mod-log entry in the server's."""
    async with running_palette(tmp_path, palette_secret_key=Fernet.generate_key().decode()) as palette:
        palette.listenhub.keyring.extra.add(SERVER_KEY)
        manager = palette.member("manager", permissions=MANAGER)
        modlog = palette.fake.add_channel(palette.guild, name="mod-log")
        await palette.reply(await palette.admin(manager, "modlog", channel=modlog))
        language = await palette.admin(manager, "settings", locale="fr")  # the server's language
        await language.wait_for(lambda i: bool(i.responses), timeout=10)
        ix = await palette.fake.invoke_slash(
            manager,
            palette.channel,
            "palette",
            options={"provider": "listenhub"},
            subcommand="provider set",
            locale="de",
        )
        await ix.wait_for(lambda i: i.modal is not None, timeout=5)
        assert ix.modal["title"] == "ListenHub-Schlüssel des Servers"
        custom_id = text_inputs_of(ix.modal)[0]["custom_id"]
        submitted = await palette.fake.submit_modal(
            manager, palette.channel, ix.modal["custom_id"], {custom_id: SERVER_KEY}, locale="de"
        )
        stored = await palette.reply(submitted, timeout=15)
        assert stored.startswith(
            "✅ Aufträge dieses Servers bei ListenHub nutzen jetzt seinen eigenen Schlüssel"
        )
        assert SERVER_KEY not in stored and SERVER_KEY[-4:] in stored
        audit = await palette.modlog_entry(modlog, "Règles modifiées : Clé ListenHub")
        assert "sa propre clé" in repr(audit.embeds) and SERVER_KEY not in repr(audit.embeds)
        listed = await palette.reply(
            await palette.fake.invoke_slash(
                manager, palette.channel, "palette", subcommand="provider list", locale="ja"
            )
        )
        assert listed.startswith("このサーバー独自のプロバイダーキー：") and "**オフ**" in listed
        wrong = await palette.fake.invoke_slash(
            manager,
            palette.channel,
            "palette",
            options={"month": "2026/11"},
            subcommand="usage",
            locale="es-ES",
        )
        assert await palette.reply(wrong) == "Indica el mes como AAAA-MM, p. ej. 2026-11."


def text_inputs_of(modal: Any) -> list[dict[str, Any]]:
    from tests.presentation.conftest import text_inputs

    return text_inputs(modal)
