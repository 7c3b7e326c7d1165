"""A fake ListenHub OpenAPI, written from ``shared/provider-docs/listenhub*.md``.

Serves ``POST /openapi/v1/images/generation`` and ``GET /openapi/v1/user/subscription`` on a loopback port.
Requests are validated the way the docs describe (400 otherwise) and answered with real PNGs whose pixel
size follows ``imageSize`` and ``aspectRatio`` (scaled down by :attr:`FakeListenHub.scale` to keep tests
fast). Tests can queue scripted answers (:meth:`FakeListenHub.script` and friends), and inspect the
recorded requests, call counters and how many requests/connections were in flight at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import itertools
import json
import time
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes.http import FakeServer, RecordedRequest, png_bytes
from tests.fakes.providers.common import KeyRing, Scripted, ScriptQueue, image_dimensions

API_KEY = "lh-test-key-0123456789"
BASE_PATH = "/openapi"

MODELS = {
    "gemini-3-pro-image",
    "gemini-3.1-flash-image",
    "gemini-3-pro-image-preview",
    "gemini-3.1-flash-image-preview",
    "gpt-image-2",
}
FLASH_MODELS = {"gemini-3.1-flash-image", "gemini-3.1-flash-image-preview"}
STANDARD_RATIOS = {"1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9"}
FLASH_EXTRA_RATIOS = {"1:4", "4:1", "1:8", "8:1"}
SIZES = {"1K": 1024, "2K": 2048, "4K": 4096}
MIME_TYPES = {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"}

FULL_SUBSCRIPTION: dict[str, Any] = {
    "code": 0,
    "message": "success",
    "request_id": "req-sub-1",
    "data": {
        "totalAvailableCredits": 1234.5,
        "usageAvailableMonthlyCredits": 1000,
        "usageTotalMonthlyCredits": 2000,
        "usageAvailablePermanentCredits": 200,
        "usageTotalPermanentCredits": 300,
        "usageAvailableLimitedTimeCredits": 34.5,
        "resetAt": "2026-07-01T00:00:00Z",
        "subscriptionPlan": {"name": "Pro", "duration": "monthly", "platform": "stripe"},
        "freeUsages": {"gemini-3-pro-image-relax-1k-2k": 7, "wan2.7-image": 3, "gpt-image-2": 0},
    },
}


def envelope_error(code: int, message: str, **extra: Any) -> dict[str, Any]:
    """ListenHub's envelope shape, used for every error the fake produces."""
    return {"code": code, "message": message, "data": None, "request_id": "req-fake", **extra}


def busy_body(
    reason: str = "free_relax_busy", *, nest: str | None = None, user_message: str | None = None
) -> dict[str, Any]:
    """The documented pure-free relax failure metadata, at the top level or nested under ``nest``."""
    meta: dict[str, Any] = {
        "reason": reason,
        "retryable": True,
        "freeUsageRolledBack": True,
        "userMessage": user_message or "The free lane is busy right now, please retry later.",
    }
    if nest is None:
        return envelope_error(50301, "busy", **meta)
    return {"code": 50301, "message": "busy", nest: meta}


class FakeListenHub:
    """The fake API. Use as ``async with FakeListenHub() as fake`` and point the bot at ``fake.base_url``."""

    api_key = API_KEY

    def __init__(self, *, scale: float = 1 / 16, processing_delay: float = 0.0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(BASE_PATH + "/v1/images/generation", self._generate)
        app.router.add_get(BASE_PATH + "/v1/user/subscription", self._subscription)
        self.server = FakeServer(app)
        #: Output long side = nominal size x scale (1K -> 64 px by default); 1.0 for real sizes.
        self.scale = scale
        #: Seconds every generation takes (after validation); lets concurrency tests overlap requests.
        self.processing_delay = processing_delay
        #: The subscription answer: a body (served with 200) or a ``(status, body)`` tuple.
        self.subscription: Any = FULL_SUBSCRIPTION
        self.calls: dict[str, int] = {"generate": 0, "subscription": 0}
        #: Other accepted keys (servers' own) and the key each call carried.
        self.keyring = KeyRing()
        self.request_times: list[float] = []
        #: Every image the fake returned, in order (compare with what the adapter hands back).
        self.images: list[bytes] = []
        self.in_flight = 0
        self.max_in_flight = 0
        #: Client (host, port) pairs seen: one per TCP connection the client opened.
        self.peers: set[tuple[str, int]] = set()
        #: Prompts of the valid generation calls, in the order they arrived (who was served when).
        self.started_prompts: list[str] = []
        #: While True, valid generation calls wait (in flight) until :meth:`release` lets them go.
        self.holding = False
        self._held: list[asyncio.Event] = []
        self._changed = asyncio.Event()
        self._queue = ScriptQueue()
        self._colors = itertools.count(1)
        self._release = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeListenHub:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()  # wake scripted delays so shutdown does not wait for them
        await self.server.stop()

    @property
    def base_url(self) -> str:
        """What LISTENHUB_BASE_URL would be (the API lives under ``/openapi`` like the real one)."""
        return self.server.base_url + BASE_PATH

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.server.requests

    @property
    def generate_requests(self) -> list[RecordedRequest]:
        return [r for r in self.server.requests if r.path.endswith("/images/generation")]

    # --- scripting ------------------------------------------------------------------------------------------

    def script(
        self,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        times: int | None = 1,
        gate: asyncio.Event | None = None,
    ) -> None:
        """Answer the next ``times`` generation calls (None: all of them) with this status and body.

        A dict/list body is sent as JSON, bytes as they are, anything else as text. With ``gate`` the
        answer waits until the test sets that event.
        """
        self._queue.append(Scripted("response", status, body, dict(headers or {}), times=times, gate=gate))

    def script_refusal(
        self, kind: str = "finish", reason: str = "IMAGE_SAFETY", text: str | None = None
    ) -> None:
        """A 200 without an image: ``finish`` (finishReason), ``block`` (promptFeedback) or ``text`` only."""
        if kind == "finish":
            body: dict[str, Any] = {
                "candidates": [
                    {"content": {"role": "model", "parts": []}, "finishReason": reason, "index": 0}
                ]
            }
        elif kind == "block":
            body = {"promptFeedback": {"blockReason": reason}, "usageMetadata": {"promptTokenCount": 9}}
        elif kind == "text":
            parts = [{"text": text or "I can't create that image."}]
            body = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}]}
        else:
            raise ValueError(kind)
        self._queue.append(Scripted("response", 200, body))

    def script_delay(self, seconds: float, *, times: int | None = 1) -> None:
        """Hold the next ``times`` calls for ``seconds`` before answering normally."""
        self._queue.append(Scripted("delay", seconds=seconds, times=times))

    def script_truncated_base64(self) -> None:
        """A normal answer whose base64 image data is cut off mid-stream."""
        self._queue.append(Scripted("truncated"))

    def script_malformed_json(self) -> None:
        """A 200 ``application/json`` answer that is not JSON."""
        self._queue.append(Scripted("malformed"))

    def _next_script(self) -> Scripted | None:
        return self._queue.take()

    # --- holding calls in flight ----------------------------------------------------------------------------

    def hold(self) -> None:
        """From now on every valid generation call waits, in flight, until released (oldest first)."""
        self.holding = True

    def release(self, n: int = 1) -> int:
        """Let the ``n`` oldest held calls go on; returns how many were released."""
        waiting = [gate for gate in self._held if not gate.is_set()][:n]
        for gate in waiting:
            gate.set()
        return len(waiting)

    def release_all(self) -> None:
        """Stop holding and let every held call go on."""
        self.holding = False
        self.release(len(self._held))

    @property
    def held(self) -> int:
        """Calls waiting to be released right now."""
        return sum(1 for gate in self._held if not gate.is_set())

    async def wait_for(self, predicate: Any, timeout: float = 10, what: str = "") -> None:
        """Until ``predicate()`` is true; re-checked whenever a call arrives or ends."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _touch(self) -> None:
        self._changed.set()

    # --- handlers -------------------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return self.keyring.check(request, self.api_key)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._touch()
        try:
            return await self._generate_inner(request)
        finally:
            self.in_flight -= 1
            self._touch()

    async def _generate_inner(self, request: web.Request) -> web.StreamResponse:
        self.calls["generate"] += 1
        self.request_times.append(time.monotonic())
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((str(peer[0]), int(peer[1])))
        try:
            rec = await self.server.record(request)
        except (json.JSONDecodeError, ValueError):
            return web.json_response(envelope_error(40000, "body is not JSON"), status=400)
        if not self._authorized(request):
            return web.json_response(envelope_error(21007, "Invalid API key"), status=401)

        scripted = self._next_script()
        if scripted is not None and scripted.kind == "delay":
            await self._sleep(scripted.seconds)
            scripted = None
        if scripted is not None and scripted.kind == "response":
            if scripted.gate is not None:
                await self._wait(scripted.gate)
            return _respond(scripted.status, scripted.body, scripted.headers)
        if scripted is not None and scripted.kind == "malformed":
            return web.Response(
                status=200,
                text='{"candidates": [{"content": {"parts": [{"inl',
                content_type="application/json",
            )

        problem = validate_generation(rec.json)
        if problem:
            return web.json_response(envelope_error(40001, problem), status=400)
        self.started_prompts.append(rec.json["prompt"])
        if self.holding:
            gate = asyncio.Event()
            self._held.append(gate)
            self._touch()
            await self._wait(gate)
        if self.processing_delay:
            await self._sleep(self.processing_delay)

        body = rec.json
        config = body.get("imageConfig") or {}
        width, height = image_dimensions(
            SIZES[config.get("imageSize", "2K")], config.get("aspectRatio"), self.scale
        )
        encoded = base64.b64encode(self.make_image(width, height)).decode("ascii")
        if scripted is not None and scripted.kind == "truncated":
            encoded = encoded[: len(encoded) // 2 + 1]  # odd length: not valid base64 any more
        part = {"inlineData": {"mimeType": "image/png", "data": encoded}}
        return web.json_response(
            {
                "candidates": [
                    {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
                ],
                "modelVersion": body.get("model", "gemini-3-pro-image"),
            }
        )

    def make_image(self, width: int, height: int) -> bytes:
        """A PNG in a colour unique to this call (so two answers never have equal bytes)."""
        n = next(self._colors)
        image = png_bytes(width, height, ((n * 37) % 256, (n * 91) % 256, (n * 53) % 256))
        self.images.append(image)
        return image

    async def _subscription(self, request: web.Request) -> web.StreamResponse:
        self.calls["subscription"] += 1
        await self.server.record(request)
        if not self._authorized(request):
            # The README only says "code 21007 means the API key is invalid"; send it with a 401.
            return web.json_response(envelope_error(21007, "Invalid API key"), status=401)
        if isinstance(self.subscription, tuple):
            status, body = self.subscription
            return _respond(status, body, {})
        return web.json_response(self.subscription)

    async def _wait(self, event: asyncio.Event) -> None:
        """Until ``event`` is set (or the server stops)."""
        waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._release.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _sleep(self, seconds: float) -> None:
        # Interruptible, so stopping the server does not wait for a delayed handler.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), seconds)


def _respond(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    if isinstance(body, dict | list):
        return web.json_response(body, status=status, headers=headers)
    if isinstance(body, bytes):
        return web.Response(status=status, body=body, headers=headers)
    return web.Response(status=status, text="" if body is None else str(body), headers=headers)


def validate_generation(body: Any) -> str | None:
    """The docs' request rules; returns the 400 message, or None when the request is valid."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    provider = body.get("provider")
    if provider not in ("google", "openai"):
        return "provider is required and must be google or openai"
    model = body.get("model", "gemini-3-pro-image")
    if model not in MODELS:
        return f"unknown model {model!r}"
    if model == "gpt-image-2" and provider != "openai":
        return 'gpt-image-2 requires provider: "openai"'
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt is required"
    config = body.get("imageConfig", {})
    if not isinstance(config, dict):
        return "imageConfig must be an object"
    if config.get("imageSize", "2K") not in SIZES:
        return f"unsupported imageSize {config.get('imageSize')!r}"
    ratio = config.get("aspectRatio")
    if ratio is None and model != "gpt-image-2":
        ratio = "1:1"  # not stated; Gemini's default
    allowed = STANDARD_RATIOS | (FLASH_EXTRA_RATIOS if model in FLASH_MODELS else set())
    if ratio is not None and ratio not in allowed:
        return f"unsupported aspect ratio {ratio} for model {model}"
    refs = body.get("referenceImages", [])
    if not isinstance(refs, list):
        return "referenceImages must be an array"
    limit = 4 if model == "gpt-image-2" else 14
    if len(refs) > limit:
        return f"at most {limit} reference images for {model}"
    for i, ref in enumerate(refs):
        problem = _validate_reference(ref)
        if problem:
            return f"referenceImages[{i}]: {problem}"
    return None


def _validate_reference(ref: Any) -> str | None:
    if not isinstance(ref, dict) or set(ref) not in ({"fileData"}, {"inlineData"}):
        return "must contain exactly one of fileData or inlineData"
    ((kind, payload),) = ref.items()
    if not isinstance(payload, dict):
        return f"{kind} must be an object"
    if payload.get("mimeType") not in MIME_TYPES:
        return f"{kind}.mimeType is not supported"
    if kind == "fileData":
        uri = payload.get("fileUri")
        if not isinstance(uri, str) or not uri.startswith(("http://", "https://", "gs://")):
            return "fileData.fileUri must be an http, https or gs URL"
        return None
    try:
        raw = base64.b64decode(payload.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        return "inlineData.data is not valid base64"
    if not raw:
        return "inlineData.data is empty"
    try:
        Image.open(io.BytesIO(raw)).verify()
    except Exception:
        return "inlineData.data is not an image"
    return None


def decode_inline(ref: dict[str, Any]) -> bytes:
    """The bytes of a recorded ``inlineData`` reference (test helper)."""
    return base64.b64decode(ref["inlineData"]["data"], validate=True)
