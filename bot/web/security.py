"""Tokens of the web layer: session cookies, CSRF tokens, OAuth2 state and PKCE, the encrypted access
token. Nothing here is ever logged or shown."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SESSION_COOKIE = "palette_session"
#: A login's browser: the callback is accepted only in the browser that started the login (no login CSRF).
LOGIN_COOKIE = "palette_login"
#: Seconds a login may take between leaving for Discord and coming back.
STATE_TTL = 600.0


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What the database keeps of a cookie or state: its SHA-256 (a leaked table opens no session)."""
    return hashlib.sha256(token.encode()).hexdigest()


def state_key(state: str, browser_nonce: str) -> str:
    """What the database keeps of a login under way: bound to the state and to the browser's nonce."""
    return digest(f"{state}:{browser_nonce}")


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens (False when either is missing)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


def pkce_pair() -> tuple[str, str]:
    """``(verifier, S256 challenge)`` of RFC 7636."""
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class Signer:
    """HMAC signatures of short texts the site puts in its own redirect URLs (notices after a form), so a
    crafted link cannot make the site show words it never said."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"palette web notice:" + secret.encode()).digest()

    def sign(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()[:32]

    def check(self, message: str | None, signature: str | None) -> str | None:
        if not message or not signature:
            return None
        return message if same(self.sign(message), signature) else None


class TokenBox:
    """Encrypts the user's OAuth access token for the database with a key derived from the client
    secret (a new secret makes old sessions log in again)."""

    def __init__(self, client_secret: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"palette web session token").derive(
            client_secret.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def open(self, sealed: str | None) -> str | None:
        if not sealed:
            return None
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except (InvalidToken, ValueError):
            return None


def safe_next(path: str | None) -> str:
    """Where to go after login: a path of this site only (no ``//host``, no scheme, no backslash)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or "\n" in path:
        return "/gallery"
    return path[:512]
