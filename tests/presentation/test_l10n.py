"""Localization through the fake Discord: registered command localizations, ephemeral replies in the
user's locale, public posts (result embed, buttons, mod log) in the server's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.i18n import SOURCE_LOCALE, shipped_locales, translate_or_none
from tests.fakes.discord.models import Permission
from tests.presentation.conftest import Palette, running_palette

MANAGER = int(Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES | Permission.MANAGE_GUILD)
TRANSLATED = [code for code in shipped_locales() if code != SOURCE_LOCALE]


def field_names(message: Any) -> list[str]:
    return [f["name"] for f in message.embeds[0]["fields"]]


def labels(message: Any) -> dict[str, str]:
    """Button labels by action (``palette:<action>:<job>``)."""
    out = {}
    for c in message.iter_components():
        custom_id = c.get("custom_id", "")
        if c.get("type") == 2 and custom_id.startswith("palette:"):
            out[custom_id.split(":")[1]] = c.get("label")
    return out


async def ephemeral_text(ix: Any, timeout: float = 10) -> str:
    def text(i: Any) -> str | None:
        for r in i.responses:
            data = r.get("data") or {}
            if data.get("content") and data.get("flags", 0) & 64:
                return str(data["content"])
        for m in i.followups:
            if m.ephemeral and m.content:
                return str(m.content)
        return None

    return await ix.wait_for(text, timeout)


async def test_registered_commands_carry_localizations_within_discords_limits(palette: Palette) -> None:
    assert len(TRANSLATED) == 5
    checked = {"descriptions": 0, "choices": 0}

    def walk(node: dict[str, Any], path: str) -> None:
        # Names stay English: no name localizations for commands, groups or options.
        assert not node.get("name_localizations"), f"{path}: names are not translated"
        localized = node.get("description_localizations") or {}
        assert set(localized) == set(TRANSLATED), f"{path}: {sorted(localized)}"
        for code, text in localized.items():
            assert 1 <= len(text) <= 100, f"{path} [{code}]: {len(text)} characters"
            assert text != node["description"], f"{path} [{code}] is not translated"
        checked["descriptions"] += 1
        for choice in node.get("choices") or []:
            names = choice.get("name_localizations") or {}
            # Every locale whose catalog words it differently ("2K" stays "2K"; languages keep their own
            # names, "Deutsch (de)").
            expected = {code for code in TRANSLATED if translate_or_none(code, choice["name"]) is not None}
            assert set(names) == expected, f"{path}: choice {choice['name']!r}: {sorted(names)}"
            for code, text in names.items():
                assert 1 <= len(text) <= 100, f"{path}: choice {choice['name']!r} [{code}]"
            checked["choices"] += 1
        for option in node.get("options") or []:
            walk(option, f"{path} {option['name']}")

    for name in ("imagine", "edit", "quota", "history", "history-clear", "palette", "style", "compare"):
        command = palette.fake.find_command(name, palette.guild)
        assert command is not None, name
        walk(command, f"/{name}")
    assert checked["descriptions"] > 80 and checked["choices"] > 10
    imagine = palette.fake.find_command("imagine", palette.guild)
    style = next(o for o in imagine["options"] if o["name"] == "style")
    assert style["description_localizations"]["fr"].startswith("Un style enregistré")
    assert imagine["description_localizations"]["de"] == "Bilder aus einem Text-Prompt erzeugen"
    assert imagine["description_localizations"]["ja"] == "テキストのプロンプトから画像を生成"
    resolution = next(o for o in imagine["options"] if o["name"] == "resolution")
    fastest = next(c for c in resolution["choices"] if c["value"] == "1K")
    assert fastest["name_localizations"]["fr"] == "1K (le plus rapide)"
    # The context menu's name is translated, within Discord's 32 characters.
    menu = palette.fake.find_command("Edit with Palette", palette.guild, type=3)
    assert menu is not None
    names = menu.get("name_localizations") or {}
    assert set(names) == set(TRANSLATED)
    assert all(1 <= len(n) <= 32 for n in names.values())
    assert names["de"] == "Mit Palette bearbeiten" and names["pt-BR"] == "Editar com o Palette"


async def test_the_over_the_limit_refusal_is_in_the_users_language(tmp_path: Path) -> None:
    async with running_palette(tmp_path, users=2, user_daily_limit=1, user_hourly_limit=0) as palette:
        expected = {
            "de": "Du hast heute 1 von 1 Bild genutzt.",
            "ja": "今日の 1 枚のうち 1 枚を使いました。",
        }
        for user, locale in ((palette.alice, "de"), (palette.bob, "ja")):
            first = await palette.fake.invoke_slash(
                user, palette.channel, "imagine", options={"prompt": "a lighthouse"}, locale=locale
            )
            await palette.result_message(first)
            second = await palette.fake.invoke_slash(
                user, palette.channel, "imagine", options={"prompt": "another"}, locale=locale
            )
            text = await ephemeral_text(second)
            assert expected[locale] in text, text
            assert "You've used" not in text
        assert palette.listenhub.calls["generate"] == 2  # the refusals cost nothing


async def test_public_posts_follow_the_server_and_ephemeral_replies_the_user(palette: Palette) -> None:
    palette.guild.preferred_locale = "fr"  # the server's Discord language (guild_locale)
    ix = await palette.fake.invoke_slash(
        palette.alice, palette.channel, "imagine", options={"prompt": "un phare"}, locale="pt-BR"
    )
    result = await palette.result_message(ix)
    # Public: the result embed and its buttons are in the server's language, whoever asked.
    assert field_names(result) == ["Modèle", "Taille", "Durée", "Demandé par"]
    assert result.embeds[0]["footer"]["text"].startswith("Palette · tâche ")
    assert labels(result) == {
        "reroll": "Relancer",
        "edit": "Modifier",
        "upscale": "Agrandir",
        "delete": "Supprimer",
        "report": "Signaler",
    }
    # Private: a pt-BR member of that server is answered in Portuguese.
    click = await palette.fake.click_button(
        palette.bob, result, palette.button(result, "delete"), locale="pt-BR"
    )
    assert await ephemeral_text(click) == "Só quem pediu esta imagem (ou um moderador) pode apagá-la."
    quota = await palette.fake.invoke_slash(palette.bob, palette.channel, "quota", locale="pt-BR")
    await quota.wait_for(lambda i: bool(i.original and i.original.embeds), timeout=10)
    assert quota.ephemeral and quota.original.embeds[0]["title"] == "Sua cota no Palette"
    # An English user of that server reads English in private.
    report = await palette.fake.click_button(palette.alice, result, palette.button(result, "report"))
    assert await ephemeral_text(report) == "That's your own image; use Delete instead."
    # Latin American Spanish has no catalog: English, as Discord shows that member the commands in English.
    spanish = await palette.fake.click_button(
        palette.alice, result, palette.button(result, "report"), locale="es-419"
    )
    assert await ephemeral_text(spanish) == "That's your own image; use Delete instead."


async def test_the_servers_language_setting_wins_over_guild_locale(palette: Palette) -> None:
    palette.guild.preferred_locale = "fr"
    manager = palette.member("manager", permissions=MANAGER)
    modlog = palette.fake.add_channel(palette.guild, name="mod-log")
    await palette.reply(await palette.admin(manager, "modlog", channel=modlog))
    answer = await palette.admin(manager, "settings", locale="de")
    await answer.wait_for(lambda i: bool(i.responses), timeout=10)
    assert (await palette.bot.db.moderation.get_policy(palette.guild.id)).locale == "de"

    ix = await palette.imagine(palette.alice, "a lighthouse")
    result = await palette.result_message(ix)
    assert field_names(result)[0] == "Modell" and labels(result)["reroll"] == "Neu würfeln"
    entry = await palette.modlog_entry(modlog, "Generierung")
    assert {f["name"] for f in entry.embeds[0]["fields"]} >= {"Mitglied", "Modell", "Prompt"}
    # The settings page shows the language, in the admin's own language.
    shown = await palette.admin(manager, "settings", locale="default")
    await shown.wait_for(lambda i: bool(i.responses), timeout=10)
    assert (await palette.bot.db.moderation.get_policy(palette.guild.id)).locale is None
    embed = shown.responses[0]["data"]["embeds"][0]
    assert embed["title"] == "Palette settings"
    assert any(f["name"] == "Language" and f["value"] == "the server's language" for f in embed["fields"])
    # Cleared: back to the server's Discord language.
    again = await palette.imagine(palette.alice, "a lighthouse again")
    assert field_names(await palette.result_message(again))[0] == "Modèle"


async def test_model_suggestions_are_described_in_the_typists_language(palette: Palette) -> None:
    ix = await palette.fake.autocomplete(
        palette.alice,
        palette.channel,
        "imagine",
        options=[{"name": "prompt", "value": "x"}, {"name": "model", "value": "", "focused": True}],
        locale="ja",
    )
    await ix.wait_for(lambda i: i.autocomplete_choices is not None, timeout=5)
    names = {c["value"]: c["name"] for c in ix.autocomplete_choices}
    assert names["nano-banana-pro"].endswith("最高品質、文字の描画が最も得意")
    assert all(len(n) <= 100 for n in names.values())


def status_with(ix: Any, text: str) -> Any:
    def ready(i: Any) -> Any:
        m = i.original
        return m if m is not None and text in (m.content or "") else None

    return ix.wait_for(ready, timeout=10)


async def test_cancel_speaks_the_servers_language_in_public_and_the_clickers_in_private(
    tmp_path: Path,
) -> None:
    async with running_palette(tmp_path, role="gateway") as palette:  # no worker: the job stays queued
        palette.guild.preferred_locale = "fr"
        ix = await palette.fake.invoke_slash(
            palette.alice, palette.channel, "imagine", options={"prompt": "un phare"}, locale="ja"
        )
        status = await status_with(ix, "En file d'attente")
        assert labels(status)["cancel"] == "Annuler"
        custom_id = next(c["custom_id"] for c in status.iter_components() if c.get("type") == 2)
        refused = await palette.fake.click_button(palette.bob, status, custom_id, locale="de")
        assert await ephemeral_text(refused) == (
            "Nur die Person, die das angefragt hat (oder ein Moderator), kann es abbrechen."
        )
        click = await palette.fake.click_button(palette.alice, status, custom_id, locale="ja")
        await click.wait_for_response()
        done = await status_with(ix, "Annulé par")
        assert done.content == (
            f"✖️ Annulé par <@{palette.alice.id}>. Rien n'a été facturé (1 image remboursée)."
        )
        assert not labels(done)  # the button is gone with the request


async def test_compare_posts_in_the_servers_language(tmp_path: Path) -> None:
    async with running_palette(tmp_path, role="gateway") as palette:
        palette.guild.preferred_locale = "de"
        ix = await palette.fake.invoke_slash(
            palette.alice, palette.channel, "compare", options={"prompt": "ein Fahrrad"}, locale="fr"
        )
        status = await status_with(ix, "In der Warteschlange: Vergleich von")
        assert labels(status)["cancel"] == "Abbrechen"
        custom_id = next(c["custom_id"] for c in status.iter_components() if c.get("type") == 2)
        click = await palette.fake.click_button(palette.alice, status, custom_id, locale="es-ES")
        answer = await ephemeral_text(click)
        assert answer.startswith("✖️ Cancelado por"), answer
        rebuilt = await status_with(ix, "fehlgeschlagen")
        assert "0 von 2 fertig · 2 fehlgeschlagen (nicht berechnet)." in rebuilt.content
        assert [e["description"] for e in rebuilt.embeds] == ["✖️ Abgebrochen; nicht berechnet."] * 2
        bad = await palette.fake.invoke_slash(
            palette.alice, palette.channel, "compare", options={"prompt": "x", "models": "nano-banana"},
            locale="ja",
        )  # fmt: skip
        expected = "比較する異なるモデルを 2〜4 個、カンマで区切って指定してください。"
        assert await ephemeral_text(bad) == expected


async def test_style_answers_are_in_the_users_language(palette: Palette) -> None:
    async def style(subcommand: str, locale: str, **options: Any) -> str:
        ix = await palette.fake.invoke_slash(
            palette.alice, palette.channel, "style", options=options, subcommand=subcommand, locale=locale
        )
        return await ephemeral_text(ix)

    refused = await style("save", "pt-BR", name="??", template="{prompt}, ink")
    assert refused == "Um nome de estilo tem de 1 a 32 caracteres: letras, dígitos, espaços, `-` e `_`."
    no_slot = await style("save", "fr", name="ink", template="ink")
    assert "`{prompt}`" in no_slot and no_slot.startswith("Le gabarit doit contenir")
    saved = await style("save", "de", name="ink", template="{prompt}, ink", aspect_ratio="16:9")
    assert saved == "Dein Stil **ink** (16:9) wurde gespeichert. Nutze ihn mit `/imagine style:ink`."
    ix = await palette.fake.invoke_slash(
        palette.alice, palette.channel, "style", subcommand="list", locale="ja"
    )
    await ix.wait_for(lambda i: bool(i.responses), timeout=10)
    embed = ix.responses[0]["data"]["embeds"][0]
    assert embed["title"] == "使えるスタイル" and embed["fields"][0]["name"] == "ink · 自分用, 16:9"
    missing = await palette.fake.invoke_slash(
        palette.alice, palette.channel, "imagine", options={"prompt": "x", "style": "nope"}, locale="es-ES"
    )
    assert await ephemeral_text(missing) == (
        "No hay ningún estilo llamado `nope` (ni tuyo ni de este servidor). Consulta `/style list`."
    )


async def test_a_failed_compare_part_is_worded_in_the_servers_language(palette: Palette) -> None:
    """The failure's own message, rendered in the server's language (the database keeps only its
    English), and kept in those words when the other model's part is added afterwards."""
    from tests.fakes.providers.mountsea import MountseaScript

    palette.guild.preferred_locale = "fr"
    palette.mountsea.default = MountseaScript(outcome="failed", polls=1)
    ix = await palette.fake.invoke_slash(
        palette.alice,
        palette.channel,
        "compare",
        options={"prompt": "un bateau", "models": "nano-banana-pro, nano-banana"},
    )

    def final(i: Any) -> Any:
        m = i.original
        return m if m and len(m.files) == 1 and "échecs : 1" in (m.content or "") else None

    message = await ix.wait_for(final, 20)
    assert "Terminés : 1 sur 2 · échecs : 1 (non facturés)." in message.content
    failed = message.embeds[1]["description"]
    assert failed.startswith("❌ ") and failed.endswith(" Non facturé."), failed
    row = await palette.bot.db.fetchone(
        f"SELECT id FROM jobs WHERE status_message_id = {int(message.id)} AND model = 'nano-banana'"
    )
    job = await palette.bot.db.jobs.get_job(int(row[0]))
    assert job is not None and job.status == "failed" and job.error and job.error not in failed
    assert message.embeds[0]["fields"][0]["name"] == "Taille"
    assert labels(message)["reroll"].startswith("Relancer · ")


MODERATOR = int(Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES | Permission.MANAGE_MESSAGES)


async def french_server(palette: Palette) -> tuple[Any, Any, Any, Any]:
    """A server whose Discord language is French, with its mod log: (server, channel, log, manager)."""
    club = palette.fake.add_guild(name="Club de dessin", preferred_locale="fr")
    channel = palette.fake.add_channel(club, name="atelier")
    log = palette.fake.add_channel(club, name="moderation")
    manager = palette.fake.add_user(name="gerant")
    palette.fake.add_member(club, manager, permissions=MANAGER)
    for user in palette.users:
        palette.fake.add_member(club, user)
    assert "Mod log" in await palette.reply(
        await palette.admin(manager, "modlog", where=channel, channel=log)
    )
    return club, channel, log, manager


def reason_in(entry: Any) -> str:
    """The "Reason" field of a French mod-log ban entry."""
    return {f["name"]: f["value"] for f in entry.embeds[0]["fields"]}["Raison"]


async def test_an_auto_ban_reason_is_worded_for_the_member_and_for_the_servers_mod_log(
    palette: Palette,
) -> None:
    _club, channel, log, manager = await french_server(palette)
    await palette.reply(await palette.admin(manager, "blocklist add", where=channel, pattern="gore"))
    auto = await palette.admin(manager, "autoban", where=channel, hits=2, window="10m", duration="1h")
    assert "2 blocked prompts within 10m" in await palette.reply(auto)

    async def imagine(prompt: str) -> str:
        ix = await palette.fake.invoke_slash(
            palette.alice, channel, "imagine", options={"prompt": prompt}, locale="de"
        )
        return await ephemeral_text(ix)

    assert "Reason" not in await imagine("gore")
    banned = await imagine("more gore")
    assert banned.endswith("Grund: 2 blockierte Prompts innerhalb von 10 Min."), banned
    assert "blocked prompts" not in banned
    entry = await palette.modlog_entry(log, "Bannissement de génération")
    assert reason_in(entry) == "2 prompts bloqués en 10\u00a0min"  # Babel's no-break space
    # The next attempt reads the ban back from the database (code and values): German again.
    again = await imagine("a kitten")
    assert again.endswith("Grund: 2 blockierte Prompts innerhalb von 10 Min."), again
    # Stored with its English text too, for readers that know no code.
    ban = await palette.bot.db.moderation.get_ban(_club.id, palette.alice.id)
    assert ban is not None and ban.reason == "2 blocked prompts within 10m"
    assert (ban.reason_code, ban.reason_values) == ("auto_ban", {"count": 2, "window": 600.0})


async def test_a_report_ban_is_worded_per_reader_and_a_moderators_reason_stays_as_typed(
    palette: Palette,
) -> None:
    club, channel, log, manager = await french_server(palette)
    made = await palette.fake.invoke_slash(palette.alice, channel, "imagine", options={"prompt": "a fox"})
    result = await palette.result_message(made)
    job = await palette.job_of(result)
    click = await palette.fake.click_button(palette.bob, result, palette.button(result, "report"))
    assert "moderators have been told" in await palette.reply(click)
    report = await palette.modlog_entry(log, "Résultat signalé")
    mod = palette.fake.add_user(name="moderatrice")
    palette.fake.add_member(club, mod, permissions=MODERATOR)
    banned = await palette.fake.click_button(mod, report, f"palette:mod:ban:{job.id}")
    assert "can't generate here until" in await palette.reply(banned)
    entry = await palette.modlog_entry(log, "Bannissement de génération")
    assert reason_in(entry) == f"résultat signalé (tâche {job.id})"
    refused = await palette.fake.invoke_slash(
        palette.alice, channel, "imagine", options={"prompt": "another fox"}, locale="pt-BR"
    )
    assert (await ephemeral_text(refused)).endswith(f"Motivo: resultado denunciado (tarefa {job.id})")

    # A moderator's own words are shown as typed, in every language.
    typed = "Spam im Kanal — bitte nicht"
    await palette.reply(
        await palette.admin(manager, "ban", where=channel, user=palette.bob, duration="2h", reason=typed)
    )

    def typed_entry() -> Any:
        found = [
            m
            for m in palette.fake.channel_messages(log)
            if m.embeds and "Bannissement" in m.embeds[0]["title"]
        ]
        return found[1] if len(found) > 1 else None

    assert reason_in(await palette.fake.wait_for_state(typed_entry, 10, "the second ban entry")) == typed
    for locale, word in (("fr", "Raison : "), ("ja", "理由：")):
        ix = await palette.fake.invoke_slash(
            palette.bob, channel, "imagine", options={"prompt": "a fox"}, locale=locale
        )
        assert (await ephemeral_text(ix)).endswith(word + typed)
