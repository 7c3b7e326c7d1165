"""EntryRate: at most N mod-log entries per key in a sliding window; the dropped ones are counted."""

from __future__ import annotations

from bot.moderation.modlog import EntryRate, blocked


def test_entries_beyond_the_limit_are_counted_and_reported_on_the_next_shown_one() -> None:
    rate = EntryRate(3, 600.0)
    assert [rate.admit("a", t) for t in (0, 1, 2)] == [0, 0, 0]
    assert [rate.admit("a", t) for t in (3, 4, 599)] == [None, None, None]
    assert rate.admit("b", 5) == 0  # per key
    assert rate.admit("a", 600.5) == 3  # the first entry left the window: shown, with the count
    assert rate.admit("a", 601.5) == 0  # the second left too; nothing more was dropped meanwhile
    assert rate.admit("a", 601.6) is None  # 2, 600.5 and 601.5 are still inside


def test_old_keys_are_forgotten_but_pending_counts_survive_pruning() -> None:
    rate = EntryRate(1, 10.0, max_keys=2)
    rate.admit("dropper", 0)
    assert rate.admit("dropper", 1) is None
    for key, t in (("x", 20), ("y", 40), ("z", 60)):  # each new key pushes out an expired one
        assert rate.admit(key, t) == 0
    assert rate.admit("dropper", 70) == 1  # never pushed out: its count was still to be shown
    rate = EntryRate(1, 10.0, max_keys=2)
    rate.admit("dropper", 0)
    rate.admit("dropper", 1)
    for key in ("x", "y"):  # nothing has expired: the longest-unused key goes, count and all
        rate.admit(key, 2)
    assert rate.admit("dropper", 20) == 0


def test_the_summary_line_names_the_member_and_the_count() -> None:
    entry = blocked(1, user_id=5, channel_id=2, prompt="p", matched="m", recent=9, auto_ban=None, not_shown=7)
    assert str(dict(entry.fields)["Not shown"]) == "7 more blocked prompts from <@5> were not shown"
    one = blocked(1, user_id=5, channel_id=2, prompt="p", matched="m", recent=9, auto_ban=None, not_shown=1)
    assert str(dict(one.fields)["Not shown"]) == "1 more blocked prompt from <@5> was not shown"
    assert "Not shown" not in dict(
        blocked(1, user_id=5, channel_id=2, prompt="p", matched="m", recent=1, auto_ban=None).fields
    )
