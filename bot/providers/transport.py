"""The one HTTP transport every provider adapter uses.

- One :class:`httpx.AsyncClient` per provider (base URL, bearer key, timeouts, connection pool), reused by
  every job: never a client per request.
- Retries with jittered exponential backoff (tenacity) that honour ``Retry-After`` (capped), only for
  408/409/429/5xx, transport errors, and what an adapter's error hook marks retryable (busy signals).
  Never for 400/401/402/403. A response is read and closed before sleeping.
- Errors become typed :mod:`bot.errors`; messages carry the provider's words (trimmed), never our key.
- A server's own key (:class:`CallCredentials`, set for a job's calls with :func:`call_credentials`)
  replaces the operator's key per request: the client and its pool stay shared, only the
  ``Authorization`` header differs, and a provider the server has no key for is never called with the
  operator's key unless the server allows it.
- :class:`Downloader` fetches result URLs with its own client (the API key is never sent to a result
  host), a size cap, a per-step timeout and an overall deadline, and an SSRF guard on every redirect hop
  that also decides which address is connected to (no second DNS answer is ever used).
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
import pybase64
from pydantic import SecretStr
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from bot.errors import (
    AuthError,
    InvalidRequest,
    OutOfCredits,
    ProviderBusy,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ResultDownloadError,
)
from bot.i18n import Size, Text, msg
from bot.logs import REDACTED
from bot.ops import metrics
from bot.providers.parsing import InlinePayloads, SinkFactory

log = logging.getLogger(__name__)

USER_AGENT = "Palette/0.1 (+discord image bot)"
DETAIL_LIMIT = 300
LARGE_BODY = 256 * 1024

_SSL_CONTEXT: ssl.SSLContext | None = None

#: Where the images a streamed answer inlines are decoded to, in the job that set it (the worker sets
#: its image spool: memory within IMAGE_MEMORY_BUDGET, files beyond it). Unset: memory.
RESULT_SINK: ContextVar[SinkFactory | None] = ContextVar("palette_result_sink", default=None)


def ssl_context() -> ssl.SSLContext:
    """One verified TLS context for every client (building one costs ~40 ms)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


@dataclass(eq=False)
class CallCredentials:
    """The keys one job's provider calls use: a server's own keys by provider, and whether providers it
    has no key for may be called with the operator's key (``operator_fallback``; a server without any key
    of its own always uses the operator's). ``rejected`` collects what the providers said when they
    refused one of these keys (401/402), for the server's mod log."""

    keys: Mapping[str, SecretStr] = field(default_factory=dict, repr=False)
    operator_fallback: bool = False
    guild_id: int | None = None
    rejected: list[ProviderError] = field(default_factory=list)

    def key_for(self, provider: str) -> SecretStr | None:
        return self.keys.get(provider)

    def uses_own(self, provider: str) -> bool:
        return provider in self.keys

    @property
    def operator_allowed(self) -> bool:
        return self.operator_fallback or not self.keys

    def __repr__(self) -> str:
        return (
            f"CallCredentials(guild_id={self.guild_id}, own={sorted(self.keys)}, "
            f"operator_fallback={self.operator_fallback})"
        )


_CALL_CREDENTIALS: ContextVar[CallCredentials | None] = ContextVar("palette_call_credentials", default=None)


@contextmanager
def call_credentials(credentials: CallCredentials | None) -> Iterator[None]:
    """Every provider call made inside (tasks started inside included) uses ``credentials``."""
    token = _CALL_CREDENTIALS.set(credentials)
    try:
        yield
    finally:
        _CALL_CREDENTIALS.reset(token)


def current_credentials() -> CallCredentials | None:
    return _CALL_CREDENTIALS.get()


#: An adapter hook that may turn an error response into a more specific error (or None for the default).
ErrorHook = Callable[[httpx.Response, Any], ProviderError | None]


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_cap: float = 60.0

    def delay(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after >= 0:
            return min(float(retry_after), self.retry_after_cap)
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)  # "equal jitter"


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_text(body: Any) -> str | None:
    """The human part of an error body, whatever the provider called it."""
    if isinstance(body, Mapping):
        for key in ("userMessage", "error", "message", "msg", "detail", "error_message"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:DETAIL_LIMIT]
            if isinstance(value, Mapping):
                nested = error_text(value)
                if nested:
                    return nested
    if isinstance(body, str) and body.strip():
        return body.strip()[:DETAIL_LIMIT]
    return None


def classify_status(provider: str, response: httpx.Response, body: Any) -> ProviderError:
    """Default mapping from an HTTP error status to a typed error."""
    status = response.status_code
    detail = error_text(body)
    kw: dict[str, Any] = {"provider": provider, "status": status, "detail": detail}
    if status == 402:
        return OutOfCredits(**kw)
    if status in (401, 403):
        return AuthError(**kw)
    if status == 429:
        return RateLimited(retry_after=parse_retry_after(response.headers.get("Retry-After")), **kw)
    if status == 409:
        return ProviderBusy(retry_after=parse_retry_after(response.headers.get("Retry-After")), **kw)
    if status == 408:
        return ProviderTimeout(**kw)
    if status >= 500:
        return ProviderUnavailable(retry_after=parse_retry_after(response.headers.get("Retry-After")), **kw)
    if detail:
        return InvalidRequest("The provider rejected the request: {text}", text=detail, **kw)
    return InvalidRequest(**kw)


def _body_of(response: httpx.Response, scrub: Callable[[str], str] = lambda text: text) -> Any:
    """An error response's body (JSON, else trimmed text) with ``scrub`` applied to every string."""
    try:
        return _scrub_json(response.json(), scrub)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return scrub(response.text)[:DETAIL_LIMIT] if response.content else None


def _scrub_json(value: Any, scrub: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_json(v, scrub) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(v, scrub) for v in value]
    return value


def _is_retryable(exc: BaseException) -> bool:
    # A POST that reached the provider and then timed out may still be generating (and billing):
    # resending it here could charge twice, so the transport leaves that decision to the job layer.
    return isinstance(exc, ProviderError) and exc.retryable and not exc.maybe_charged


def _maybe_sent(method: str, exc: httpx.HTTPError) -> bool:
    """Whether a failed request may have been received (and acted on) by the server."""
    if method.upper() in ("GET", "HEAD", "OPTIONS"):
        return False
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


class Transport:
    """Authenticated JSON/multipart calls to one provider's API, with retries and typed errors."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        api_key: SecretStr | None,
        *,
        downloader: Downloader,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 180.0,
        max_connections: int = 100,
        error_hook: ErrorHook | None = None,
        auth_header: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self.provider = provider
        self.retry = retry or RetryPolicy()
        self.downloader = downloader
        self.error_hook = error_hook
        # Kept only to scrub it from error texts: a provider may echo our request headers back.
        self._secret = api_key.get_secret_value() if api_key is not None else ""
        self._auth_header = auth_header or (lambda secret: {"Authorization": f"Bearer {secret}"})
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key is not None:
            headers.update(self._auth_header(self._secret))
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=None),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            verify=ssl_context(),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def _call_headers(self) -> dict[str, str] | None:
        """The auth headers of this call when a server's own key applies (None: the client's own).

        A provider the server has no key for, called while the server does not allow the operator's
        keys, is refused here without a request (the generator never routes there; this is the guard)."""
        credentials = _CALL_CREDENTIALS.get()
        if credentials is None:
            return None
        key = credentials.key_for(self.provider)
        if key is not None:
            return self._auth_header(key.get_secret_value())
        if credentials.operator_allowed and self._secret:
            return None
        raise AuthError(
            "This server has no key of its own for this provider.", provider=self.provider, status=None
        )

    def _scrub(self, text: str) -> str:
        """``text`` without our API key or the server's (scrubbed before any trimming, so no part of it
        survives)."""
        if not text:
            return text
        secrets = [self._secret]
        credentials = _CALL_CREDENTIALS.get()
        if credentials is not None:
            key = credentials.key_for(self.provider)
            if key is not None:
                secrets.append(key.get_secret_value())
        for secret in secrets:
            if len(secret) >= 4:
                text = text.replace(secret, REDACTED)
        return text

    def _scrubbed(self, error: ProviderError) -> ProviderError:
        """``error`` with our API key removed from everything it shows (message, detail, args)."""
        error.scrub(self._scrub)
        if error.detail is not None:
            error.detail = self._scrub(error.detail)
        error.args = tuple(self._scrub(a) if isinstance(a, str) else a for a in error.args)
        return error

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        params: Mapping[str, Any] | None = None,
        retry: bool = True,
    ) -> Any:
        """Send a request and return its decoded JSON body; raise a typed error on failure.

        Bodies that are not JSON on a 2xx raise :class:`ProviderUnavailable` (not retried here: a
        generation may already have been charged, so the job layer decides).
        """
        async for attempt in self._retrying(retry):
            with attempt:
                response = await self._send_once(method, path, json_body, data, files, params)
        return await self._decode(response)

    async def request_streaming(
        self, method: str, path: str, *, json_body: Any = None, retry: bool = True
    ) -> tuple[Any, InlinePayloads]:
        """Like :meth:`request` for answers that inline images as base64: the payloads are decoded while
        the answer streams in (see :class:`InlinePayloads`), so the whole body is never held at once.

        Returns the JSON skeleton and the payloads that its marker strings resolve to.
        """
        async for attempt in self._retrying(retry):
            with attempt:
                return await self._stream_once(method, path, json_body)
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _retrying(self, retry: bool) -> AsyncRetrying:
        attempts = (self.retry.max_retries + 1) if retry else 1
        return AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=lambda state: self.retry.delay(
                state.attempt_number, state.outcome.exception() if state.outcome else None
            ),
            retry=retry_if_exception(_is_retryable),
            reraise=True,
        )

    def _transport_error(self, method: str, exc: httpx.HTTPError) -> ProviderError:
        error: ProviderError
        if isinstance(exc, httpx.TimeoutException):
            error = ProviderTimeout(provider=self.provider, detail=type(exc).__name__)
        else:
            error = ProviderUnavailable(provider=self.provider, detail=type(exc).__name__)
        error.maybe_charged = _maybe_sent(method, exc)
        return error

    def _status_error(self, response: httpx.Response, method: str, path: str) -> ProviderError:
        body = _body_of(response, self._scrub)
        error = self._scrubbed(
            (self.error_hook(response, body) if self.error_hook else None)
            or classify_status(self.provider, response, body)
        )
        log.debug("%s %s %s -> %s (%s)", self.provider, method, path, response.status_code, error.detail)
        return error

    async def _stream_once(self, method: str, path: str, json_body: Any) -> tuple[Any, InlinePayloads]:
        started = time.monotonic()
        try:
            result = await self._stream_once_unmeasured(method, path, json_body)
        except ProviderError as exc:
            metrics.provider_request(self.provider, type(exc).__name__, time.monotonic() - started)
            raise
        metrics.provider_request(self.provider, "ok", time.monotonic() - started)
        return result

    async def _stream_once_unmeasured(
        self, method: str, path: str, json_body: Any
    ) -> tuple[Any, InlinePayloads]:
        payloads = InlinePayloads(sink=RESULT_SINK.get())
        try:
            return await self._stream_into(method, path, json_body, payloads)
        except BaseException:
            payloads.discard()  # files of a failed answer
            raise

    async def _stream_into(
        self, method: str, path: str, json_body: Any, payloads: InlinePayloads
    ) -> tuple[Any, InlinePayloads]:
        try:
            headers = self._call_headers()
            async with self.client.stream(
                method, path.lstrip("/"), json=json_body, headers=headers
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise self._status_error(response, method, path)
                status = response.status_code
                declared = response.headers.get("Content-Length", "")
                payloads.expected = int(declared) if declared.isdigit() else 0
                async for chunk in response.aiter_bytes():
                    payloads.feed(chunk)
                    await payloads.drain()
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise self._transport_error(method, exc) from exc
        await payloads.complete()  # the last file writes (the connection is back in the pool already)
        skeleton = payloads.skeleton()
        error: ProviderError | None = None
        body: Any = None
        try:
            body = json.loads(skeleton) if skeleton.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            error = ProviderUnavailable(
                "The provider sent a malformed response.",
                provider=self.provider,
                status=status,
                detail=self._scrub(skeleton[:DETAIL_LIMIT].decode("utf-8", "replace")),
            )
        if error is None and payloads.error is not None:
            error = ProviderUnavailable(
                "The provider sent a truncated or corrupt image.",
                provider=self.provider,
                detail=payloads.error,
            )
        if error is not None:
            # A 2xx answer: the generation may have been billed, so it is not resent here (the job
            # layer decides), just as request() does not retry a body it cannot decode.
            error.maybe_charged = True
            raise error
        return body, payloads

    async def _send_once(
        self, method: str, path: str, json_body: Any, data: Any, files: Any, params: Any
    ) -> httpx.Response:
        url = path.lstrip("/")
        headers = self._call_headers()
        started = time.monotonic()
        try:
            response = await self.client.request(
                method, url, json=json_body, data=data, files=files, params=params, headers=headers
            )
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            error = self._transport_error(method, exc)
            metrics.provider_request(self.provider, type(error).__name__, time.monotonic() - started)
            raise error from exc
        # httpx has read and closed the body already (no streaming), so sleeping afterwards holds nothing.
        if response.is_error:
            error = self._status_error(response, method, path)
            metrics.provider_request(self.provider, type(error).__name__, time.monotonic() - started)
            raise error
        metrics.provider_request(self.provider, "ok", time.monotonic() - started)
        return response

    async def _decode(self, response: httpx.Response) -> Any:
        content = response.content
        try:
            if len(content) > LARGE_BODY:
                # A 4K image inlined as base64 is tens of MB of JSON: parse it off the event loop.
                return await asyncio.to_thread(json.loads, content)
            return json.loads(content) if content else None
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise ProviderUnavailable(
                "The provider sent a malformed response.",
                provider=self.provider,
                status=response.status_code,
                detail=self._scrub(response.text)[:DETAIL_LIMIT],
            ) from exc

    async def fetch_output(self, ref: str) -> tuple[bytes, str | None]:
        """A result given as URL or ``data:`` URI -> (bytes, declared mime)."""
        if ref.startswith("data:"):
            return await decode_data_uri(ref, provider=self.provider)
        try:
            return await self.downloader.fetch(ref)
        except ResultDownloadError as exc:
            exc.provider = self.provider
            raise


async def decode_data_uri(uri: str, *, provider: str = "") -> tuple[bytes, str | None]:
    header, _, payload = uri.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise ResultDownloadError("The provider returned an unreadable image.", provider=provider)
    mime = header[5:].split(";", 1)[0] or None
    return await b64decode_async(payload, provider=provider), mime


async def b64decode_async(payload: str, *, provider: str = "") -> bytes:
    """Strict base64 decoding off the event loop; truncated or corrupt data is a provider fault."""
    try:
        return await asyncio.to_thread(pybase64.b64decode, payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderUnavailable(
            "The provider sent a truncated or corrupt image.", provider=provider, detail=str(exc)
        ) from exc


async def b64encode_async(data: bytes) -> str:
    return await asyncio.to_thread(pybase64.b64encode_as_string, data)


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        not ip.is_global  # also covers shared address space 100.64.0.0/10 (CGNAT, some cloud metadata)
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


@dataclass(frozen=True)
class CheckedHost:
    """A host as the HTTP client will connect to it (IDNA-encoded, default port filled in) and the
    addresses the SSRF guard checked for it."""

    host: str
    port: int
    addresses: tuple[str, ...]


#: The host the current fetch hop checked; :class:`_CheckedBackend` connects only to its addresses.
_CHECKED: ContextVar[CheckedHost | None] = ContextVar("palette_checked_host", default=None)


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections to the addresses the SSRF guard checked, never to a new resolution.

    The HTTP client would otherwise resolve the host a second time to connect, and a hostile DNS server
    can answer that second query with a private address after answering the check with a public one
    ("DNS rebinding"). Only the TCP connection goes to the IP: httpcore still sends the URL's host in the
    ``Host`` header and as the TLS server name, and verifies the certificate against it.
    """

    def __init__(self, downloader: Downloader) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._downloader = downloader

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        checked = _CHECKED.get()
        if checked is not None and (checked.host, checked.port) == (host, port):
            addresses = checked.addresses
        elif self._downloader.allow_private:
            addresses = (host,)
        else:
            # A connection the fetch did not check (should not happen): check it here, on the same answer.
            addresses = (await self._downloader.resolve_checked(host, port)).addresses
        error: Exception | None = None
        for address in addresses:  # every one was checked: try them in the resolver's order
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address to connect to for {host}")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the downloader only connects over TCP")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with a connection pool on :class:`_CheckedBackend`.

    httpx does not take a network backend, so the pool it built is replaced by an equivalent one that has
    ours (same TLS context and limits). No proxy: the guard must see the address actually connected to.
    """

    def __init__(self, downloader: Downloader, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context(), limits=limits, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("unsupported httpx version: its transport has no connection pool to replace")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(downloader),
        )


class Downloader:
    """Fetches images from URLs a provider (or a user) handed us.

    Each instance has its own connection pool. The bot uses two (see :mod:`bot.providers`): one for
    provider results and a small one, with the reference size cap, for URLs that Discord users chose, so
    a URL that trickles its bytes can never hold a connection that results need.

    ``timeout`` bounds each step (connect, each read, waiting for a pooled connection); ``deadline``
    bounds one whole :meth:`fetch`, redirects included, however slowly the server sends.
    """

    MAX_REDIRECTS = 5

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float = 60.0,
        deadline: float = 300.0,
        allow_private: bool = False,
        max_connections: int = 100,
    ) -> None:
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.allow_private = allow_private
        limits = httpx.Limits(max_connections=max_connections)
        self.client = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(timeout),
            transport=_CheckedTransport(self, limits),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def check_url(self, url: str) -> CheckedHost:
        """Refuse non-HTTP URLs and, unless allowed, hosts that resolve to private addresses.

        Returns the host with the addresses that were checked (none when private addresses are allowed);
        :meth:`fetch` connects to exactly those.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ResultDownloadError("Only http(s) image URLs can be fetched.", detail=parts.scheme)
        try:
            parsed = httpx.URL(url)
            host = parsed.raw_host.decode("ascii")
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise ResultDownloadError("That image URL is not valid.", detail=parts.scheme) from exc
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if self.allow_private:
            return CheckedHost(host, port, ())
        return await self.resolve_checked(host, port)

    async def resolve_checked(self, host: str, port: int) -> CheckedHost:
        """Resolve ``host`` once and refuse it if any of its addresses is not public."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ResultDownloadError("The image host could not be resolved.", detail=host) from exc
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            if not _is_public(address):
                raise ResultDownloadError("That image URL points to a private network address.", detail=host)
        if not addresses:
            raise ResultDownloadError("The image host could not be resolved.", detail=host)
        return CheckedHost(host, port, addresses)

    async def fetch(self, url: str, *, deadline: float | None = None) -> tuple[bytes, str | None]:
        """GET ``url`` following up to 5 redirects (each hop checked); at most ``max_bytes``, and all of it
        within ``deadline`` seconds (the downloader's own unless given)."""
        try:
            async with asyncio.timeout(self.deadline if deadline is None else deadline):
                return await self._fetch(url)
        except TimeoutError as exc:
            raise ResultDownloadError("Downloading the image timed out.", detail="deadline") from exc

    async def _fetch(self, url: str) -> tuple[bytes, str | None]:
        for _ in range(self.MAX_REDIRECTS + 1):
            checked = await self.check_url(url)
            pinned = _CHECKED.set(checked if checked.addresses else None)
            try:
                async with self.client.stream("GET", url) as response:
                    if response.is_redirect:
                        location = response.headers.get("Location")
                        if not location:
                            raise ResultDownloadError(detail="redirect without Location")
                        url = urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise ResultDownloadError(
                            status=response.status_code, detail=f"GET result -> {response.status_code}"
                        )
                    declared = response.headers.get("Content-Length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise ResultDownloadError(self._too_large(), detail=declared)
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise ResultDownloadError(self._too_large(), detail=str(size))
                        chunks.append(chunk)
                    content_type = response.headers.get("Content-Type", "").split(";", 1)[0] or None
                    return b"".join(chunks), content_type
            except httpx.TimeoutException as exc:
                raise ResultDownloadError("Downloading the image timed out.", detail="timeout") from exc
            except httpx.TransportError as exc:
                raise ResultDownloadError(detail=type(exc).__name__) from exc
            finally:
                _CHECKED.reset(pinned)
        raise ResultDownloadError("Too many redirects while downloading the image.")

    def _too_large(self) -> Text:
        return msg(
            "The image is too large to download (the limit is {limit}).",
            limit=Size(self.max_bytes, whole=True),
        )
