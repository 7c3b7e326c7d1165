"""Servers as tenants: a server's own provider keys, which routes its jobs may take, and its usage.

* Keys are encrypted at rest with Fernet (``cryptography``), the key coming from ``PALETTE_SECRET_KEY``;
  without that setting the feature is off (:class:`TenantKeysDisabled`). Only this module encrypts and
  decrypts; the storage (:mod:`bot.storage.tenants`) holds tokens, never keys.
* :class:`RouteAccess` says which providers a server's jobs may use: its own keys, and the operator's
  providers only when the server has no key of its own or allowed the fallback
  (``/palette provider fallback on``). The gateway plans with it (queue provider, validation); the
  worker plans with it again and runs the job with the server's :class:`CallCredentials` (decrypted in
  the worker, from the database), so the operator's key is never used for such a server unless allowed.
* A server that pays for all its generations (own keys, no fallback) is not held to the operator's
  per-user ceilings (:meth:`TenantService.self_funded`).

Each process caches a server's :class:`RouteAccess` and credentials; a change bumps the server's
moderation version, and every process drops the server's entry when its moderation service sees it move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from bot.config import PROVIDER_NAMES, Settings
from bot.errors import AuthError, ConfigError, OutOfCredits, PaletteError, ProviderError, ValidationError
from bot.i18n import msg
from bot.providers.base import Balance
from bot.providers.transport import CallCredentials, call_credentials
from bot.singleflight import SingleFlight

if TYPE_CHECKING:
    from bot.generation import Generator
    from bot.storage.tenants import SqlTenantRepository

log = logging.getLogger(__name__)

#: The longest key a provider hands out is far shorter; anything longer is not a key.
MAX_KEY_LENGTH = 512
#: Providers that publish no way to check a key without generating: checked on first use.
UNCHECKABLE = frozenset({"nanobanana_pro"})


# ---------------------------------------------------------------------------------------------- errors


class TenantKeysDisabled(ConfigError):
    """PALETTE_SECRET_KEY is not set (or not a Fernet key): servers cannot bring their own keys."""

    def __init__(self, reason: str = "missing") -> None:
        if reason == "missing":
            super().__init__(
                "Servers can't add their own provider keys on this bot: its operator has not set "
                "PALETTE_SECRET_KEY (needed to store keys encrypted)."
            )
        else:
            super().__init__(
                "Servers can't add their own provider keys on this bot: its PALETTE_SECRET_KEY is not a "
                "valid key (the operator must fix it)."
            )
        self.reason = reason


class TenantKeysUnreadable(PaletteError):
    """The server's stored keys cannot be decrypted here (PALETTE_SECRET_KEY missing or changed). The
    job is not run on the operator's keys instead; nothing is charged."""

    def __init__(self) -> None:
        super().__init__(
            "This server's own provider keys can't be read right now, so nothing was generated and "
            "nothing was charged. Ask this server's admins to check `/palette provider list`."
        )


class ServerKeyRejected(ProviderError):
    """The provider refused the server's own key (401/403, or 402: out of credits)."""

    def __init__(self, provider: str, *, out_of_credits: bool) -> None:
        if out_of_credits:
            message = msg(
                "This server's own {provider} key has no credits left, so nothing was generated and "
                "nothing was charged. Please ask this server's admins (not the bot's owner) to check it "
                "with `/palette provider set`.",
                provider=provider_label(provider),
            )
        else:
            message = msg(
                "This server's own {provider} key was refused, so nothing was generated and nothing was "
                "charged. Please ask this server's admins (not the bot's owner) to check it with "
                "`/palette provider set`.",
                provider=provider_label(provider),
            )
        super().__init__(
            message,
            provider=provider,
            status=402 if out_of_credits else 401,
        )
        self.out_of_credits = out_of_credits


class KeyRefused(ValidationError):
    """``/palette provider set``: the provider did not accept the key (nothing stored)."""


def provider_label(provider: str) -> str:
    return {
        "listenhub": "ListenHub",
        "nanobanana_pro": "nano-banana-pro.net",
        "apimart": "APIMart",
        "mountsea": "Mountsea",
    }.get(provider, provider)


def last_four(key: str) -> str:
    """What may be shown of a key: its last four characters (fewer for absurdly short keys)."""
    key = key.strip()
    return key[-4:] if len(key) >= 12 else key[-2:] if len(key) >= 6 else ""


def clean_key(raw: str) -> str:
    """A key as typed into the modal: trimmed; refused when it cannot be a key (nothing is echoed)."""
    key = raw.strip()
    if key.lower().startswith("bearer "):
        key = key[7:].strip()
    if not key or len(key) > MAX_KEY_LENGTH or any(ch.isspace() or not ch.isprintable() for ch in key):
        raise KeyRefused("That doesn't look like an API key (one line, no spaces). Nothing was stored.")
    return key


# ---------------------------------------------------------------------------------------------- the cipher


class KeyCipher:
    """Fernet with PALETTE_SECRET_KEY: keys in, tokens out (and back)."""

    def __init__(self, secret: SecretStr) -> None:
        try:
            self._fernet = Fernet(secret.get_secret_value().strip().encode())
        except (ValueError, TypeError) as exc:
            raise TenantKeysDisabled("invalid") from exc

    def encrypt(self, key: str) -> str:
        return self._fernet.encrypt(key.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, ValueError, UnicodeError) as exc:
            raise TenantKeysUnreadable() from exc


def cipher_from(settings: Settings) -> KeyCipher | None:
    """The cipher, or None when PALETTE_SECRET_KEY is unset (logged once when it is invalid)."""
    if settings.palette_secret_key is None:
        return None
    try:
        return KeyCipher(settings.palette_secret_key)
    except TenantKeysDisabled:
        log.error("PALETTE_SECRET_KEY is not a valid Fernet key: servers' own provider keys are off")
        return None


# ---------------------------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class RouteAccess:
    """Which providers a server's jobs may use."""

    own: frozenset[str] = frozenset()
    operator_fallback: bool = False

    @property
    def has_own(self) -> bool:
        return bool(self.own)

    @property
    def operator_allowed(self) -> bool:
        return self.operator_fallback or not self.own

    def providers(self, operator: set[str] | frozenset[str]) -> set[str]:
        """The providers a job may be routed to, given those the operator has keys for."""
        return set(self.own) | (set(operator) if self.operator_allowed else set())

    def rank(self, rank: dict[str, int]) -> dict[str, int]:
        """Route order: the server's own keys first (it pays for those), then the operator's order."""
        base = len(rank) + 1
        return {
            name: (0 if name in self.own else base) + rank.get(name, len(rank)) for name in PROVIDER_NAMES
        }


OPERATOR_ONLY = RouteAccess()


@dataclass(frozen=True)
class KeyInfo:
    provider: str
    last_four: str
    updated_at: float


@dataclass(frozen=True)
class KeyCheck:
    """What checking a key found: ``checked`` False for providers that publish no check."""

    checked: bool
    balance: Balance | None = None


# ---------------------------------------------------------------------------------------------- service


class TenantService:
    """A process's view of servers' own keys: reading (cached), checking and storing them."""

    def __init__(
        self,
        repo: SqlTenantRepository,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.clock = clock
        self.cipher = cipher_from(settings)
        self._access: dict[int, RouteAccess] = {}
        self._credentials: dict[int, CallCredentials | None] = {}
        self._version: dict[int, int] = {}
        self._loading_access: SingleFlight[int, RouteAccess] = SingleFlight()
        self._loading_credentials: SingleFlight[int, CallCredentials | None] = SingleFlight()

    @property
    def enabled(self) -> bool:
        return self.cipher is not None

    def require_enabled(self) -> KeyCipher:
        if self.cipher is None:
            raise TenantKeysDisabled("missing" if self.settings.palette_secret_key is None else "invalid")
        return self.cipher

    def invalidate(self, guild_id: int) -> None:
        """Forget the server's cached keys and access (its state changed, here or in another process)."""
        self._version[guild_id] = self._version.get(guild_id, 0) + 1
        self._access.pop(guild_id, None)
        self._credentials.pop(guild_id, None)
        self._loading_access.forget(guild_id)
        self._loading_credentials.forget(guild_id)

    # --- reading ---

    async def access(self, guild_id: int | None) -> RouteAccess:
        """Which providers the server's jobs may use (no secrets; cached)."""
        if guild_id is None:
            return OPERATOR_ONLY
        cached = self._access.get(guild_id)
        if cached is not None:
            return cached
        return await self._loading_access.run(guild_id, lambda: self._load_access(guild_id))

    async def _load_access(self, guild_id: int) -> RouteAccess:
        version = self._version.get(guild_id, 0)
        own, fallback = await self.repo.providers(guild_id)
        access = RouteAccess(own, fallback)
        if self._version.get(guild_id, 0) == version:
            self._access[guild_id] = access
        return access

    async def credentials(self, guild_id: int | None) -> CallCredentials | None:
        """The server's keys, decrypted, for a job's calls (None: the operator's keys, as before).

        Raises :class:`TenantKeysUnreadable` when the server has keys that cannot be decrypted here: its
        jobs are never run on the operator's keys instead."""
        if guild_id is None:
            return None
        if guild_id in self._credentials:
            cached = self._credentials[guild_id]
        else:
            cached = await self._loading_credentials.run(guild_id, lambda: self._load_credentials(guild_id))
        if cached is None:
            return None
        # A copy per job: it records which of the server's keys a provider refused during that job.
        return CallCredentials(cached.keys, cached.operator_fallback, guild_id)

    async def _load_credentials(self, guild_id: int) -> CallCredentials | None:
        version = self._version.get(guild_id, 0)
        stored = await self.repo.keys(guild_id)
        if not stored:
            if self._version.get(guild_id, 0) == version:
                self._credentials[guild_id] = None
            return None
        if self.cipher is None:
            raise TenantKeysUnreadable()
        decrypt = self.cipher.decrypt
        keys = {row.provider: SecretStr(decrypt(row.secret)) for row in stored}
        fallback = await self.repo.fallback(guild_id)
        credentials = CallCredentials(keys, fallback, guild_id)
        if self._version.get(guild_id, 0) == version:
            self._credentials[guild_id] = credentials
        return credentials

    async def self_funded(self, guild_id: int) -> bool:
        """Whether the server pays for all its generations (own keys, no fallback to the operator's)."""
        access = await self.access(guild_id)
        return access.has_own and not access.operator_fallback

    async def list_keys(self, guild_id: int) -> tuple[list[KeyInfo], bool]:
        """The server's keys (last four characters only) and its fallback setting."""
        cipher = self.require_enabled()
        infos = []
        for row in await self.repo.keys(guild_id):
            try:
                shown = last_four(cipher.decrypt(row.secret))
            except TenantKeysUnreadable:
                shown = "????"
            infos.append(KeyInfo(row.provider, shown, row.updated_at))
        return infos, await self.repo.fallback(guild_id)

    # --- changing ---

    async def check_key(self, generator: Generator, provider: str, key: str) -> KeyCheck:
        """Ask the provider whether it accepts ``key``, without generating: its balance endpoint, else
        its cheap access check; providers with neither are checked on first use (``checked`` False).

        Raises :class:`KeyRefused` when the provider refused it (the key is in no error text)."""
        client = generator.client(provider)
        if client is None:
            raise ValidationError(
                "{provider} is not a provider this bot knows.", provider=provider_label(provider)
            )
        credentials = CallCredentials({provider: SecretStr(key)}, operator_fallback=False)
        try:
            with call_credentials(credentials):
                balance = await client.balance()
                if balance is not None:
                    return KeyCheck(True, balance)
                access = await client.check_access()
        except AuthError as exc:
            label = provider_label(provider)
            if exc.status is None:
                raise KeyRefused(
                    "{provider} refused this key. Nothing was stored; check the key and try again.",
                    provider=label,
                ) from None
            raise KeyRefused(
                "{provider} refused this key (HTTP {status}). Nothing was stored; check the key and try "
                "again.",
                provider=label,
                status=exc.status,
            ) from None
        except OutOfCredits:
            raise KeyRefused(
                "{provider} accepted this key, but its account has no credits left. Nothing was stored; "
                "top it up and try again.",
                provider=provider_label(provider),
            ) from None
        except ProviderError as exc:
            raise KeyRefused(
                "{provider} could not check the key right now ({error}). Nothing was stored; try again in "
                "a moment.",
                provider=provider_label(provider),
                error=type(exc).__name__,
            ) from None
        return KeyCheck(bool(access))

    async def set_key(self, guild_id: int, provider: str, key: str, actor_id: int | None) -> None:
        cipher = self.require_enabled()
        token = await asyncio.to_thread(cipher.encrypt, key)
        await self.repo.set_key(guild_id, provider, token, actor_id, self.clock())
        self.invalidate(guild_id)

    async def remove_key(self, guild_id: int, provider: str) -> bool:
        removed = await self.repo.remove_key(guild_id, provider)
        self.invalidate(guild_id)
        return removed

    async def set_fallback(self, guild_id: int, enabled: bool) -> None:
        await self.repo.set_fallback(guild_id, enabled, self.clock())
        self.invalidate(guild_id)

    async def balance(self, generator: Generator, guild_id: int, provider: str) -> Balance | None:
        """The balance of the server's own key at ``provider`` (None: no key, or nothing published)."""
        credentials = await self.credentials(guild_id)
        client = generator.client(provider)
        if credentials is None or not credentials.uses_own(provider) or client is None:
            return None
        with call_credentials(CallCredentials({provider: credentials.keys[provider]}, False, guild_id)):
            return await client.balance()


def rejection(credentials: CallCredentials | None, error: BaseException) -> ServerKeyRejected | None:
    """The user-facing error when ``error`` is the provider refusing the server's own key."""
    if credentials is None or not isinstance(error, AuthError | OutOfCredits):
        return None
    if not credentials.uses_own(error.provider):
        return None
    return ServerKeyRejected(error.provider, out_of_credits=isinstance(error, OutOfCredits))
