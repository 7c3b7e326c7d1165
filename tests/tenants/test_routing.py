"""Which routes a server may use, the transport's guard, the cipher, and limits above the ceilings."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bot.errors import AuthError, NoRouteAvailable
from bot.generation import GenerationSpec, Generator
from bot.moderation.policy import resolve_limits
from bot.providers import build_providers
from bot.providers.transport import CallCredentials, call_credentials
from bot.storage.moderation import GuildPolicy
from bot.tenants import KeyCipher, RouteAccess, TenantKeysDisabled, TenantKeysUnreadable, last_four
from tests.conftest import make_settings


def generator() -> Generator:
    settings = make_settings(
        listenhub_api_key="operator-lh",
        mountsea_api_key="operator-ms",
        palette_secret_key=Fernet.generate_key().decode(),
    )
    return Generator(settings, build_providers(settings), spare=build_providers(settings, spare=True))


async def test_plans_route_only_where_the_server_may_go() -> None:
    gen = generator()
    try:
        spec = GenerationSpec(model="nano-banana-pro", prompt="a fox")
        # No keys of its own: the operator's routes, as before.
        assert [r.provider for r in gen.plan(spec, RouteAccess()).routes] == ["listenhub", "mountsea"]
        # Its own nano-banana-pro.net key (a provider the operator has no key for), no fallback: only that.
        own = RouteAccess(frozenset({"nanobanana_pro"}))
        assert [r.provider for r in gen.plan(spec, own).routes] == ["nanobanana_pro"]
        # Fallback on: its own first, then the operator's.
        both = RouteAccess(frozenset({"nanobanana_pro"}), operator_fallback=True)
        assert [r.provider for r in gen.plan(spec, both).routes] == [
            "nanobanana_pro",
            "listenhub",
            "mountsea",
        ]
        # A model none of its keys serves, no fallback: refused before anything is charged.
        with pytest.raises(NoRouteAvailable, match="own provider keys"):
            gen.plan(
                GenerationSpec(model="gpt-image-2", prompt="x"), RouteAccess(frozenset({"nanobanana_pro"}))
            )
        assert "nanobanana_pro" in gen.slot_capacity() and "nanobanana_pro" not in gen.capacity()
    finally:
        await gen.aclose()


async def test_the_transport_never_uses_the_operators_key_for_a_server_without_fallback() -> None:
    gen = generator()
    try:
        transport = gen.providers["mountsea"].transport
        with call_credentials(
            CallCredentials({"listenhub": SecretStr("server-lh-key")}, operator_fallback=False)
        ):
            with pytest.raises(AuthError):
                transport._call_headers()
            lh = gen.providers["listenhub"].transport._call_headers()
            assert lh == {"Authorization": "Bearer server-lh-key"}
            assert "[redacted]" in gen.providers["listenhub"].transport._scrub("echo server-lh-key")
        with call_credentials(
            CallCredentials({"listenhub": SecretStr("server-lh-key")}, operator_fallback=True)
        ):
            assert transport._call_headers() is None  # the client's own (operator) header
        assert transport._call_headers() is None
    finally:
        await gen.aclose()


def test_cipher_round_trip_and_failures() -> None:
    secret = SecretStr(Fernet.generate_key().decode())
    cipher = KeyCipher(secret)
    token = cipher.encrypt("sk-live-abcdef123456")
    assert "abcdef" not in token and cipher.decrypt(token) == "sk-live-abcdef123456"
    with pytest.raises(TenantKeysUnreadable):
        KeyCipher(SecretStr(Fernet.generate_key().decode())).decrypt(token)
    with pytest.raises(TenantKeysDisabled):
        KeyCipher(SecretStr("not a fernet key"))
    assert last_four("sk-live-abcdef123456") == "3456"


def test_a_self_funded_server_may_go_above_the_operators_ceilings() -> None:
    settings = make_settings(user_daily_limit=25, user_hourly_limit=10)
    policy = GuildPolicy(1, daily_limit=500, hourly_limit=0)
    capped = resolve_limits(settings, policy)
    assert (capped.daily, capped.hourly) == (25, 10)
    own = resolve_limits(settings, policy, ceilings=False)
    assert (own.daily, own.hourly) == (500, None)
