"""Discord as the web layer sees it: OAuth2 as the signed-in user (token exchange, who they are, their
servers) and the REST API as the bot (deleting result messages, a member's roles, the mod log)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx

log = logging.getLogger(__name__)

SCOPES = "identify guilds"
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5


class OAuthError(Exception):
    """Discord refused or failed an OAuth2 call (the message never carries a token or a code)."""

    def __init__(self, kind: str, status: int | None = None) -> None:
        super().__init__(kind if status is None else f"{kind} (HTTP {status})")
        self.kind = kind
        self.status = status


@dataclass(frozen=True, slots=True)
class DiscordUser:
    id: int
    username: str
    #: The language the user set in Discord (``locale``, scope ``identify``), when given.
    locale: str | None = None


class OAuthClient:
    """Discord's OAuth2 endpoints: the authorize URL, ``POST /oauth2/token``, ``GET /users/@me`` and
    ``GET /users/@me/guilds`` with the user's bearer token."""

    def __init__(
        self,
        *,
        api_base: str,
        authorize_url: str,
        client_id: int,
        client_secret: str,
        redirect_uri: str,
        timeout: float = 10.0,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.authorize_url = authorize_url
        self.client_id = client_id
        self._secret = client_secret
        self.redirect_uri = redirect_uri
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    def login_url(self, state: str, challenge: str) -> str:
        query = urlencode(
            {
                "client_id": str(self.client_id),
                "redirect_uri": self.redirect_uri,
                "response_type": "code",
                "scope": SCOPES,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{self.authorize_url}?{query}"

    async def exchange(self, code: str, verifier: str) -> str:
        """The access token for an authorization code (with the PKCE verifier)."""
        try:
            response = await self._http.post(
                f"{self.api_base}/oauth2/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": self.redirect_uri,
                    "code_verifier": verifier,
                },
                auth=(str(self.client_id), self._secret),
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise OAuthError(f"token exchange failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise OAuthError("token exchange refused", response.status_code)
        token = _json(response).get("access_token")
        if not isinstance(token, str) or not token:
            raise OAuthError("token exchange gave no token")
        return token

    async def user(self, token: str) -> DiscordUser:
        data = await self._get("/users/@me", token)
        if not isinstance(data, dict) or "id" not in data:
            raise OAuthError("unexpected /users/@me answer")
        name = data.get("global_name") or data.get("username") or str(data["id"])
        locale = data.get("locale")
        return DiscordUser(int(data["id"]), str(name), str(locale)[:16] if locale else None)

    async def guilds(self, token: str) -> list[dict[str, Any]]:
        """The user's servers, as ``{id, name, owner, permissions}`` (ids as strings)."""
        data = await self._get("/users/@me/guilds", token)
        if not isinstance(data, list):
            raise OAuthError("unexpected /users/@me/guilds answer")
        out = []
        for g in data:
            if isinstance(g, dict) and "id" in g:
                out.append(
                    {
                        "id": str(g["id"]),
                        "name": str(g.get("name") or g["id"]),
                        "owner": bool(g.get("owner")),
                        "permissions": str(g.get("permissions") or "0"),
                    }
                )
        return out

    async def _get(self, path: str, token: str) -> Any:
        try:
            response = await self._http.get(
                f"{self.api_base}{path}", headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise OAuthError(f"{path} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise OAuthError(f"{path} refused", response.status_code)
        return _json(response)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise OAuthError("Discord answered with something that is not JSON") from None


def can_manage(guild: dict[str, Any]) -> bool:
    """Owner, Administrator or Manage Server, from a ``/users/@me/guilds`` entry."""
    try:
        perms = int(guild.get("permissions") or 0)
    except (TypeError, ValueError):
        perms = 0
    return bool(guild.get("owner")) or bool(perms & (ADMINISTRATOR | MANAGE_GUILD))


class BotActions(Protocol):
    """What the site does as the bot (a discord.py client logged in to the REST API)."""

    async def delete_message(self, channel_id: int, message_id: int) -> bool: ...

    async def member_roles(self, guild_id: int, user_id: int) -> set[int] | None: ...

    async def guild_roles(self, guild_id: int) -> list[tuple[int, str]]: ...

    async def user_names(self, user_ids: Iterable[int]) -> dict[int, str]: ...

    async def text_channels(self, guild_id: int) -> list[tuple[int, str]]: ...


class ClientActions:
    """:class:`BotActions` through a discord.py client (the gateway bot or a REST-only client)."""

    #: Names looked up per dashboard page at most (the rest show as ids); remembered for a while.
    MAX_NAME_LOOKUPS = 40
    NAME_TTL = 3600.0

    def __init__(self, client: Any) -> None:
        self.client = client
        self._names: dict[int, tuple[str, float]] = {}

    async def user_names(self, user_ids: Iterable[int]) -> dict[int, str]:
        """Display names of users (for the dashboard), from a cache or ``GET /users/{id}`` as the bot."""
        import discord

        now = time.monotonic()
        names: dict[int, str] = {}
        lookups = 0
        for user_id in dict.fromkeys(user_ids):
            cached = self._names.get(user_id)
            if cached is not None and now - cached[1] < self.NAME_TTL:
                names[user_id] = cached[0]
                continue
            if lookups >= self.MAX_NAME_LOOKUPS:
                continue
            lookups += 1
            try:
                data = await self.client.http.get_user(user_id)
            except discord.HTTPException:
                continue
            name = str(data.get("global_name") or data.get("username") or user_id)
            self._names[user_id] = (name, now)
            names[user_id] = name
        if len(self._names) > 10_000:
            self._names.clear()
        return names

    async def delete_message(self, channel_id: int, message_id: int) -> bool:
        import discord

        try:
            await self.client.http.delete_message(
                channel_id, message_id, reason="Deleted on Palette's website"
            )
            return True
        except discord.NotFound:
            return False
        except discord.HTTPException as exc:
            log.warning("could not delete message %s in %s (HTTP %s)", message_id, channel_id, exc.status)
            return False

    async def member_roles(self, guild_id: int, user_id: int) -> set[int] | None:
        import discord

        try:
            data = await self.client.http.get_member(guild_id, user_id)
        except discord.HTTPException:
            return None
        return {int(r) for r in data.get("roles", [])}

    async def guild_roles(self, guild_id: int) -> list[tuple[int, str]]:
        """The server's roles but @everyone and managed (bot) roles, as ``(id, name)``."""
        import discord

        try:
            data = await self.client.http.get_roles(guild_id)
        except discord.HTTPException:
            return []
        return [
            (int(r["id"]), str(r.get("name", "")))
            for r in data
            if int(r["id"]) != guild_id and not r.get("managed")
        ]

    async def text_channels(self, guild_id: int) -> list[tuple[int, str]]:
        """The server's text channels, as ``(id, name)``."""
        import discord

        try:
            data = await self.client.http.get_all_guild_channels(guild_id)
        except discord.HTTPException:
            return []
        return [(int(c["id"]), str(c.get("name", ""))) for c in data if c.get("type") in (0, 5)]
