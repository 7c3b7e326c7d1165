"""The prompt filter: obfuscated hits, benign prompts (the Scunthorpe problem), regex safety."""

from __future__ import annotations

import time

import pytest

from bot.moderation.filter import (
    BUILTIN_TERMS,
    FilterEntry,
    FilterTimeout,
    InvalidPattern,
    PromptFilter,
    compile_regex,
    normalize,
    normalize_word,
)

WORDS = ["sex", "ass", "cock", "cunt", "nude*", "porn*", "anal", "gore", "tits"]
FILTER = PromptFilter([FilterEntry("word", w) for w in WORDS])

OBFUSCATED_HITS = [
    "SEX",
    "s3x on the beach",
    "s.e.x",
    "s e x",
    "S E X",
    "ѕех",  # Cyrillic dze, ie, ha
    "s\u200be\u200bx",  # zero-width spaces
    "s\u200de\u200dx",  # zero-width joiners
    "ｓｅｘ",  # full width
    "𝐬𝐞𝐱",  # mathematical bold
    "ⓢⓔⓧ",  # circled
    "seeeexxx",
    "$ex",
    "s-e-x party",
    "s_e_x",
    "s•e•x",
    "hot-sex",
    "(sex)",
    "sex!",
    "a nude woman",
    "nudes",
    "n.u.d.e",
    "ɴᴜᴅᴇ",  # small capitals
    "nu\u0301de",  # combining accent
    "nud3",
    "pornography",
    "p0rn",
    "p o r n",
    "big @ss",
    "a$$",
    "a s s",
    "kick ass",
    "c0ck",
    "c o c k",
    "cvnt",
    "Cünt",
    "4nal",
    "a-n-a-l",
    "g0re",
    "t1ts",
    "tιts",  # Greek iota
]

BENIGN = [
    "Scunthorpe United football ground",
    "assassin's creed cosplay",
    "a cocktail at sunset",
    "the Sussex countryside",
    "Essex coastline",
    "Middlesex cricket",
    "class photo",
    "a grass field",
    "secret passage",
    "bass guitar",
    "a sextant on a ship",
    "a jazz sextet",
    "analysis chart",
    "a banal afternoon",
    "a canal in Venice",
    "title card",
    "a petition",
    "the Titanic",
    "a gorgeous view",
    "cockpit of a plane",
    "a peacock",
    "a shuttlecock",
    "a cockatoo",
    "a cunning fox",
    "an alpine lake",
    "I ran a lap",
    "a massive castle",
    "ambassador",
    "a compass",
    "a blue tit on a branch",
    "a titmouse",
    "Arsenal stadium",
    "a glass of wine",
    "denuded landscape",
    "a harassed cat",
    "s e a shells",
    "unisex clothing",
    "a 3d render of a seal",
    "p.s. make it blue",
    "vitamin a supplements",
]


def test_table_sizes() -> None:
    assert len(OBFUSCATED_HITS) >= 30 and len(BENIGN) >= 30


@pytest.mark.parametrize("prompt", OBFUSCATED_HITS)
def test_obfuscated_hits_are_caught(prompt: str) -> None:
    assert FILTER.check(prompt) is not None, prompt


@pytest.mark.parametrize("prompt", BENIGN)
def test_benign_prompts_pass(prompt: str) -> None:
    hit = FILTER.check(prompt)
    assert hit is None, f"{prompt!r} tripped {hit}"


def test_normalize() -> None:
    assert normalize("Ｓ\u200bÉ\u00adх") == "sex"


def test_word_normalisation_and_refusals() -> None:
    assert normalize_word("  S3X  ") == "sex"
    assert normalize_word("Porn*") == "porn*"
    for bad in ("", "***", "a+b", "x" * 61):
        with pytest.raises(InvalidPattern):
            normalize_word(bad)


def test_nsfw_scope_only_when_asked() -> None:
    f = PromptFilter([FilterEntry("word", "bikini", "sfw"), FilterEntry("word", "gore")])
    assert f.check("a b1kini photo", nsfw_terms=True) is not None
    assert f.check("a b1kini photo", nsfw_terms=False) is None
    assert f.check("gore", nsfw_terms=False) is not None


def test_builtin_list() -> None:
    f = PromptFilter([], builtin=True)
    assert len(f) == len(BUILTIN_TERMS)
    assert f.check("a n@ked person") is not None
    assert f.check("Sussex sunset with a cocktail") is None
    assert PromptFilter([]).check("naked") is None


def test_regex_entries_match_normalised_and_raw() -> None:
    f = PromptFilter([FilterEntry("regex", r"\bbad\s*word\d+")])
    assert f.check("BAD WORD42") is not None
    assert f.check("ｂａｄ word7") is not None
    assert f.check("badword") is None


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(unclosed", "invalid"),
        ("[z-a]", "invalid"),
        ("a{2,1}", "invalid"),
        ("x*", "empty prompt"),
        ("(a+)+$", "too slow"),
        ("(a|aa)+$", "too slow"),
        (r"(\w+\s?)+$", "too slow"),
        ("a" * 201, "at most"),
    ],
)
def test_bad_regexes_are_refused_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidPattern) as caught:
        compile_regex(pattern)
    assert reason in caught.value.message


@pytest.mark.parametrize(
    "pattern",
    [
        r"(\d+)+$",  # digits
        r"(\d|\d)+x",
        r"(\s*)*x",  # spaces, with a required literal after them
        r"(\.|\.)*!",  # punctuation
        r"([.!?]+)+$",
        r"(\W+)+$",
        r"(-+)+>",
        r"(.*,)*z",
    ],
)
def test_vetting_refuses_patterns_catastrophic_on_digits_spaces_and_punctuation(pattern: str) -> None:
    with pytest.raises(InvalidPattern) as caught:
        compile_regex(pattern)
    assert "too slow" in caught.value.message


@pytest.mark.parametrize(
    "pattern",
    [
        r"\bdragon\s*slayer\d*",
        r"https?://\S+",
        r"\d{3}-\d{4}",
        r"k[i1]ll\s+(him|her|them)",
        r"(cat|dog)s?",
        r"foo\.bar",
        r"\b(?:nazi|swastika)s?\b",
    ],
)
def test_vetting_accepts_ordinary_patterns(pattern: str) -> None:
    assert compile_regex(pattern).pattern == pattern  # raises InvalidPattern when refused


def test_a_catastrophic_pattern_that_slipped_in_fails_closed() -> None:
    # Stored before validation existed (or in a hand-edited database): the check runs out of its budget
    # and says so, naming the pattern, instead of reporting "no match" and letting the prompt through.
    f = PromptFilter([FilterEntry("regex", "(a+)+$"), FilterEntry("word", "gore")])
    with pytest.raises(FilterTimeout) as caught:
        f.check("a" * 4000 + "!")
    assert [hit.pattern for hit in caught.value.slow] == ["(a+)+$"]
    # Words are checked first, so a blocked word is still found (and blamed on its author).
    hit = f.check("a" * 4000 + "! gore")
    assert hit is not None and hit.pattern == "gore"
    assert f.check("a lighthouse") is None


def test_one_budget_for_the_whole_check() -> None:
    # Two slow entries: the first one uses up the prompt's budget, the second never gets its own.
    f = PromptFilter([FilterEntry("regex", "(a|a)+$"), FilterEntry("regex", "(b|b)+$")])
    with pytest.raises(FilterTimeout) as caught:
        f.check("a" * 60 + "!" + "b" * 60 + "!")
    assert [hit.pattern for hit in caught.value.slow] == ["(a|a)+$"]
    # No time left at all: even a fast entry is not skipped, the check fails closed.
    with pytest.raises(FilterTimeout):
        PromptFilter([FilterEntry("word", "gore")]).check("a lighthouse", budget=0)


def test_word_patterns_are_fast_on_adversarial_prompts() -> None:
    started = time.perf_counter()
    for prompt in ("s" * 4000, "s " * 2000, "a$" * 2000, "1" * 4000, "ass" * 1300 + "x"):
        FILTER.check(prompt)
    assert time.perf_counter() - started < 1.0
