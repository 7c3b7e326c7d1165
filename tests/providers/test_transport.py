"""The shared provider transport and result downloader, against aiohttp apps on real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import socket
import subprocess
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

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
from bot.providers import REFERENCE_CONNECTIONS, build_downloader, build_reference_downloader
from bot.providers import transport as transport_module
from bot.providers.transport import (
    LARGE_BODY,
    Downloader,
    RetryPolicy,
    Transport,
    _is_public,
    b64decode_async,
    decode_data_uri,
    parse_retry_after,
)
from tests.conftest import make_settings
from tests.fakes.http import FakeServer, TrickleServer, png_bytes

API_KEY = "PALETTE-TRANSPORT-SECRET-7f3a9c1e5b2d"

Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


# --- helpers ------------------------------------------------------------------------------------------------


class ScriptedServer(FakeServer):
    """A loopback server whose every request is logged and answered by ``handler(request, n)``."""

    def __init__(self, handler: Handler) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        super().__init__(app)
        self.handler = handler
        #: Set on teardown so stalled handlers return and shutdown does not wait for them.
        self.release = asyncio.Event()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        return await self.handler(request, len(self.requests))

    async def stall(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), timeout=30)

    async def stop(self) -> None:
        self.release.set()
        await super().stop()


@dataclass(frozen=True)
class RecordingPolicy(RetryPolicy):
    """The real policy, remembering every wait it computed: (attempt, error, seconds)."""

    waits: list[tuple[int, BaseException | None, float]] = field(default_factory=list, compare=False)

    def delay(self, attempt: int, error: BaseException | None) -> float:
        seconds = super().delay(attempt, error)
        self.waits.append((attempt, error, seconds))
        return seconds


def fast_policy(**overrides: Any) -> RecordingPolicy:
    values: dict[str, Any] = {
        "max_retries": 2,
        "backoff_base": 0.001,
        "backoff_max": 0.005,
        "retry_after_cap": 0.05,
    }
    values.update(overrides)
    return RecordingPolicy(**values)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def texts_of(exc: BaseException) -> list[str]:
    """Everything about an error that may end up in a message, a log line or a traceback."""
    out = [str(exc), repr(exc), *(str(a) for a in exc.args)]
    for attr in ("message", "detail"):
        value = getattr(exc, attr, None)
        if value is not None:
            out.append(str(value))
    return out


ServeFactory = Callable[[Handler], Awaitable[ScriptedServer]]


@pytest.fixture
async def serve() -> AsyncIterator[ServeFactory]:
    servers: list[ScriptedServer] = []

    async def factory(handler: Handler) -> ScriptedServer:
        server = ScriptedServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


MakeTransport = Callable[..., Transport]


@pytest.fixture
async def make_transport() -> AsyncIterator[MakeTransport]:
    built: list[Transport] = []

    def factory(base_url: str, **kwargs: Any) -> Transport:
        kwargs.setdefault("retry", fast_policy())
        kwargs.setdefault("read_timeout", 5.0)
        kwargs.setdefault("connect_timeout", 2.0)
        kwargs.setdefault("downloader", Downloader(max_bytes=10_000_000, timeout=5.0, allow_private=True))
        api_key = kwargs.pop("api_key", SecretStr(API_KEY))
        transport = Transport("testprov", base_url, api_key, **kwargs)
        built.append(transport)
        return transport

    yield factory
    for transport in built:
        await transport.aclose()
        await transport.downloader.aclose()


MakeDownloader = Callable[..., Downloader]


@pytest.fixture
async def make_downloader() -> AsyncIterator[MakeDownloader]:
    built: list[Downloader] = []

    def factory(**kwargs: Any) -> Downloader:
        kwargs.setdefault("max_bytes", 1_000_000)
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("allow_private", True)
        downloader = Downloader(**kwargs)
        built.append(downloader)
        return downloader

    yield factory
    for downloader in built:
        await downloader.aclose()


def json_answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return handler


# --- parse_retry_after --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("7", 7.0), (" 12 ", 12.0), ("1.5", 1.5), ("-3", 0.0)],
)
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date_in_the_future() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None
    assert 110 <= seconds <= 121  # HTTP dates have whole seconds


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "Tomorrow at noon", "12 parsecs", "0x10"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


# --- RetryPolicy.delay --------------------------------------------------------------------------------------


def test_delay_honours_retry_after_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=30.0, retry_after_cap=60.0)
    assert policy.delay(1, RateLimited(retry_after=7.0)) == 7.0
    assert policy.delay(3, RateLimited(retry_after=0.0)) == 0.0
    assert policy.delay(1, RateLimited(retry_after=3600.0)) == 60.0
    # A Retry-After beyond backoff_max is still honoured (up to retry_after_cap): the provider asked.
    assert policy.delay(1, ProviderBusy(retry_after=45.0)) == 45.0


def test_delay_without_retry_after_is_jittered_exponential_backoff() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=10.0, retry_after_cap=60.0)
    rng_state = random.getstate()
    try:
        random.seed(1234)
        for attempt, ceiling in zip(range(1, 6), (1.0, 2.0, 4.0, 8.0, 10.0), strict=True):
            samples = [policy.delay(attempt, ProviderUnavailable()) for _ in range(300)]
            assert all(ceiling / 2 <= s <= ceiling for s in samples), (attempt, min(samples), max(samples))
            assert max(samples) <= policy.backoff_max
            # Jitter, not a constant: the samples cover most of the allowed band.
            assert min(samples) < ceiling * 0.6 and max(samples) > ceiling * 0.9
        # Far past the cap the ceiling stays at backoff_max.
        assert all(5.0 <= policy.delay(30, None) <= 10.0 for _ in range(100))
    finally:
        random.setstate(rng_state)


def test_delay_ignores_a_negative_retry_after() -> None:
    policy = RetryPolicy(backoff_base=2.0, backoff_max=10.0)
    assert 1.0 <= policy.delay(1, RateLimited(retry_after=-5.0)) <= 2.0


# --- Transport.request: retries -----------------------------------------------------------------------------


async def test_429_with_retry_after_is_retried_after_waiting_that_long(
    serve: ServeFactory, make_transport: MakeTransport
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "1"})
        return web.json_response({"ok": True, "n": n})

    server = await serve(handler)
    policy = fast_policy(retry_after_cap=0.25, backoff_max=0.005)
    transport = make_transport(server.base_url, retry=policy)

    started = time.monotonic()
    body = await transport.request("POST", "/v1/generate", json_body={"prompt": "x"})
    elapsed = time.monotonic() - started

    assert body == {"ok": True, "n": 2}
    assert len(server.requests) == 2
    assert all(r.json == {"prompt": "x"} for r in server.requests)  # the same body both times
    assert len(policy.waits) == 1
    attempt, error, seconds = policy.waits[0]
    assert attempt == 1
    assert isinstance(error, RateLimited) and error.retry_after == 1.0
    assert seconds == 0.25  # Retry-After 1 s, capped by retry_after_cap (not the 5 ms backoff)
    assert elapsed >= 0.2  # and the transport really slept that long


async def test_5xx_is_retried_then_raises_unavailable(
    serve: ServeFactory, make_transport: MakeTransport
) -> None:
    server = await serve(json_answer(503, {"message": "upstream overloaded"}))
    policy = fast_policy(max_retries=3)
    transport = make_transport(server.base_url, retry=policy)

    with pytest.raises(ProviderUnavailable) as caught:
        await transport.request("POST", "/v1/generate", json_body={})

    assert len(server.requests) == 4  # max_retries + 1
    assert caught.value.status == 503
    assert caught.value.detail == "upstream overloaded"
    assert caught.value.provider == "testprov"


async def test_retry_false_sends_once(serve: ServeFactory, make_transport: MakeTransport) -> None:
    server = await serve(json_answer(500, {"message": "boom"}))
    transport = make_transport(server.base_url)
    with pytest.raises(ProviderUnavailable):
        await transport.request("GET", "/v1/tasks/1", retry=False)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(408, ProviderTimeout), (409, ProviderBusy), (429, RateLimited), (502, ProviderUnavailable)],
)
async def test_retryable_statuses_are_retried(
    serve: ServeFactory, make_transport: MakeTransport, status: int, error_type: type[ProviderError]
) -> None:
    server = await serve(json_answer(status, {"message": "try later"}))
    transport = make_transport(server.base_url, retry=fast_policy(max_retries=2))
    with pytest.raises(error_type):
        await transport.request("POST", "/v1/generate", json_body={})
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, InvalidRequest), (401, AuthError), (402, OutOfCredits), (403, AuthError), (404, InvalidRequest)],
)
async def test_client_errors_are_never_retried(
    serve: ServeFactory, make_transport: MakeTransport, status: int, error_type: type[ProviderError]
) -> None:
    server = await serve(json_answer(status, {"message": "you did something wrong"}))
    policy = fast_policy(max_retries=3)
    transport = make_transport(server.base_url, retry=policy)

    with pytest.raises(ProviderError) as caught:
        await transport.request("POST", "/v1/generate", json_body={})

    assert type(caught.value) is error_type
    assert len(server.requests) == 1
    assert policy.waits == []
    assert caught.value.status == status
    assert caught.value.detail == "you did something wrong"


async def test_post_that_times_out_is_not_resent(serve: ServeFactory, make_transport: MakeTransport) -> None:
    server: ScriptedServer

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        await server.stall()  # "generating" (and billing) past our read timeout
        return web.json_response({"late": True})

    server = await serve(handler)
    transport = make_transport(server.base_url, read_timeout=0.3, retry=fast_policy(max_retries=3))

    with pytest.raises(ProviderTimeout) as caught:
        await transport.request("POST", "/v1/generate", json_body={"prompt": "x"})

    assert len(server.requests) == 1
    assert caught.value.maybe_charged is True


async def test_get_that_times_out_is_retried(serve: ServeFactory, make_transport: MakeTransport) -> None:
    server: ScriptedServer

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n < 3:
            await server.stall()
        return web.json_response({"status": "done"})

    server = await serve(handler)
    transport = make_transport(server.base_url, read_timeout=0.2, retry=fast_policy(max_retries=3))

    assert await transport.request("GET", "/v1/tasks/abc") == {"status": "done"}
    assert len(server.requests) == 3


async def test_get_that_always_times_out_ends_in_timeout(
    serve: ServeFactory, make_transport: MakeTransport
) -> None:
    server: ScriptedServer

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        await server.stall()
        return web.json_response({})

    server = await serve(handler)
    transport = make_transport(server.base_url, read_timeout=0.15, retry=fast_policy(max_retries=2))
    with pytest.raises(ProviderTimeout) as caught:
        await transport.request("GET", "/v1/tasks/abc")
    assert len(server.requests) == 3
    assert caught.value.maybe_charged is False


async def test_connection_refused_post_is_retried(
    make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = make_transport(f"http://127.0.0.1:{closed_port()}", retry=fast_policy(max_retries=2))
    sends: list[str] = []
    send_once = transport._send_once

    async def counting_send_once(method: str, path: str, *args: Any) -> httpx.Response:
        sends.append(method)
        return await send_once(method, path, *args)

    monkeypatch.setattr(transport, "_send_once", counting_send_once)
    with pytest.raises(ProviderUnavailable) as caught:
        await transport.request("POST", "/v1/generate", json_body={"prompt": "x"})

    # It never reached a server, so it cannot have been billed: every attempt was made.
    assert sends == ["POST"] * 3
    assert caught.value.maybe_charged is False
    assert caught.value.detail == "ConnectError"


# --- Transport.request: bodies ------------------------------------------------------------------------------


async def test_success_returns_decoded_json_and_sends_the_key(
    serve: ServeFactory, make_transport: MakeTransport
) -> None:
    server = await serve(json_answer(200, {"data": [1, 2, 3]}))
    transport = make_transport(server.base_url + "/api/")
    assert await transport.request("POST", "/v1/x", json_body={"a": 1}, params={"q": "1"}) == {
        "data": [1, 2, 3]
    }
    sent = server.requests[0]
    assert sent.path == "/api/v1/x"
    assert sent.query == {"q": "1"}
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["user-agent"].startswith("Palette/")


async def test_custom_auth_header(serve: ServeFactory, make_transport: MakeTransport) -> None:
    server = await serve(json_answer(200, {}))
    transport = make_transport(server.base_url, auth_header=lambda key: {"X-Api-Key": key})
    await transport.request("GET", "/me")
    assert server.requests[0].headers["x-api-key"] == API_KEY
    assert "authorization" not in server.requests[0].headers


async def test_non_json_200_is_a_malformed_response(
    serve: ServeFactory, make_transport: MakeTransport
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(text="<html>502 Bad Gateway (but sent as 200)</html>", content_type="text/html")

    server = await serve(handler)
    transport = make_transport(server.base_url)
    with pytest.raises(ProviderUnavailable) as caught:
        await transport.request("POST", "/v1/generate", json_body={})
    assert "malformed" in caught.value.message
    assert caught.value.status == 200
    assert len(server.requests) == 1  # may have been charged: not resent


async def test_empty_200_is_none(serve: ServeFactory, make_transport: MakeTransport) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=200)

    server = await serve(handler)
    assert await make_transport(server.base_url).request("DELETE", "/v1/x") is None


async def test_large_json_body_is_parsed_off_the_event_loop(
    serve: ServeFactory, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = base64.b64encode(random.randbytes(600_000)).decode()
    body = {"images": [{"b64_json": payload}], "created": 1}
    server = await serve(json_answer(200, body))
    assert len(json.dumps(body)) > LARGE_BODY

    threads: list[int] = []

    def loads(data: Any) -> Any:
        threads.append(threading.get_ident())
        return json.loads(data)

    monkeypatch.setattr(
        transport_module, "json", types.SimpleNamespace(loads=loads, JSONDecodeError=json.JSONDecodeError)
    )
    transport = make_transport(server.base_url)
    assert await transport.request("GET", "/v1/result") == body
    assert threads and threading.get_ident() not in threads


async def test_small_json_body_is_parsed_inline(
    serve: ServeFactory, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await serve(json_answer(200, {"ok": 1}))
    threads: list[int] = []

    def loads(data: Any) -> Any:
        threads.append(threading.get_ident())
        return json.loads(data)

    monkeypatch.setattr(
        transport_module, "json", types.SimpleNamespace(loads=loads, JSONDecodeError=json.JSONDecodeError)
    )
    assert await make_transport(server.base_url).request("GET", "/v1/x") == {"ok": 1}
    assert threads == [threading.get_ident()]


# --- the API key never leaks into errors --------------------------------------------------------------------


def _echo_headers(request: web.Request) -> str:
    return "; ".join(f"{k}: {v}" for k, v in request.headers.items())


def _echo_json(status: int) -> Handler:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response(
            {"error": {"message": f"bad request, you sent {_echo_headers(request)}"}}, status=status
        )

    return handler


def _echo_text(status: int) -> Handler:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(text=f"debug dump: {_echo_headers(request)}", status=status)

    return handler


def _echo_at_trim_boundary(status: int) -> Handler:
    """The key starts just before the 300-character detail limit, so trimming alone would cut it in half."""

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        auth = request.headers["Authorization"]
        return web.json_response({"message": "x" * 280 + " " + auth}, status=status)

    return handler


@pytest.mark.parametrize(
    "handler",
    [
        _echo_json(400),
        _echo_json(401),
        _echo_json(402),
        _echo_json(403),
        _echo_json(429),
        _echo_json(500),
        _echo_text(400),
        _echo_text(503),
        _echo_text(200),  # not JSON: the "malformed" path
        _echo_at_trim_boundary(400),
        _echo_at_trim_boundary(500),
    ],
    ids=[
        "json-400",
        "json-401",
        "json-402",
        "json-403",
        "json-429",
        "json-500",
        "text-400",
        "text-503",
        "text-200",
        "trim-400",
        "trim-500",
    ],
)
async def test_api_key_never_appears_in_errors_even_when_echoed(
    serve: ServeFactory, make_transport: MakeTransport, handler: Handler
) -> None:
    server = await serve(handler)
    transport = make_transport(server.base_url)

    with pytest.raises(ProviderError) as caught:
        await transport.request("POST", "/v1/generate", json_body={})

    assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"  # it was sent...
    for text in texts_of(caught.value):
        assert API_KEY[:10] not in text, text  # ...and no part of it comes back in the error


async def test_api_key_is_scrubbed_from_what_an_error_hook_builds(
    serve: ServeFactory, make_transport: MakeTransport
) -> None:
    def hook(response: httpx.Response, body: Any) -> ProviderError | None:
        return InvalidRequest(f"provider said: {response.text}", provider="testprov", detail=response.text)

    server = await serve(_echo_text(422))
    transport = make_transport(server.base_url, error_hook=hook)
    with pytest.raises(InvalidRequest) as caught:
        await transport.request("POST", "/v1/generate", json_body={})
    assert "provider said: debug dump" in caught.value.message
    for text in texts_of(caught.value):
        assert API_KEY not in text


# --- Downloader ---------------------------------------------------------------------------------------------


async def test_download_returns_bytes_and_type_without_the_api_key(
    serve: ServeFactory, make_transport: MakeTransport
) -> None:
    image = png_bytes(20, 10)

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(body=image, content_type="image/png", charset=None)

    server = await serve(handler)
    transport = make_transport(server.base_url)
    data, mime = await transport.fetch_output(server.base_url + "/files/a.png")
    assert (data, mime) == (image, "image/png")
    assert "authorization" not in server.requests[0].headers


async def test_download_too_large_by_content_length_fails_before_reading(
    serve: ServeFactory, make_downloader: MakeDownloader
) -> None:
    server: ScriptedServer

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 10_000_000
        await response.prepare(request)
        await response.write(b"\x89PNG" + b"\0" * 1000)
        await server.stall()  # never sends the rest: only the declared length can fail this quickly
        return response

    server = await serve(handler)
    downloader = make_downloader(max_bytes=1_000_000, timeout=10.0)
    with pytest.raises(ResultDownloadError) as caught:
        await downloader.fetch(server.base_url + "/big.png")
    assert "too large" in caught.value.message
    assert caught.value.detail == "10000000"


async def test_download_too_large_while_streaming_chunked(
    serve: ServeFactory, make_downloader: MakeDownloader
) -> None:
    sent: list[int] = []

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"\xab" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(800):  # 50 MiB if nobody stops reading
                await response.write(chunk)
                sent.append(len(chunk))
        return response

    server = await serve(handler)
    downloader = make_downloader(max_bytes=300_000)
    with pytest.raises(ResultDownloadError) as caught:
        await downloader.fetch(server.base_url + "/stream")
    assert "too large" in caught.value.message
    size = int(caught.value.detail or 0)
    assert 300_000 < size <= 300_000 + 65536 * 2


async def test_download_chunked_under_the_cap_arrives_whole(
    serve: ServeFactory, make_downloader: MakeDownloader
) -> None:
    parts = [bytes([i]) * 40_000 for i in range(5)]

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/webp; charset=binary"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in parts:
            await response.write(part)
        await response.write_eof()
        return response

    server = await serve(handler)
    data, mime = await make_downloader(max_bytes=200_000).fetch(server.base_url + "/ok")
    assert data == b"".join(parts)
    assert mime == "image/webp"


async def test_download_timeout(serve: ServeFactory, make_downloader: MakeDownloader) -> None:
    server: ScriptedServer

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        await server.stall()
        return web.Response(body=b"late")

    server = await serve(handler)
    with pytest.raises(ResultDownloadError) as caught:
        await make_downloader(timeout=0.2).fetch(server.base_url + "/slow")
    assert "timed out" in caught.value.message


@pytest.mark.parametrize("status", [201, 204, 206, 304, 403, 404, 410, 500])
async def test_download_non_200_fails(
    serve: ServeFactory, make_downloader: MakeDownloader, status: int
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=status, body=None if status in (204, 304) else png_bytes(2, 2))

    server = await serve(handler)
    with pytest.raises(ResultDownloadError) as caught:
        await make_downloader().fetch(server.base_url + "/gone.png")
    if status != 304:  # a 3xx without Location is reported as a broken redirect
        assert caught.value.status == status
    assert len(server.requests) == 1


# --- Downloader: deadline, separate pools, reference cap (issue 13) ----------------------------------------


@pytest.fixture
async def trickle() -> AsyncIterator[TrickleServer]:
    async with TrickleServer() as server:
        yield server


async def test_a_trickling_download_ends_at_its_deadline(
    trickle: TrickleServer, make_downloader: MakeDownloader
) -> None:
    # A byte every 50 ms: the 5 s per-read timeout never fires, only the overall deadline can end it.
    downloader = make_downloader(timeout=5.0, deadline=0.5)
    with pytest.raises(ResultDownloadError) as caught:
        await asyncio.wait_for(downloader.fetch(trickle.base_url + "/slow.png"), timeout=30)
    assert "timed out" in caught.value.message and caught.value.detail == "deadline"
    await trickle.wait_until(lambda t: t.hung_up == 1 and t.active == 0)  # the connection was let go


async def test_waiting_for_a_pooled_connection_ends_at_the_deadline(
    trickle: TrickleServer, make_downloader: MakeDownloader
) -> None:
    downloader = make_downloader(timeout=30.0, deadline=0.5, max_connections=1)
    holder = asyncio.create_task(
        downloader.fetch(trickle.base_url + "/holds-the-only-connection.png", deadline=60.0)
    )
    await trickle.wait_until(lambda t: t.active == 1)
    with pytest.raises(ResultDownloadError) as caught:
        await asyncio.wait_for(downloader.fetch(trickle.base_url + "/waits.png"), timeout=30)
    assert "timed out" in caught.value.message
    assert trickle.started == 1  # the second fetch never got a connection
    assert not holder.done()
    trickle.release.set()
    await asyncio.wait_for(holder, timeout=30)


async def test_provider_results_download_while_user_urls_trickle(
    trickle: TrickleServer, serve: ServeFactory
) -> None:
    image = png_bytes(8, 8)

    async def result(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(body=image, content_type="image/png")

    results_server = await serve(result)
    settings = make_settings(reference_download_deadline=60.0, download_timeout=60.0)
    results, references = build_downloader(settings), build_reference_downloader(settings)
    user_fetches = [
        asyncio.create_task(references.fetch(f"{trickle.base_url}/user-{i}.png"))
        for i in range(REFERENCE_CONNECTIONS + 3)
    ]
    try:
        # Every connection of the user-URL pool is held by a trickling host (the rest wait for one)...
        await trickle.wait_until(lambda t: t.active == REFERENCE_CONNECTIONS)
        # ...and a provider result still downloads at once.
        for _ in range(3):
            data, mime = await asyncio.wait_for(results.fetch(results_server.base_url + "/r.png"), 30)
            assert (data, mime) == (image, "image/png")
        assert not any(task.done() for task in user_fetches)
        assert trickle.started == REFERENCE_CONNECTIONS  # user URLs never borrowed a result connection
    finally:
        trickle.release.set()
        await asyncio.gather(*user_fetches, return_exceptions=True)
        await results.aclose()
        await references.aclose()


async def test_a_user_url_is_cut_at_the_reference_cap(serve: ServeFactory) -> None:
    chunk = b"\xab" * 65536
    sent: list[int] = []

    async def endless(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # 12.5 MiB if nobody stops reading
                await response.write(chunk)
                sent.append(len(chunk))
        return response

    server = await serve(endless)
    cap = 300_000
    settings = make_settings(max_reference_bytes=cap, download_max_bytes=64 * 1024 * 1024)
    references = build_reference_downloader(settings)
    try:
        with pytest.raises(ResultDownloadError) as caught:
            await references.fetch(server.base_url + "/huge.png")
    finally:
        await references.aclose()
    assert "too large" in caught.value.message
    assert cap < int(caught.value.detail or 0) <= cap + 2 * len(chunk)


async def test_a_user_url_declaring_more_than_the_reference_cap_is_refused_unread(
    serve: ServeFactory,
) -> None:
    server: ScriptedServer

    async def declared(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 400_000
        await response.prepare(request)
        await response.write(b"\x89PNG")
        await server.stall()
        return response

    server = await serve(declared)
    settings = make_settings(max_reference_bytes=300_000)
    references, results = build_reference_downloader(settings), build_downloader(settings)
    try:
        with pytest.raises(ResultDownloadError) as caught:
            await references.fetch(server.base_url + "/big.png")
        assert "too large" in caught.value.message and caught.value.detail == "400000"
        assert results.max_bytes == settings.download_max_bytes > 400_000  # the cap is the user URLs' own
    finally:
        await references.aclose()
        await results.aclose()


def _hops_handler(image: bytes) -> Handler:
    """``/hop/N`` redirects to ``/hop/N-1``; ``/hop/0`` is the image."""

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        left = int(request.path.rsplit("/", 1)[1])
        if left > 0:
            raise web.HTTPFound(f"/hop/{left - 1}")
        return web.Response(body=image, content_type="image/png")

    return handler


async def test_download_follows_five_redirects(serve: ServeFactory, make_downloader: MakeDownloader) -> None:
    image = png_bytes(4, 4)
    server = await serve(_hops_handler(image))
    data, _ = await make_downloader().fetch(server.base_url + "/hop/5")
    assert data == image
    assert [r.path for r in server.requests] == [f"/hop/{i}" for i in range(5, -1, -1)]


async def test_download_refuses_a_sixth_redirect(
    serve: ServeFactory, make_downloader: MakeDownloader
) -> None:
    server = await serve(_hops_handler(png_bytes(4, 4)))
    with pytest.raises(ResultDownloadError) as caught:
        await make_downloader().fetch(server.base_url + "/hop/6")
    assert "redirects" in caught.value.message
    assert len(server.requests) == 6
    assert "/hop/0" not in [r.path for r in server.requests]


@pytest.mark.parametrize(
    ("start", "location", "final"),
    [
        ("/a/b/start", "../img/x.png", "/a/img/x.png"),
        ("/a/b/start", "x.png", "/a/b/x.png"),
        ("/a/b/start", "/root.png?sig=1", "/root.png"),
    ],
)
async def test_download_resolves_relative_locations(
    serve: ServeFactory, make_downloader: MakeDownloader, start: str, location: str, final: str
) -> None:
    image = png_bytes(3, 3)

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.path == start:
            return web.Response(status=307, headers={"Location": location})
        return web.Response(body=image, content_type="image/png")

    server = await serve(handler)
    data, _ = await make_downloader().fetch(server.base_url + start)
    assert data == image
    assert [r.path for r in server.requests] == [start, final]


async def test_download_redirect_without_location_fails(
    serve: ServeFactory, make_downloader: MakeDownloader
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=302)

    server = await serve(handler)
    with pytest.raises(ResultDownloadError):
        await make_downloader().fetch(server.base_url + "/x")


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "gopher://example.com/",
        "//example.com/a.png",
        "http:///no-host.png",
        "",
    ],
)
async def test_download_refuses_non_http_urls(make_downloader: MakeDownloader, url: str) -> None:
    downloader = make_downloader(allow_private=True)
    with pytest.raises(ResultDownloadError) as caught:
        await downloader.fetch(url)
    assert "http" in caught.value.message


async def test_download_refuses_a_redirect_to_a_file_url(
    serve: ServeFactory, make_downloader: MakeDownloader
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        raise web.HTTPFound("file:///etc/passwd")

    server = await serve(handler)
    with pytest.raises(ResultDownloadError) as caught:
        await make_downloader(allow_private=True).fetch(server.base_url + "/x")
    assert "http" in caught.value.message
    assert len(server.requests) == 1


# --- Downloader: SSRF guard ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT (RFC 6598)
        ("100.100.100.200", False),  # Alibaba Cloud metadata, inside 100.64.0.0/10
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fd00::1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped IPv6
        ("::ffff:10.0.0.1", False),
        ("::ffff:169.254.169.254", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert _is_public(address) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://192.168.0.1/",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://[fd12:3456::1]/x.png",
        "http://0.0.0.0/x.png",
        "https://127.0.0.1/x.png",
    ],
)
async def test_private_addresses_are_refused_without_connecting(
    make_downloader: MakeDownloader, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    downloader = make_downloader(allow_private=False)
    attempts: list[str] = []

    def no_connection(method: str, target: str, **kwargs: Any) -> Any:
        attempts.append(target)
        raise AssertionError(f"the downloader tried to connect to {target}")

    monkeypatch.setattr(downloader.client, "stream", no_connection)
    with pytest.raises(ResultDownloadError) as caught:
        await downloader.fetch(url)
    assert "private network" in caught.value.message
    assert attempts == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_loopback_server_is_never_contacted(
    serve: ServeFactory, make_downloader: MakeDownloader, host: str
) -> None:
    server = await serve(json_answer(200, {}))
    port = server.base_url.rsplit(":", 1)[1]
    with pytest.raises(ResultDownloadError) as caught:
        await make_downloader(allow_private=False).fetch(f"http://{host}:{port}/secret")
    assert "private network" in caught.value.message
    assert server.requests == []


async def test_public_address_passes_the_check(make_downloader: MakeDownloader) -> None:
    # A numeric address resolves locally: nothing is sent anywhere by the check itself.
    await make_downloader(allow_private=False).check_url("https://93.184.216.34/image.png")


async def test_unresolvable_host_is_refused(make_downloader: MakeDownloader) -> None:
    with pytest.raises(ResultDownloadError) as caught:
        await make_downloader(allow_private=False).check_url("http://does-not-exist.invalid/x.png")
    assert "resolved" in caught.value.message


@pytest.fixture
async def second_loopback() -> AsyncIterator[tuple[str, list[str]]]:
    """An image server bound on 127.0.0.2 (FakeServer only binds 127.0.0.1): (base url, paths seen)."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(body=png_bytes(2, 2), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.2:{port}", seen
    await runner.cleanup()


@pytest.mark.parametrize("second_is_public", [False, True], ids=["private-hop-refused", "control"])
async def test_redirect_to_a_private_address_is_refused(
    serve: ServeFactory,
    make_downloader: MakeDownloader,
    second_loopback: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    second_is_public: bool,
) -> None:
    public = {"127.0.0.1", "127.0.0.2"} if second_is_public else {"127.0.0.1"}
    checked: list[str] = []

    def fake_is_public(address: str) -> bool:
        checked.append(address)
        return address in public

    monkeypatch.setattr(transport_module, "_is_public", fake_is_public)
    private_base, private_seen = second_loopback

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        raise web.HTTPFound(f"{private_base}/x")

    server = await serve(handler)
    downloader = make_downloader(allow_private=False)

    if second_is_public:
        data, _ = await downloader.fetch(server.base_url + "/start")
        assert data == png_bytes(2, 2)
        assert private_seen == ["/x"]
    else:
        with pytest.raises(ResultDownloadError) as caught:
            await downloader.fetch(server.base_url + "/start")
        assert "private network" in caught.value.message
        assert private_seen == []
    assert len(server.requests) == 1
    assert checked == ["127.0.0.1", "127.0.0.2"]


# --- Downloader: DNS rebinding -----------------------------------------------------------------------------


@dataclass
class Rebinding:
    """``images.example`` answers the first lookup with 127.0.0.2 (treated as public here) and every later
    one with 127.0.0.1 (private): a rebinding DNS server. Both addresses serve on the same port."""

    port: int
    lookups: list[str]
    public_seen: list[dict[str, str]]
    private_seen: list[str]


async def _serve_on(host: str, port: int, app: web.Application, ssl: Any = None) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl).start()
    return runner


@pytest.fixture
def tls_cert(tmp_path: Any) -> tuple[str, str]:
    """A self-signed certificate for images.example only (no IP address in it): (cert file, key file)."""
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=images.example",
         "-addext", "subjectAltName=DNS:images.example"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def _rebinding(monkeypatch: pytest.MonkeyPatch, server_ssl: Any = None) -> AsyncIterator[Rebinding]:
    with socket.socket() as probe:  # a port free on 127.0.0.1; 127.0.0.2 gets the same number
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = Rebinding(port, [], [], [])

    async def public(request: web.Request) -> web.Response:
        state.public_seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(body=png_bytes(3, 3), content_type="image/png")

    async def private(request: web.Request) -> web.Response:
        state.private_seen.append(request.path)
        return web.Response(body=b"internal secrets", content_type="image/png")

    public_app, private_app = web.Application(), web.Application()
    public_app.router.add_get("/{tail:.*}", public)
    private_app.router.add_get("/{tail:.*}", private)
    runners = [
        await _serve_on("127.0.0.1", port, private_app, server_ssl),
        await _serve_on("127.0.0.2", port, public_app, server_ssl),
    ]
    real_getaddrinfo = socket.getaddrinfo

    def rebinding_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("images.example", b"images.example"):
            state.lookups.append(str(host))
            address = "127.0.0.2" if len(state.lookups) == 1 else "127.0.0.1"
            return real_getaddrinfo(address, port, *args, **kwargs)
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
    monkeypatch.setattr(transport_module, "_is_public", lambda address: address == "127.0.0.2")
    try:
        yield state
    finally:
        monkeypatch.undo()
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def rebinding(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rebinding]:
    async for state in _rebinding(monkeypatch):
        yield state


async def test_download_connects_to_the_checked_address_not_a_second_lookup(
    rebinding: Rebinding, make_downloader: MakeDownloader
) -> None:
    downloader = make_downloader(allow_private=False)
    data, _ = await downloader.fetch(f"http://images.example:{rebinding.port}/cat.png")
    assert data == png_bytes(3, 3)
    assert rebinding.private_seen == []  # the rebound answer was never connected to
    assert rebinding.lookups == ["images.example"]  # one lookup: the checked one
    assert rebinding.public_seen[0]["host"] == f"images.example:{rebinding.port}"


async def test_a_rebound_address_is_refused_when_it_is_the_one_checked(
    rebinding: Rebinding, make_downloader: MakeDownloader
) -> None:
    downloader = make_downloader(allow_private=False)
    await downloader.fetch(f"http://images.example:{rebinding.port}/first.png")
    # The next hop's lookup answers 127.0.0.1: refused before any connection (the pooled one to
    # 127.0.0.2 is not reused for a host that now fails the check).
    with pytest.raises(ResultDownloadError) as caught:
        await downloader.fetch(f"http://images.example:{rebinding.port}/second.png")
    assert "private network" in caught.value.message
    assert rebinding.private_seen == []
    assert len(rebinding.public_seen) == 1


async def test_https_to_the_checked_address_keeps_the_host_name_for_tls(
    monkeypatch: pytest.MonkeyPatch, tls_cert: tuple[str, str]
) -> None:
    """The certificate names images.example only: the download succeeds only if TLS is verified (and SNI
    sent) for the host name although the connection goes to the checked IP."""
    import ssl

    cert, key = tls_cert
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    client_ssl = ssl.create_default_context(cafile=cert)
    monkeypatch.setattr(transport_module, "_SSL_CONTEXT", client_ssl)
    async for state in _rebinding(monkeypatch, server_ssl):
        downloader = Downloader(max_bytes=1_000_000, timeout=5.0, allow_private=False)
        try:
            data, _ = await downloader.fetch(f"https://images.example:{state.port}/cat.png")
        finally:
            await downloader.aclose()
        assert data == png_bytes(3, 3)
        assert state.private_seen == [] and state.lookups == ["images.example"]


async def test_private_urls_allowed_still_resolve_host_names(
    serve: ServeFactory, make_downloader: MakeDownloader
) -> None:
    server = await serve(json_answer(200, {"ok": True}))
    port = server.base_url.rsplit(":", 1)[1]
    data, _ = await make_downloader(allow_private=True).fetch(f"http://localhost:{port}/x")
    assert json.loads(data) == {"ok": True}


# --- data URIs and base64 -----------------------------------------------------------------------------------


async def test_data_uri_decodes() -> None:
    image = png_bytes(5, 5)
    data, mime = await decode_data_uri("data:image/png;base64," + base64.b64encode(image).decode())
    assert (data, mime) == (image, "image/png")


@pytest.mark.parametrize(
    "uri",
    ["data:image/png,rawbytes", "data:;charset=utf-8,hello", "image/png;base64,AAAA", "data:text/plain,x"],
)
async def test_data_uri_that_is_not_base64_is_refused(uri: str) -> None:
    with pytest.raises((ResultDownloadError, ProviderUnavailable)):
        await decode_data_uri(uri, provider="p")


def _corruptions() -> list[tuple[str, str]]:
    good = base64.b64encode(png_bytes(9, 9)).decode()
    return [
        ("truncated-1", good[:-1]),
        ("truncated-2", good[:-2]),
        ("truncated-odd", good[: len(good) // 2 + 1]),
        ("bad-char", good[:20] + "*" + good[21:]),
        ("url-safe-alphabet", good[:20] + "-_" + good[22:]),
        ("padding-in-the-middle", good[:8] + "==" + good[10:]),
    ]


@pytest.mark.parametrize(("name", "payload"), _corruptions(), ids=[c[0] for c in _corruptions()])
async def test_corrupt_base64_is_a_provider_fault(name: str, payload: str) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        await b64decode_async(payload, provider="p")
    assert caught.value.provider == "p"
    assert "corrupt" in caught.value.message
    with pytest.raises(ProviderUnavailable):
        await decode_data_uri("data:image/png;base64," + payload, provider="p")


async def test_b64decode_async_round_trip() -> None:
    blob = random.randbytes(1000)
    assert await b64decode_async(base64.b64encode(blob).decode()) == blob


async def test_fetch_output_names_the_provider_on_download_errors(make_transport: MakeTransport) -> None:
    transport = make_transport("http://127.0.0.1:9")
    with pytest.raises(ResultDownloadError) as caught:
        await transport.fetch_output("ftp://example.com/x.png")
    assert caught.value.provider == "testprov"
