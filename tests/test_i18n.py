"""The catalogs against the code (every message used is translated everywhere, placeholders intact,
nothing stale), and the i18n API: plurals, fallbacks, Babel formatting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from bot.errors import PaletteError, ValidationError
from bot.i18n import (
    LOCALE_DIR,
    SOURCE_LOCALE,
    Duration,
    Number,
    Size,
    babel_locale,
    msg,
    nmsg,
    placeholders,
    render,
    resolve,
    shipped_locales,
    t,
    tn,
    translations,
)
from bot.i18n.extract import scan, unique
from bot.storage.errors import QuotaExceeded

SHIPPED = ("de", "fr", "es-ES", "pt-BR", "ja")


def catalog(locale: str):
    with (LOCALE_DIR / f"{locale}.po").open("rb") as f:
        return read_po(f, locale=babel_locale(locale))


def entries(locale: str) -> dict[tuple[str | None, str], object]:
    out = {}
    for m in catalog(locale):
        if m.id:
            out[(m.context, m.id[0] if isinstance(m.id, tuple) else m.id)] = m
    return out


@pytest.fixture(scope="module")
def used():
    messages, problems = scan()
    return unique(messages), problems


def test_the_shipped_locales_are_the_catalog_files() -> None:
    assert shipped_locales() == (SOURCE_LOCALE, *sorted(SHIPPED))


def test_every_message_text_in_the_code_is_a_literal_with_named_placeholders(used) -> None:
    messages, problems = used
    assert not problems, "\n".join(problems)
    assert len(messages) > 300  # the scan found the code's messages (commands, errors, embeds, mod log)
    for m in messages.values():
        for text in (m.id, m.plural or ""):
            assert "{}" not in text and "{0" not in text, f"{m.where}: positional placeholder in {text!r}"


@pytest.mark.parametrize("locale", SHIPPED)
def test_every_message_used_is_translated_with_the_same_placeholders(used, locale: str) -> None:
    messages, _ = used
    have = entries(locale)
    missing, wrong = [], []
    for key, m in messages.items():
        entry = have.get(key)
        strings = getattr(entry, "string", None)
        strings = strings if isinstance(strings, tuple) else (strings,)
        if entry is None or not all(strings):
            missing.append(f"{m.where}: {m.id!r}")
            continue
        source = placeholders(m.id) | (placeholders(m.plural) if m.plural else frozenset())
        for s in strings:
            got = placeholders(s)
            # A plural form may leave out the count ("one image" for n == 1); nothing else.
            if (got - {"n"} != source - {"n"}) if m.plural else (got != source):
                wrong.append(f"{m.where}: {m.id!r} -> {s!r}")
    assert not missing, f"{locale} lacks {len(missing)} translations:\n" + "\n".join(missing)
    assert not wrong, f"{locale} has placeholders that differ:\n" + "\n".join(wrong)


@pytest.mark.parametrize("locale", SHIPPED)
def test_no_catalog_keeps_a_message_the_code_no_longer_uses(used, locale: str) -> None:
    messages, _ = used
    stale = sorted(str(k[1]) for k in entries(locale).keys() - messages.keys())
    assert not stale, f"{locale} has messages no code uses (run `python -m bot.i18n update`):\n" + "\n".join(
        stale
    )


def test_the_scan_catches_built_up_texts(tmp_path: Path) -> None:
    """The completeness check cannot be dodged with an f-string or a concatenation."""
    (tmp_path / "bot").mkdir()
    (tmp_path / "cogs").mkdir()
    (tmp_path / "bot" / "x.py").write_text(
        "class PaletteError(Exception): ...\n"
        "class Oops(PaletteError): ...\n"
        "def f(n, locale):\n"
        "    raise Oops(f'{n} things')\n"
        "def g(locale, n):\n"
        "    return t(locale, 'a ' + str(n))\n"
        "def h(locale):\n"
        "    return t(locale, 'Fine {x}.', x=1)\n"
    )
    messages, problems = scan(tmp_path)
    assert [m.id for m in messages] == ["Fine {x}."]
    assert len(problems) == 2 and all("built-up" in p for p in problems)


def test_catalog_files_parse_as_python_format_strings() -> None:
    # Every translation formats with its own placeholders (no stray braces).
    for locale in SHIPPED:
        for m in catalog(locale):
            if not m.id:
                continue
            for s in m.string if isinstance(m.string, tuple) else (m.string,):
                values = {name: "x" for name in placeholders(s)} | {"n": 1}
                s.format(**values)


# ------------------------------------------------------------------ the API


def test_messages_render_per_locale_and_fall_back_to_english() -> None:
    assert t("de", "Deleted.") == "Gelöscht."
    assert t("ja", "Deleted.") == "削除しました。"
    assert t("pt-BR", "Deleted.") == "Apagado."
    assert t("it", "Deleted.") == "Deleted."  # no catalog: English
    assert t(None, "Deleted.") == "Deleted."
    assert resolve("PT-br") == "pt-BR" and resolve("es-es") == "es-ES"  # case does not matter
    assert resolve("de") == "de" and resolve(" ja ") == "ja"
    assert resolve("en-GB") == SOURCE_LOCALE
    assert resolve("zh-CN") == SOURCE_LOCALE
    assert t("de", "A message nobody translated {x}.", x=3) == "A message nobody translated 3."


def test_a_locale_without_its_own_catalog_reads_english_even_if_its_language_is_shipped() -> None:
    """The spec: any locale not shipped falls back to English. Discord shows an es-419 user the English
    command descriptions (only es-ES localizations are registered); the replies match the commands."""
    assert resolve("es-419") == SOURCE_LOCALE
    assert t("es-419", "Deleted.") == "Deleted." != t("es-ES", "Deleted.")
    assert resolve("pt-PT") == SOURCE_LOCALE
    assert resolve("fr-CA") == SOURCE_LOCALE
    assert resolve("en-GB") == SOURCE_LOCALE


def test_plurals_follow_each_languages_rules() -> None:
    one, other = "{n} image", "{n} images"
    assert tn("en-US", one, other, 1) == "1 image" and tn("en-US", one, other, 0) == "0 images"
    assert tn("de", one, other, 1) == "1 Bild" and tn("de", one, other, 2) == "2 Bilder"
    assert tn("fr", one, other, 0) == "0 image"  # French: 0 is singular
    assert tn("fr", one, other, 2) == "2 images"
    assert tn("ja", one, other, 1) == "1 枚" and tn("ja", one, other, 5) == "5 枚"
    assert translations("ja").ngettext(one, other, 7) == "{n} 枚"


def test_values_are_formatted_for_the_locale() -> None:
    assert render("de", Number(1234.5, 1)) == "1.234,5"
    assert render("fr", Number(1234.5, 1)) == "1\u202f234,5"
    assert render("en-US", Size(32715571)) == "31.2 MB"
    assert render("de", Size(32715571)) == "31,2 MB"
    assert render("fr", Size(25 * 1024 * 1024)) == "25 Mo"
    assert render("en-US", Duration(36 * 3600)) == "1d12h"  # Palette's own notation in English
    assert render("de", Duration(36 * 3600)) == "1 Tg. 12 Std."
    assert render("ja", Duration(600)) == "10 分"


def test_errors_carry_their_message_as_data_and_render_in_any_language() -> None:
    error = QuotaExceeded("daily", limit=1, used=1, requested=1)
    assert error.message == "You've used 1 of your 1 image for today."
    assert render("de", error.text) == "Du hast heute 1 von 1 Bild genutzt."
    assert render("ja", error.text) == "今日の 1 枚のうち 1 枚を使いました。"
    nested = ValidationError(
        "An image in that message could not be downloaded. {reason}", reason=msg("Deleted.")
    )
    assert render("fr", nested.text) == "Une image de ce message n'a pas pu être téléchargée. Supprimé."
    # Secrets are removed from the values (and from a message passed through as it is).
    leaky = PaletteError("The provider rejected the request: {text}", text="key=SECRET")
    leaky.scrub(lambda s: s.replace("SECRET", "[redacted]"))
    assert "SECRET" not in leaky.message and "SECRET" not in render("de", leaky.text)
    on = nmsg("{n} entry; built-in list on", "{n} entries; built-in list on", 2)
    assert str(on) == "2 entries; built-in list on" and render("de", on) == "2 Einträge; eingebaute Liste an"


def test_the_i18n_module_says_how_to_add_a_message() -> None:
    doc = ast.get_docstring(
        ast.parse((Path(__file__).parents[1] / "bot" / "i18n" / "__init__.py").read_text())
    )
    assert doc and "How to add a message" in doc and "How to add a language" in doc


def test_counts_in_plural_messages_are_grouped_as_the_locale_groups_digits() -> None:
    assert tn("en-US", "{n} image", "{n} images", 12345) == "12,345 images"
    assert tn("de", "{n} image", "{n} images", 12345) == "12.345 Bilder"
    assert tn("en-US", "{n} image", "{n} images", 1) == "1 image"
