"""Ban reasons: Palette's own are a code and values worded per reader, a moderator's stay as typed."""

from __future__ import annotations

import dataclasses

from bot.i18n import Text, render, shipped_locales
from bot.moderation import bans
from bot.storage import Ban


def auto(count: int = 3, window: float = 600.0) -> Ban:
    return bans.make_ban(
        1, 2, duration=3600.0, reason=bans.auto_ban_reason(count, window), banned_by=None, now=100.0,
        automatic=True,
    )  # fmt: skip


def test_palettes_own_reasons_are_stored_as_codes_with_their_english() -> None:
    ban = auto()
    assert (ban.reason_code, ban.reason_values) == ("auto_ban", {"count": 3, "window": 600.0})
    assert ban.reason == "3 blocked prompts within 10m"
    assert auto(1).reason == "1 blocked prompt within 10m"  # singular
    report = bans.make_ban(1, 2, duration=None, reason=bans.report_reason(42), banned_by=9, now=1.0)
    assert (report.reason, report.reason_code, report.reason_values) == (
        "reported result (job 42)", "report", {"job": 42},
    )  # fmt: skip
    board = bans.make_ban(1, 2, duration=None, reason=bans.dashboard_report_reason(42), banned_by=9, now=1.0)
    assert board.reason == "reported result (job 42), from the dashboard"
    assert board.reason_code == "dashboard_report"


def test_a_coded_reason_is_a_message_rendered_in_each_language() -> None:
    reason = bans.ban_reason(auto(2, 90061.0))
    assert isinstance(reason, Text) and reason.id == "{n} blocked prompt within {window}"
    assert render("en-US", reason) == "2 blocked prompts within 1d1h"
    assert render("de", reason) == "2 blockierte Prompts innerhalb von 1 Tg. 1 Std."
    assert render("pt-BR", reason).startswith("2 prompts bloqueados em ")
    assert render("ja", reason).startswith("1 日 1 時間以内にプロンプトが 2 回ブロックされた")
    worded = {render(code, reason) for code in shipped_locales()}
    assert len(worded) == len(shipped_locales())  # a wording of its own in every shipped language
    report = bans.ban_reason(
        bans.make_ban(1, 2, duration=None, reason=bans.report_reason(7), banned_by=3, now=1)
    )
    assert render("fr", report) == "résultat signalé (tâche 7)"
    assert render("es-ES", report) == "resultado denunciado (trabajo 7)"


def test_typed_old_and_unreadable_reasons_are_shown_as_stored() -> None:
    typed = bans.make_ban(1, 2, duration=None, reason="Spam — {not a placeholder}", banned_by=3, now=1.0)
    assert typed.reason_code is None and bans.ban_reason(typed) == "Spam — {not a placeholder}"
    assert render("de", bans.banned_message(typed)).endswith("Grund: Spam — {not a placeholder}")
    # Stored before reasons had codes, by a later version with a code this one does not know, or with
    # values it cannot read: the English text.
    old = Ban(1, 2, None, "3 blocked prompts within 10m", None, True, 1.0)
    later = dataclasses.replace(old, reason_code="appeal_denied", reason_values={"case": 5})
    broken = dataclasses.replace(old, reason_code="auto_ban", reason_values={"count": "many"})
    missing = dataclasses.replace(old, reason_code="report", reason_values={})
    for ban in (old, later, broken, missing):
        assert bans.ban_reason(ban) == "3 blocked prompts within 10m"
    assert bans.ban_reason(Ban(1, 2, None, None, 3, False, 1.0)) is None
    assert bans.ban_reason(Ban(1, 2, None, "", 3, False, 1.0)) is None
    no_reason = render("fr", bans.banned_message(Ban(1, 2, None, None, 3, False, 1.0)))
    assert "Raison" not in no_reason


def test_the_banned_message_carries_the_reason_in_the_readers_language() -> None:
    ban = auto()
    assert render("de", bans.banned_message(ban)).endswith(
        "Grund: 3 blockierte Prompts innerhalb von 10 Min."
    )
    assert render("en-US", bans.banned_message(ban)).endswith("Reason: 3 blocked prompts within 10m")
    permanent = dataclasses.replace(ban, expires_at=None)
    assert "Raison : 3 prompts bloqués en 10" in render("fr", bans.banned_message(permanent))
