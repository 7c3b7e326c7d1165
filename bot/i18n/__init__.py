"""Palette's words in every language it ships: gettext catalogs read with Babel, one API.

How to add a message
--------------------
1. Write the English text where it is shown, with named placeholders (``{count}``, never ``{}``), and the
   values as keywords. Never build a sentence out of translated pieces: one message per sentence.

   - Discord layer, locale at hand: ``t(locale, "Deleted {count} messages.", count=n)``; plurals
     ``tn(locale, "{n} image", "{n} images", n)`` (``n`` is also a placeholder); a short word that could
     mean two things gets a context: ``tp(locale, "button", "Edit")``.
   - Domain code (no locale, no Discord): raise ``SomeError("The prompt is {length} characters.",
     length=n)`` (any :class:`bot.errors.PaletteError`; its first argument is the message) or return
     ``msg("...", **values)`` / ``nmsg(singular, plural, n, **values)``: data that the Discord layer turns
     into words with ``render(locale, text)``. Values may themselves be messages, :class:`Number`,
     :class:`Size` or :class:`Duration` (formatted for the locale with Babel).
   - A constant shown later (a label in a table): ``N_("Model")``, rendered with ``t(locale, value)``.
   - Command, option and choice descriptions: ``locale_str("...")`` (discord.py), translated by
     :class:`bot.presentation.translator.PaletteTranslator`.
   - Web pages (``bot/web/templates``): ``{{ _("Your images") }}``, ``{{ _("Image {id}", id=n) }}``,
     ``{{ ngettext("{n} report", "{n} reports", n) }}`` (Jinja2's i18n extension, see
     :func:`bot.web.app.make_templates`); the web layer's other words are ``N_`` constants in
     ``bot/web/texts.py``.
2. ``python -m bot.i18n update`` adds the new English ids to every catalog in ``bot/i18n/locales/``
   (empty translations) and drops the ones no code uses any more; then translate them in each ``.po``.
3. ``pytest tests/test_i18n.py`` fails while any catalog lacks a translation, a translation's placeholders
   differ from the English ones, or a catalog holds a message the code no longer uses.

How to add a language
---------------------
Copy a catalog to ``bot/i18n/locales/<discord-locale>.po`` (the file name is Discord's locale code, e.g.
``it.po``, ``zh-CN.po``), set its ``Language`` header and translate every ``msgstr``. Nothing else:
the catalogs are found and compiled (in memory, once) when first used, and command localizations are
registered for every catalog found.

English (``en-US``) is the source: the message ids are the English texts. A locale without a catalog
of its own reads English, even when a catalog of its language is shipped (``es-419`` reads English, not
``es-ES``): see :func:`resolve`.
"""

from __future__ import annotations

import functools
import gettext
import io
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from babel import Locale
from babel.messages import mofile, pofile
from babel.numbers import format_decimal, format_percent
from babel.units import format_unit

SOURCE_LOCALE = "en-US"
LOCALE_DIR = Path(__file__).with_name("locales")
DOMAIN = "palette"


def N_(message: str) -> str:
    """Mark a constant for translation (it is translated where it is shown)."""
    return message


# ------------------------------------------------------------------ catalogs


@functools.cache
def shipped_locales() -> tuple[str, ...]:
    """Discord locale codes with a catalog, the source locale first."""
    found = sorted(p.stem for p in LOCALE_DIR.glob("*.po"))
    return (SOURCE_LOCALE, *(code for code in found if code != SOURCE_LOCALE))


def babel_locale(code: str) -> Locale:
    return Locale.parse(code.replace("-", "_"))


def resolve(locale: object) -> str:
    """A Discord locale (``discord.Locale``, ``"pt-BR"``, ``None``) -> the shipped locale to use: that
    locale when a catalog of it is shipped (compared without regard to case), otherwise English.

    No fallback to another locale of the same language (``es-419`` reads English, not ``es-ES``):
    Discord shows an ``es-419`` user the default (English) command descriptions when only ``es-ES``
    localizations are registered, so the replies are in the same language as the commands."""
    code = str(getattr(locale, "value", locale) or "").strip()
    if not code:
        return SOURCE_LOCALE
    shipped = shipped_locales()
    if code in shipped:
        return code
    lowered = {c.lower(): c for c in shipped}
    return lowered.get(code.lower(), SOURCE_LOCALE)


@functools.cache
def translations(locale: str) -> gettext.NullTranslations:
    """The compiled catalog of a shipped locale (``.po`` -> ``.mo`` in memory, once per process)."""
    if locale == SOURCE_LOCALE:
        return gettext.NullTranslations()
    path = LOCALE_DIR / f"{locale}.po"
    with path.open("rb") as source:
        catalog = pofile.read_po(source, locale=babel_locale(locale), domain=DOMAIN)
    compiled = io.BytesIO()
    mofile.write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def preload() -> None:
    """Compile every catalog now (tens of milliseconds each): processes call it in a thread at start-up,
    so that no interaction pays for it on the event loop."""
    for locale in shipped_locales():
        translations(locale)
        babel_locale(locale).plural_form  # noqa: B018 - loads the locale's CLDR data


# ------------------------------------------------------------------ values formatted for a locale


@dataclass(frozen=True)
class Number:
    """A number shown with the locale's separators (``decimals`` fixed digits, else as needed)."""

    value: float
    decimals: int | None = None

    def render(self, locale: str) -> str:
        pattern = (
            None if self.decimals is None else "#,##0." + "0" * self.decimals if self.decimals else "#,##0"
        )
        return format_decimal(self.value, format=pattern, locale=babel_locale(locale))


@dataclass(frozen=True)
class Percent:
    value: float

    def render(self, locale: str) -> str:
        return format_percent(self.value, locale=babel_locale(locale))


@dataclass(frozen=True)
class Size:
    """A size in bytes in binary units written MB/KB, as users expect (25 MiB -> "25 MB", one decimal
    at most: 32715571 -> "31.2 MB"), or a whole number of MB (``whole``)."""

    bytes: float
    whole: bool = False

    def render(self, locale: str) -> str:
        n = self.bytes
        if self.whole:
            return t(locale, "{size} MB", size=Number(round(n / 1_048_576)))
        if n >= 1024 * 1024:
            return t(locale, "{size} MB", size=Number(round(n / 1_048_576, 1)))
        if n >= 1024:
            return t(locale, "{size} KB", size=Number(round(n / 1024, 1)))
        return tn(locale, "{n} byte", "{n} bytes", int(n))


_UNITS = (
    ("w", "week", 604800),
    ("d", "day", 86400),
    ("h", "hour", 3600),
    ("m", "minute", 60),
    ("s", "second", 1),
)


@dataclass(frozen=True)
class Duration:
    """A length of time in its two largest units: ``1d12h`` in English (Palette's own notation, the
    one ``/palette ban`` reads), the locale's short unit names elsewhere (``1 Tg. 12 Std.``)."""

    seconds: float

    def render(self, locale: str) -> str:
        left = round(self.seconds)
        parts: list[tuple[int, str, str]] = []
        for short, unit, size in _UNITS:
            if left >= size:
                parts.append((left // size, short, unit))
                left %= size
        parts = parts[:2] or [(0, "s", "second")]
        if locale == SOURCE_LOCALE:
            return "".join(f"{n}{short}" for n, short, _ in parts)
        where = babel_locale(locale)
        sep = " "
        return sep.join(
            format_unit(n, f"duration-{unit}", length="short", locale=where) for n, _, unit in parts
        )

    def __str__(self) -> str:
        return self.render(SOURCE_LOCALE)


# ------------------------------------------------------------------ messages as data


@dataclass(frozen=True)
class Text:
    """A message not yet put into words: its English id (``plural`` too, for plural messages), optional
    context, and its values. The domain returns these; the Discord layer renders them."""

    id: str
    params: Mapping[str, Any] = field(default_factory=dict)
    plural: str | None = None
    n: int | None = None
    context: str | None = None

    def render(self, locale: str) -> str:
        return _translate(resolve(locale), self.context, self.id, self.plural, self.n, self.params)

    def map_strings(self, fn: Callable[[str], str]) -> Text:
        """The same message with ``fn`` applied to every text value (e.g. removing a secret)."""

        def one(value: Any) -> Any:
            if isinstance(value, str):
                return fn(value)
            if isinstance(value, Text):
                return value.map_strings(fn)
            if isinstance(value, Joined):
                return Joined(tuple(one(v) for v in value.items), value.separator)
            return value

        # The id too: a message passed through as it is (a provider's own words) is its own id. A
        # catalog id is a literal of ours, which ``fn`` (removing a secret) leaves as it is.
        return replace(
            self,
            id=fn(self.id),
            plural=fn(self.plural) if self.plural is not None else None,
            params={k: one(v) for k, v in self.params.items()},
        )

    def __str__(self) -> str:
        return self.render(SOURCE_LOCALE)


@dataclass(frozen=True)
class Joined:
    """Several shown values in a row (lines of a list, items of a field), each rendered in the locale."""

    items: tuple[Any, ...]
    separator: str = ", "

    def render(self, locale: str) -> str:
        return self.separator.join(render(locale, item) for item in self.items)

    def __str__(self) -> str:
        return self.render(SOURCE_LOCALE)


def msg(message: str, /, **params: Any) -> Text:
    return Text(message, params)


def nmsg(singular: str, plural: str, n: int, /, **params: Any) -> Text:
    return Text(singular, params, plural=plural, n=n)


def pmsg(context: str, message: str, /, **params: Any) -> Text:
    return Text(message, params, context=context)


def render(locale: object, value: Any) -> str:
    """Any shown value in ``locale``: messages, locale-formatted numbers, plain text as it is."""
    code = resolve(locale)
    if isinstance(value, Text):
        return value.render(code)
    if isinstance(value, Number | Percent | Size | Duration | Joined):
        return value.render(code)
    if isinstance(value, bool):
        return str(value)
    return "" if value is None else str(value)


def _translate(
    locale: str,
    context: str | None,
    message: str,
    plural: str | None,
    n: int | None,
    params: Mapping[str, Any],
) -> str:
    catalog = translations(locale)
    if plural is not None:
        count = int(n or 0)
        if context is not None:
            template = catalog.npgettext(context, message, plural, count)
        else:
            template = catalog.ngettext(message, plural, count)
        params = {"n": Number(count), **params}  # a count: grouped as the locale groups digits
    elif context is not None:
        template = catalog.pgettext(context, message)
    else:
        template = catalog.gettext(message)
    if not params:  # a message without values is shown as it is (it may be a provider's own words)
        return template
    return template.format_map({k: render(locale, v) for k, v in params.items()})


def placeholders(template: str) -> frozenset[str]:
    """The named placeholders of a message (``{count}`` -> ``count``)."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


# ------------------------------------------------------------------ the API for the Discord layer


def t(locale: object, message: str, /, **params: Any) -> str:
    """``message`` (its English text) in ``locale``, with its placeholders filled."""
    return _translate(resolve(locale), None, message, None, None, params)


def tn(locale: object, singular: str, plural: str, n: int, /, **params: Any) -> str:
    """The plural form of a message for ``n`` in ``locale`` (``{n}`` is filled with ``n``)."""
    return _translate(resolve(locale), None, singular, plural, n, params)


def tp(locale: object, context: str, message: str, /, **params: Any) -> str:
    """A message with a context (a button label, a short word that means several things)."""
    return _translate(resolve(locale), context, message, None, None, params)


def tnp(locale: object, context: str, singular: str, plural: str, n: int, /, **params: Any) -> str:
    return _translate(resolve(locale), context, singular, plural, n, params)


def translate_or_none(locale: object, message: str) -> str | None:
    """The catalog's translation of ``message`` for a shipped non-source locale, else ``None`` (for
    Discord's ``*_localizations``, where a missing entry means "show the English")."""
    code = str(getattr(locale, "value", locale) or "")
    if code == SOURCE_LOCALE or code not in shipped_locales():
        return None
    translated = translations(code).gettext(message)
    return translated if translated != message else None


__all__ = [
    "N_",
    "SOURCE_LOCALE",
    "Duration",
    "Joined",
    "Number",
    "Percent",
    "Size",
    "Text",
    "msg",
    "nmsg",
    "placeholders",
    "pmsg",
    "preload",
    "render",
    "resolve",
    "shipped_locales",
    "t",
    "tn",
    "tnp",
    "tp",
    "translate_or_none",
]
