"""The web layer's token helpers on their own."""

from __future__ import annotations

import base64
import hashlib

from bot.web import security


def test_pkce_pair_is_rfc7636_s256() -> None:
    verifier, challenge = security.pkce_pair()
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert challenge == expected
    assert security.pkce_pair()[0] != verifier


def test_token_box_round_trip_and_other_secret() -> None:
    box = security.TokenBox("secret-one")
    sealed = box.seal("discord-access-token")
    assert "discord-access-token" not in sealed
    assert box.open(sealed) == "discord-access-token"
    assert security.TokenBox("secret-two").open(sealed) is None
    assert box.open("garbage") is None and box.open(None) is None


def test_safe_next_keeps_to_this_site() -> None:
    assert security.safe_next("/servers/1?x=2") == "/servers/1?x=2"
    for bad in (None, "", "https://evil.example", "//evil.example", "/\\evil", "/a\nb", "gallery"):
        assert security.safe_next(bad) == "/gallery"


def test_state_key_binds_the_browser() -> None:
    assert security.state_key("s", "n1") != security.state_key("s", "n2")
    assert security.same("a", "a") and not security.same("a", "b") and not security.same(None, None)
