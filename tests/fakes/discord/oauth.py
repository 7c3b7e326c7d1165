"""The fake's OAuth2 authorization-code flow (with PKCE), as Palette's web gallery uses it.

``fake.oauth.approve_as(user)`` picks who the next visits to ``/oauth2/authorize`` log in as (a test's
stand-in for someone clicking "Authorize" on Discord). ``POST /api/v10/oauth2/token`` checks the code,
the redirect URI, the PKCE verifier (S256) and the client secret; ``GET /users/@me`` and
``GET /users/@me/guilds`` answer with a Bearer token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from . import errors
from .permissions import base_permissions

if TYPE_CHECKING:
    from .models import User
    from .server import FakeDiscord

CODE_TTL = 600.0


@dataclass
class _Grant:
    user_id: int
    redirect_uri: str
    challenge: str
    scopes: tuple[str, ...]
    expires_at: float


@dataclass
class FakeOAuth:
    fake: FakeDiscord
    client_secret: str = "fake-client-secret"
    #: Who approves the next logins (None: the authorize page refuses, as if the user clicked Cancel).
    user: User | None = None
    codes: dict[str, _Grant] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    #: Token exchanges refused, with why (for tests).
    refusals: list[str] = field(default_factory=list)

    def approve_as(self, user: User | None) -> None:
        self.user = user

    def revoke(self, user: User) -> None:
        """Discord forgets every token of ``user`` (they removed the app from their authorized apps)."""
        self.tokens = {t: u for t, u in self.tokens.items() if u != user.id}

    @property
    def authorize_url(self) -> str:
        return f"{self.fake.base_url}/oauth2/authorize"

    # ------------------------------------------------------------------ routes

    def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        problems = []
        if q.get("client_id") != str(self.fake.application_id):
            problems.append("unknown client_id")
        if q.get("response_type") != "code":
            problems.append("response_type must be code")
        scopes = tuple((q.get("scope") or "").split())
        if not {"identify", "guilds"} <= set(scopes):
            problems.append("scope must include identify and guilds")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            problems.append("PKCE S256 challenge required")
        redirect_uri = q.get("redirect_uri") or ""
        if not redirect_uri.startswith(("http://", "https://")):
            problems.append("bad redirect_uri")
        if problems:
            return web.Response(status=400, text="Invalid OAuth2 request: " + "; ".join(problems))
        state = q.get("state")
        sep = "&" if "?" in redirect_uri else "?"
        if self.user is None:
            query = {"error": "access_denied", **({"state": state} if state else {})}
            raise web.HTTPFound(f"{redirect_uri}{sep}{urlencode(query)}")
        code = secrets.token_urlsafe(24)
        self.codes[code] = _Grant(
            self.user.id, redirect_uri, q["code_challenge"], scopes, time.time() + CODE_TTL
        )
        query = {"code": code, **({"state": state} if state else {})}
        raise web.HTTPFound(f"{redirect_uri}{sep}{urlencode(query)}")

    def token(self, request: web.Request, form: Any, authorization: str | None) -> web.Response:
        from .rest import json_response

        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.startswith("Basic "):
            try:
                raw = base64.b64decode(authorization[6:]).decode()
            except (binascii.Error, UnicodeDecodeError):
                raw = ""
            client_id, _, secret = raw.partition(":")
        grant = self.codes.pop(str(form.get("code") or ""), None)
        why = None
        if str(client_id) != str(self.fake.application_id) or secret != self.client_secret:
            why = "invalid_client"
        elif form.get("grant_type") != "authorization_code":
            why = "unsupported_grant_type"
        elif grant is None or grant.expires_at < time.time():
            why = "invalid_grant: code"
        elif form.get("redirect_uri") != grant.redirect_uri:
            why = "invalid_grant: redirect_uri"
        else:
            verifier = str(form.get("code_verifier") or "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
            if challenge.decode() != grant.challenge:
                why = "invalid_grant: code_verifier"
        if why is not None:
            self.refusals.append(why)
            status = 401 if why == "invalid_client" else 400
            return json_response({"error": why.split(":")[0]}, status)
        assert grant is not None
        token = secrets.token_urlsafe(30)
        self.tokens[token] = grant.user_id
        return json_response(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 604800,
                "refresh_token": secrets.token_urlsafe(30),
                "scope": " ".join(grant.scopes),
            }
        )

    def bearer_user(self, authorization: str) -> User:
        token = authorization.removeprefix("Bearer ").strip()
        user_id = self.tokens.get(token)
        if user_id is None or user_id not in self.fake.users:
            raise errors.unauthorized()
        return self.fake.users[user_id]

    def guilds_payload(self, user: User) -> list[dict[str, Any]]:
        out = []
        for guild in self.fake.guilds.values():
            member = guild.members.get(user.id)
            if member is None:
                continue
            out.append(
                {
                    "id": str(guild.id),
                    "name": guild.name,
                    "icon": None,
                    "owner": guild.owner_id == user.id,
                    "permissions": str(base_permissions(guild, member)),
                    "features": [],
                }
            )
        return out
