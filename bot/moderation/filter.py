"""The prompt filter: a server's blocked words and regular expressions, robust to obfuscation.

Words
-----
A prompt is first normalised (:func:`normalize`): Unicode NFKC (full-width, circled and mathematical
letters become plain ones), case folding, zero-width and other invisible format characters removed,
accents stripped, and look-alike letters from other scripts (Cyrillic ``а``, Greek ``ο`` ...) mapped to
their Latin twins. Leetspeak is *not* rewritten in the text (``1`` may be ``i`` or ``l``); instead each
letter of a blocked word becomes a class of its spellings (``s`` = ``[s5$§]``). A word then matches:

* run together, each letter possibly repeated and split by punctuation (``s3x``, ``s.e.x``, ``sexxx``,
  ``s_e_x``), or
* letter-spaced, one character per letter with separators between every letter (``s e x``).

Both forms must stand on their own: no letter or digit directly before or after (a ``*`` at the end of
a word lifts the right-hand side: ``porn*`` also blocks ``pornographic``). That is what keeps
"Scunthorpe", "cocktail", "assassin's creed" and "Sussex" clean — the blocked word is inside a longer
one. Whitespace is only accepted between *single* letters, so ``an alpine lake`` never reads as
``anal``.

Regular expressions
-------------------
Matched case-insensitively against the normalised prompt (and the raw, case-folded prompt), with the
third-party ``regex`` engine rather than :mod:`re` because it can bound a match with ``timeout=``.
We chose bounding time over forbidding constructs: there is no reliable syntactic test for
catastrophic backtracking (``(a+)+$``, ``(a|aa)+$``, ``(\\w+\\s?)+$`` all look innocent), while a
timeout catches every case. So:

* when a pattern is added it must compile (the engine's error is shown), be at most
  :data:`MAX_PATTERN_LENGTH` characters, and survive adversarial probes (:func:`_probes`: long runs of
  letters, digits, spaces, punctuation and the pattern's own characters, each followed by a mismatch
  and the pattern's literal text, which defeats the engine's required-literal shortcut), each within
  :data:`PROBE_TIMEOUT` seconds and all within :data:`VET_BUDGET` — patterns like ``(a+)+$``,
  ``(\\d+)+$``, ``(\\s*)*x`` or ``(\\.|\\.)*!`` are refused with the reason;
* checking a prompt has one time budget for the whole blocklist (:data:`CHECK_BUDGET`, every entry and
  both texts together), so 500 entries cannot add up to seconds. When it runs out the check *fails
  closed*: :class:`FilterTimeout` names the slow entries, and the caller refuses the prompt (without
  blaming its author) and tells the server's moderators. A slow pattern must not let prompts through.
  Cheap word entries run before regular expressions, so a blocked word is still found first.

The checks are CPU work: the moderation service runs them on its own small thread pool, never on the
event loop and never in the default executor that image work and DNS share.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import regex

from bot.errors import ValidationError
from bot.i18n import Text, msg

log = logging.getLogger(__name__)

MAX_PATTERN_LENGTH = 200
MAX_WORD_LENGTH = 60
#: Seconds for checking one prompt against every entry of a blocklist (both texts); then fail closed.
CHECK_BUDGET = 0.2
#: Seconds a new regular expression may take on any one adversarial probe (of a long prompt's length) ...
PROBE_TIMEOUT = 0.1
#: ... and on all of them together.
VET_BUDGET = 1.0
#: Probe length: catastrophic patterns are slow well before this; merely quadratic ones (``\\w+ing``) pass.
PROBE_LENGTH = 2000
#: Characters of the adversarial probes besides the pattern's own: letters, digits, spaces, punctuation.
PROBE_RUNS = "a1 .,!-_x0\t"
#: What ends a probe's run (a mismatch for most patterns).
PROBE_ENDS = ("!", "x", "\x00")
#: Entries named as slow when the budget runs out: the one running then, and others that took this share.
SLOW_SHARE = 0.2

# Look-alike letters from other scripts that NFKC leaves alone (lower case; text is case-folded first).
CONFUSABLES: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "ԛ": "q", "ԝ": "w", "ո": "n", "ս": "u", "һ": "h", "ӏ": "l", "ɡ": "g", "ɑ": "a",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ς": "s", "μ": "u",
    # Latin small capitals and others
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j",
    "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t",
    "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z", "ı": "i", "ł": "l", "ø": "o", "đ": "d",
}  # fmt: skip

# How each letter may be spelled (besides itself).
LEET: dict[str, str] = {
    "a": "4@^", "b": "8", "c": "(<¢", "e": "3€&", "g": "96", "h": "#", "i": "1!|l", "l": "1|i",
    "o": "0°", "s": "5$§", "t": "7+†", "u": "vµ", "z": "2", "x": "×",
}  # fmt: skip
# What a term written in leetspeak means (for normalising the blocked words themselves).
DELEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "8": "b"}

# Characters that may split a word's letters (never a leet spelling, so the two can't be confused).
_SEP_NO_SPACE = r"[._\-*~,:;/\\'\"`=·•]"
_SEP = r"[\s._\-*~,:;/\\'\"`=·•]"
# A letter-like neighbour: a letter or digit, or a leet character that is rarely punctuation.
_LETTERLIKE = r"(?:[^\W_]|[@|])"

BUILTIN_TERMS: tuple[str, ...] = (
    "nude*", "naked", "nudity", "porn*", "sex", "sexy", "nsfw", "hentai", "xxx", "topless",
    "genitals", "penis", "vagina", "boobs", "nipples", "blowjob", "orgasm", "erotic*", "fetish*",
    "lingerie", "loli*", "shota*", "gore", "beheading", "dismembered",
)  # fmt: skip


class InvalidPattern(ValidationError):
    """A blocked word or regular expression that cannot be used (the message says why)."""


class FilterTimeout(Exception):
    """Checking a prompt ran out of its time budget (fail closed: the caller refuses the prompt).

    ``slow`` names the entries to blame: the one running when time ran out first, then others that
    took a large share of the budget."""

    def __init__(self, slow: Sequence[FilterHit]) -> None:
        super().__init__("the blocklist check ran out of time")
        self.slow = tuple(slow)


@dataclass(frozen=True)
class FilterEntry:
    kind: str  # "word" | "regex"
    pattern: str
    scope: str = "all"  # "all" | "sfw" (the NSFW term list)


@dataclass(frozen=True)
class FilterHit:
    """Which entry refused a prompt."""

    kind: str
    pattern: str
    scope: str
    builtin: bool = False

    def describe(self) -> str:
        """In English, as recorded with the blocked prompt."""
        return str(self.describe_text())

    def describe_text(self) -> Text:
        if self.builtin:
            return msg("{pattern} (built-in list)", pattern=self.pattern)
        if self.kind == "regex":
            return msg("{pattern} (regex)", pattern=self.pattern)
        return msg("{pattern} (word)", pattern=self.pattern)


# ------------------------------------------------------------------ normalisation


def normalize(text: str) -> str:
    """NFKC, case fold, drop invisible format characters and accents, map look-alike letters."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        category = unicodedata.category(ch)
        if category in ("Cf", "Mn", "Me"):  # zero-width, soft hyphen, bidi marks; combining accents
            continue
        out.append(CONFUSABLES.get(ch, ch))
    return unicodedata.normalize("NFC", "".join(out))


def normalize_word(term: str) -> str:
    """A blocked word as stored: normalised, leetspeak undone, single spaces; ``*`` only at the end.
    Raises :class:`InvalidPattern`."""
    raw = term.strip()
    prefix = raw.endswith("*")
    core = normalize(raw.rstrip("*").strip())
    core = "".join(DELEET.get(ch, ch) for ch in core)
    core = " ".join(core.split())
    if not core:
        raise InvalidPattern("A blocked word needs at least one letter.")
    if len(core) > MAX_WORD_LENGTH:
        raise InvalidPattern("Blocked words are at most {max} characters.", max=MAX_WORD_LENGTH)
    if any(not (ch.isalpha() or ch == " ") for ch in core):
        raise InvalidPattern(
            "A blocked word may contain letters and spaces only (and `*` at the end to block every word "
            "starting with it). Use a regular expression for anything else."
        )
    return core + ("*" if prefix else "")


def _letter_class(ch: str) -> str:
    spellings = ch + LEET.get(ch, "")
    return "[" + "".join(regex.escape(c) for c in spellings) + "]"


def word_pattern(term: str) -> str:
    """The regular expression (for :func:`normalize`\\ d text) that finds ``term`` and its disguises."""
    prefix = term.endswith("*")
    words = term.rstrip("*").split()
    joined_parts = []
    spaced_parts = []
    for word in words:
        collapsed = [ch for i, ch in enumerate(word) if i == 0 or word[i - 1] != ch]
        joined_parts.append(f"{_SEP_NO_SPACE}*".join(f"{_letter_class(ch)}+" for ch in collapsed))
        spaced_parts.append(f"{_SEP}+".join(_letter_class(ch) for ch in word))
    joined = f"{_SEP}*".join(joined_parts)
    spaced = f"{_SEP}+".join(spaced_parts)
    body = f"(?:{joined}|{spaced})"
    before = f"(?<!{_LETTERLIKE})"
    after = "" if prefix else f"(?!{_LETTERLIKE})"
    return before + body + after


def compile_regex(pattern: str) -> regex.Pattern[str]:
    """Compile and vet a server's regular expression. Raises :class:`InvalidPattern` with the reason."""
    if not pattern.strip():
        raise InvalidPattern("The regular expression is empty.")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidPattern("Regular expressions are at most {max} characters.", max=MAX_PATTERN_LENGTH)
    try:
        compiled = regex.compile(pattern, regex.IGNORECASE | regex.V0)
    except regex.error as exc:
        raise InvalidPattern("That regular expression is invalid: {reason}.", reason=str(exc)) from exc
    except (ValueError, OverflowError, RecursionError) as exc:
        raise InvalidPattern("That regular expression is invalid: {reason}.", reason=str(exc)) from exc
    if compiled.search("") is not None:
        raise InvalidPattern("That regular expression matches an empty prompt, so it would block everything.")
    too_slow = InvalidPattern(
        "That regular expression is too slow on long prompts (catastrophic backtracking, e.g. a repeated "
        "group inside a repetition like `(a+)+` or `(\\d+)+`). Simplify it."
    )
    deadline = time.monotonic() + VET_BUDGET
    for probe in _probes(pattern):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise too_slow
        try:
            compiled.search(probe, timeout=min(PROBE_TIMEOUT, remaining))
        except TimeoutError as exc:
            raise too_slow from exc
    return compiled


_SYNTAX = regex.compile(r"\\[pPN]\{[^}]*\}|\\(.)|[()\[\]{}|*+?^$.]", regex.DOTALL)


def _literal_text(pattern: str) -> str:
    """The pattern's literal characters: syntax and classes (``\\d``, ``\\p{L}``) dropped, ``\\.`` kept as
    ``.`` — enough for the probes to contain what a pattern requires, like ``dragon`` or ``!``."""

    def keep(match: regex.Match[str]) -> str:
        escaped = match.group(1)
        return escaped if escaped is not None and not escaped.isalnum() else ""

    return _SYNTAX.sub(keep, pattern)


def _probes(pattern: str) -> Iterable[str]:
    """Adversarial inputs: long runs of letters, digits, spaces, punctuation and the pattern's own
    characters, each ended by a mismatch and then the pattern's literal text, forwards and backwards (so
    an engine shortcut on a required literal, like the ``x`` of ``(\\s*)*x``, does not skip the
    backtracking, and the literal does not simply end the search with an early match)."""
    own = [c for c in dict.fromkeys(pattern.lower()) if c.isprintable() and c != "\\"][:12]
    literal = _literal_text(pattern)[:60]
    tails = tuple(dict.fromkeys(("", literal, literal[::-1])))
    for run in dict.fromkeys([*PROBE_RUNS, *own]):
        for end in PROBE_ENDS:
            if end != run:
                for tail in tails:
                    yield run * PROBE_LENGTH + end + tail
        for end in ("!", " "):
            yield (run + " ") * (PROBE_LENGTH // 2) + end + literal[::-1]
    yield "".join(own) * (PROBE_LENGTH // max(1, len(own))) + "!" + literal[::-1]
    yield "ab" * (PROBE_LENGTH // 2) + "\x00"
    yield "1 " * (PROBE_LENGTH // 2) + "x" + literal[::-1]
    yield "a." * (PROBE_LENGTH // 2) + "!" + literal[::-1]


# ------------------------------------------------------------------ the filter


@dataclass(frozen=True)
class _Compiled:
    hit: FilterHit
    pattern: regex.Pattern[str]
    raw_too: bool  # regexes also see the raw (case-folded) prompt


class PromptFilter:
    """A compiled set of blocked words and regexes. Build once per blocklist version and reuse."""

    def __init__(self, entries: Sequence[FilterEntry], *, builtin: bool = False) -> None:
        compiled: list[_Compiled] = []
        for entry in entries:
            try:
                if entry.kind == "regex":
                    pattern = regex.compile(entry.pattern, regex.IGNORECASE | regex.V0)
                    compiled.append(_Compiled(FilterHit("regex", entry.pattern, entry.scope), pattern, True))
                else:
                    term = normalize_word(entry.pattern)
                    pattern = regex.compile(word_pattern(term), regex.V0)
                    compiled.append(_Compiled(FilterHit("word", entry.pattern, entry.scope), pattern, False))
            except (regex.error, InvalidPattern) as exc:  # stored before a rule changed: skip, say so
                log.warning("skipping unusable blocklist entry %r: %s", entry.pattern, exc)
        if builtin:
            for term in BUILTIN_TERMS:
                pattern = regex.compile(word_pattern(normalize_word(term)), regex.V0)
                compiled.append(_Compiled(FilterHit("word", term, "sfw", builtin=True), pattern, False))
        # Words first: they are fast, so a blocked word is found even if a regex eats the budget.
        self._compiled = tuple(sorted(compiled, key=lambda c: c.hit.kind == "regex"))

    def __len__(self) -> int:
        return len(self._compiled)

    def check(
        self, prompt: str, *, nsfw_terms: bool = True, budget: float = CHECK_BUDGET
    ) -> FilterHit | None:
        """The first entry the prompt trips, or None. ``nsfw_terms=False`` skips the NSFW term list
        (scope ``sfw`` and the built-in list). Raises :class:`FilterTimeout` when the whole check takes
        longer than ``budget`` seconds (CPU work: call it in a worker thread)."""
        if not self._compiled:
            return None
        normalized = normalize(prompt)
        folded = prompt.casefold()
        deadline = time.monotonic() + budget
        spent: list[tuple[float, FilterHit]] = []
        for item in self._compiled:
            if item.hit.scope == "sfw" and not nsfw_terms:
                continue
            texts = (normalized, folded) if item.raw_too and folded != normalized else (normalized,)
            started = time.monotonic()
            for text in texts:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    if item.pattern.search(text, timeout=remaining) is not None:
                        return item.hit
                except TimeoutError:
                    spent.append((time.monotonic() - started, item.hit))
                    raise FilterTimeout(_slowest(spent, item.hit, budget)) from None
            spent.append((time.monotonic() - started, item.hit))
        return None


def _slowest(spent: Sequence[tuple[float, FilterHit]], last: FilterHit, budget: float) -> list[FilterHit]:
    """The entry that ran out of time, then the ones that took a large share of the budget."""
    heavy = [hit for took, hit in sorted(spent, key=lambda t: -t[0]) if took >= budget * SLOW_SHARE]
    return list(dict.fromkeys([last, *heavy]))[:5]
