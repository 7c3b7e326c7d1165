"""A fake nano-banana-pro.net API, written from ``shared/provider-docs/nano-banana-pro-net.md``.

Serves ``POST /api/ai/nano-banana/generate`` (JSON or multipart) and the result files it hands out
(``GET /files/{id}.png``) on one loopback port. Requests are validated like the docs say (400
``{"error": ...}`` otherwise); results are real PNGs whose size follows ``size`` and ``aspectRatio``
(scaled down by :attr:`FakeNanoBananaPro.scale`). Result URLs can be made dead (404), slow, or not an
image; answers can be scripted per call like the ListenHub fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes.http import FakeServer, RecordedRequest, png_bytes
from tests.fakes.providers.common import KeyRing, Scripted, ScriptQueue, image_dimensions

API_KEY = "sk-nbp-test-key-abcdef"
GENERATE_PATH = "/api/ai/nano-banana/generate"

SIZES = {"1k": 1024, "2k": 2048, "4k": 4096}
RATIOS = {"1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9"}
MAX_REFERENCES = 8  # Standard plan (API access needs Standard or Pro)
MAX_IMAGE_BYTES = 2_500_000


@dataclass
class StoredFile:
    data: bytes
    content_type: str = "image/png"
    #: "ok" | "dead" (404) | "slow" (waits :attr:`FakeNanoBananaPro.slow_seconds`)
    mode: str = "ok"


class FakeNanoBananaPro:
    """The fake API. ``async with FakeNanoBananaPro() as fake``; point the bot at ``fake.base_url``."""

    api_key = API_KEY

    def __init__(
        self, *, scale: float = 1 / 16, processing_delay: float = 0.0, allow_4k: bool = True
    ) -> None:
        #: Other accepted keys (servers' own) and the key each call carried.
        self.keyring = KeyRing()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(GENERATE_PATH, self._generate)
        app.router.add_get("/files/{name}", self._file)
        self.server = FakeServer(app)
        self.scale = scale
        self.processing_delay = processing_delay
        #: False: behave like a Free plan for 4K ("4K generation" is ✗ on Free).
        self.allow_4k = allow_4k
        #: Seconds a "slow" result URL waits before answering.
        self.slow_seconds = 2.0
        self.calls: dict[str, int] = {"generate": 0, "files": 0}
        self.request_times: list[float] = []
        #: Every image the fake generated, in order.
        self.images: list[bytes] = []
        #: Headers of every result-file download (to check the API key never reaches the result host).
        self.file_request_headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.peers: set[tuple[str, int]] = set()
        self.files: dict[str, StoredFile] = {}
        self._queue = ScriptQueue()
        self._result_modes: deque[str] = deque()
        self._ids = itertools.count(1)
        self._release = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeNanoBananaPro:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        await self.server.stop()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.server.requests

    @property
    def generate_requests(self) -> list[RecordedRequest]:
        return [r for r in self.server.requests if r.path == GENERATE_PATH]

    # --- scripting ------------------------------------------------------------------------------------------

    def script(
        self, status: int, body: Any = None, headers: dict[str, str] | None = None, *, times: int | None = 1
    ) -> None:
        """Answer the next ``times`` generation calls (None: all) with this status and body."""
        self._queue.append(Scripted("response", status, body, dict(headers or {}), times=times))

    def script_delay(self, seconds: float, *, times: int | None = 1) -> None:
        """Hold the next ``times`` generation calls for ``seconds`` before answering normally."""
        self._queue.append(Scripted("delay", seconds=seconds, times=times))

    def script_malformed_json(self) -> None:
        self._queue.append(Scripted("malformed"))

    def script_result(self, mode: str) -> None:
        """The next generated result URL will be ``dead`` (404), ``slow`` or ``not_image`` (HTML)."""
        if mode not in ("dead", "slow", "not_image"):
            raise ValueError(mode)
        self._result_modes.append(mode)

    def add_file(self, data: bytes, content_type: str = "image/png", mode: str = "ok") -> str:
        """Serve ``data`` at a new ``/files/{id}.png`` URL and return the absolute URL."""
        name = f"{next(self._ids)}.png"
        self.files[name] = StoredFile(data, content_type, mode)
        return f"{self.base_url}/files/{name}"

    def _next_script(self) -> Scripted | None:
        return self._queue.take()

    # --- handlers -------------------------------------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._generate_inner(request)
        finally:
            self.in_flight -= 1

    async def _generate_inner(self, request: web.Request) -> web.StreamResponse:
        self.calls["generate"] += 1
        self.request_times.append(time.monotonic())
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((str(peer[0]), int(peer[1])))
        if not self.keyring.check(request, self.api_key):
            await self.server.record(request)
            return _error(401, "Unauthorized: missing or invalid API key")
        if request.content_type not in ("application/json", "multipart/form-data"):
            await self.server.record(request)
            return _error(400, "Content-Type must be application/json or multipart/form-data")
        try:
            rec = await self.server.record(request)
        except (json.JSONDecodeError, ValueError):
            return _error(400, "Invalid JSON body")

        scripted = self._next_script()
        if scripted is not None and scripted.kind == "delay":
            await self._sleep(scripted.seconds)
            scripted = None
        if scripted is not None and scripted.kind == "response":
            return _respond(scripted.status, scripted.body, scripted.headers)
        if scripted is not None and scripted.kind == "malformed":
            return web.Response(
                status=200,
                text='{"model": "nano-banana-2-1k", "images": [{"ur',
                content_type="application/json",
            )

        fields = rec.json if request.content_type == "application/json" else rec.form
        problem = self._validate(fields, rec)
        if problem:
            return _error(400, problem)
        if self.processing_delay:
            await self._sleep(self.processing_delay)

        size = fields.get("size", "1k")
        width, height = image_dimensions(SIZES[size], fields.get("aspectRatio"), self.scale)
        mode = self._result_modes.popleft() if self._result_modes else "ok"
        image = self.make_image(width, height)
        if mode == "not_image":
            url = self.add_file(b"<html><body>Sorry, not found</body></html>", "text/html")
        else:
            url = self.add_file(image, mode=mode)
        return web.json_response(
            {"model": f"nano-banana-2-{size}", "created": int(time.time()), "images": [{"url": url}]}
        )

    def _validate(self, fields: Any, rec: RecordedRequest) -> str | None:
        if not isinstance(fields, dict):
            return "Request body must be a JSON object"
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return "prompt is required"
        size = fields.get("size", "1k")
        if size not in SIZES:
            return f"Invalid size {size!r}: use 1k, 2k or 4k"
        if size == "4k" and not self.allow_4k:
            return "4K generation is not available on your plan. Upgrade to Standard or Pro."
        ratio = fields.get("aspectRatio")
        if ratio is not None and ratio not in RATIOS:
            return f"Invalid aspectRatio {ratio!r}"
        if "model" in fields:
            return "Unknown parameter: model"
        if rec.json is not None:
            image = fields.get("image")
            urls = [image] if isinstance(image, str) else image if image is not None else []
            if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
                return "image must be a URL or a list of URLs"
            if any(not u.startswith(("http://", "https://")) for u in urls):
                return "image URLs must be http(s)"
            count = len(urls)
        else:
            if "image" in fields:
                return "image must be uploaded as a file"
            for name, filename, data, ctype in rec.files:
                if name != "image":
                    return f"Unexpected file field {name!r}"
                if len(data) > MAX_IMAGE_BYTES:
                    return f"Image {filename} exceeds the 2.5MB limit"
                if not ctype.startswith("image/"):
                    return f"Image {filename} has an unsupported content type {ctype!r}"
                try:
                    Image.open(io.BytesIO(data)).verify()
                except Exception:
                    return f"Image {filename} is not a valid image"
            count = len(rec.files)
        if count > MAX_REFERENCES:
            return f"Too many reference images: your plan allows {MAX_REFERENCES}"
        return None

    def make_image(self, width: int, height: int) -> bytes:
        n = len(self.images) + 1
        image = png_bytes(width, height, ((n * 59) % 256, (n * 17) % 256, (n * 101) % 256))
        self.images.append(image)
        return image

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.calls["files"] += 1
        self.file_request_headers.append({k.lower(): v for k, v in request.headers.items()})
        stored = self.files.get(request.match_info["name"])
        if stored is None or stored.mode == "dead":
            return web.Response(status=404, text="Not Found")
        if stored.mode == "slow":
            await self._sleep(self.slow_seconds)
        return web.Response(body=stored.data, content_type=stored.content_type)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), seconds)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _respond(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    if isinstance(body, dict | list):
        return web.json_response(body, status=status, headers=headers)
    if isinstance(body, bytes):
        return web.Response(status=status, body=body, headers=headers)
    return web.Response(status=status, text="" if body is None else str(body), headers=headers)
