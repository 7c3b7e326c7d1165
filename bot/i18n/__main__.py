"""``python -m bot.i18n update``: bring every catalog in step with the code (new English ids added with
empty translations, ids no code uses dropped). ``python -m bot.i18n check``: list what is missing."""

from __future__ import annotations

import sys

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

from bot.i18n import LOCALE_DIR, SOURCE_LOCALE, babel_locale, placeholders, shipped_locales
from bot.i18n.extract import scan, unique


def _catalog_key(message: object) -> tuple[str | None, str]:
    mid = message.id  # type: ignore[attr-defined]
    return (message.context, mid[0] if isinstance(mid, tuple) else mid)  # type: ignore[attr-defined]


def update() -> int:
    found, problems = scan()
    used = unique(found)
    for locale in shipped_locales():
        if locale == SOURCE_LOCALE:
            continue
        path = LOCALE_DIR / f"{locale}.po"
        with path.open("rb") as f:
            old = read_po(f, locale=babel_locale(locale))
        # The locale's plural rules come from CLDR; the dates stay (no churn in the files' diffs).
        new = Catalog(
            locale=babel_locale(locale),
            domain="palette",
            project="Palette",
            fuzzy=False,
            creation_date=old.creation_date,
            revision_date=old.revision_date,
        )
        by_key = {_catalog_key(m): m for m in old if m.id}
        for key, m in sorted(used.items(), key=lambda kv: kv[1].where):
            prior = by_key.get(key)
            mid = (m.id, m.plural) if m.plural else m.id
            string = prior.string if prior is not None else (("",) * new.num_plurals if m.plural else "")
            new.add(
                mid,
                string,
                locations=[(m.where.split(":")[0], int(m.where.split(":")[1]))],
                context=m.context,
            )
        with path.open("wb") as f:
            write_po(f, new, width=110, omit_header=False, include_lineno=False)
        print(f"{path.name}: {len(used)} messages")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


def check() -> int:
    found, problems = scan()
    used = unique(found)
    bad = list(problems)
    for locale in shipped_locales()[1:]:
        with (LOCALE_DIR / f"{locale}.po").open("rb") as f:
            catalog = read_po(f, locale=babel_locale(locale))
        have = {_catalog_key(m): m for m in catalog if m.id}
        for key, m in used.items():
            entry = have.get(key)
            strings = entry.string if entry is not None else None
            strings = strings if isinstance(strings, tuple) else (strings,)
            if entry is None or not all(strings):
                bad.append(f"{locale}: untranslated {m.id!r} ({m.where})")
                continue
            source = placeholders(m.id) | (placeholders(m.plural) if m.plural else frozenset())
            for s in strings:
                got = placeholders(s)
                if got - {"n"} != source - {"n"} or (not m.plural and got != source):
                    bad.append(f"{locale}: placeholders of {m.id!r}: {sorted(got)} != {sorted(source)}")
        for key in have.keys() - used.keys():
            bad.append(f"{locale}: unused {key[1]!r}")
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "check"
    sys.exit({"update": update, "check": check}[command]())
