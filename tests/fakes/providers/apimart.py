"""A loopback fake of APIMart's image task API, written from ``shared/provider-docs/apimart.md`` and the
task-polling facts in that folder's README.

Tests drive it through attributes:

- ``scripts``: a queue of :class:`ApiMartScript`, one consumed per accepted submit (else ``default``);
  it says how the task ends (completed / failed / cancelled / never), after how many polls, how result
  URLs are spelled, whether they are dead links.
- ``submit_faults`` / ``poll_faults``: queues of :class:`Fault` answered instead of the next submit/poll.
- ``submit_delay`` / ``poll_delay``: seconds to stall before answering (read-timeout tests).
- ``submit_calls``, ``polls`` (per task), ``server.requests`` (every API request, recorded).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.fakes.http import FakeServer, png_bytes
from tests.fakes.providers.common import KeyRing

VALID_KEY = "am-test-key-0123456789"

MODELS = frozenset({"gemini-3.1-flash-lite-image", "gemini-3.1-flash-image-preview"})
SIZES = frozenset({"auto", "1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16", "5:4", "4:5", "21:9"})
# "Passing 2K / 4K / 0.5K is silently downgraded to 1K — it won't raise an error".
RESOLUTIONS = frozenset({"0.5K", "1K", "2K", "4K"})
MAX_REFERENCES = 14
MAX_REFERENCE_BYTES = 10 * 1024 * 1024
DATA_URI_RE = re.compile(r"^data:image/(jpeg|png|webp);base64,(.+)$", re.DOTALL)
MAGIC = {"jpeg": (b"\xff\xd8\xff",), "png": (b"\x89PNG\r\n\x1a\n",), "webp": (b"RIFF",)}


@dataclass
class ApiMartScript:
    """How one task behaves."""

    outcome: Literal["completed", "failed", "cancelled", "never"] = "completed"
    #: Polls answered before the terminal state; the poll with this number is the terminal one.
    polls: int | None = None
    #: ``list``: ``url: [..]`` (English page); ``string``: ``url: ".."`` (Chinese page);
    #: ``strings``: ``images: ["..", ..]`` (tolerated variant).
    url_style: Literal["list", "string", "strings"] = "list"
    #: For ``failed``: the ``error`` field, a string or ``{"message", "code"}``.
    error: Any = "Image generation failed"
    #: Result URLs answer 404.
    dead_links: bool = False
    #: Submit answer shape: documented ``data`` list, ``data`` object, ``id`` instead of ``task_id``,
    #: or no task id at all.
    submit_shape: Literal["list", "object", "id", "missing"] = "list"
    #: Number of result images (default: the request's ``n``).
    images: int | None = None


@dataclass
class Fault:
    """An answer given instead of the normal one."""

    status: int = 500
    body: Any = field(
        default_factory=lambda: {"error": {"message": "internal error", "type": "server_error"}}
    )
    headers: dict[str, str] = field(default_factory=dict)
    #: Send this raw text with HTTP 200 instead (malformed JSON).
    malformed: str | None = None


@dataclass
class FakeTask:
    id: str
    script: ApiMartScript
    request: dict[str, Any]
    files: list[str]
    polls: int = 0


def _error(status: int, message: str, type_: str = "invalid_request_error", code: Any = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "code": code if code is not None else status}}
    return web.json_response(body, status=status)


class FakeApiMart:
    """The fake API (``/v1/images/generations``, ``/v1/tasks/{id}``) plus result files at ``/files/``."""

    key = VALID_KEY

    def __init__(self, *, polls: int = 3) -> None:
        #: Other accepted keys (servers' own) and the key each call carried.
        self.keyring = KeyRing()
        self.default = ApiMartScript(polls=polls)
        self.scripts: deque[ApiMartScript] = deque()
        self.submit_faults: deque[Fault] = deque()
        self.poll_faults: deque[Fault] = deque()
        self.submit_delay = 0.0
        self.poll_delay = 0.0
        self.submit_calls = 0
        self.polls: dict[str, int] = {}
        self.tasks: dict[str, FakeTask] = {}
        self.files: dict[str, bytes] = {}
        self.file_gets = 0
        self._ids = itertools.count(1)
        self._release = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self._submit)
        app.router.add_get("/v1/tasks/{task_id}", self._poll)
        app.router.add_get("/files/{name}", self._file)
        self.server = FakeServer(app)

    # --- lifecycle -----------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget tasks, counters, recorded requests and queued scripts (for a fake shared by tests)."""
        self.scripts.clear()
        self.submit_faults.clear()
        self.poll_faults.clear()
        self.submit_delay = self.poll_delay = 0.0
        self.submit_calls = 0
        self.polls.clear()
        self.tasks.clear()
        self.files.clear()
        self.file_gets = 0
        self.server.requests.clear()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    async def start(self) -> str:
        return await self.server.start()

    async def stop(self) -> None:
        self._release.set()  # wake stalled handlers so shutdown does not wait for them
        await self.server.stop()

    async def __aenter__(self) -> FakeApiMart:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def image_bytes(self, task_id: str) -> list[bytes]:
        """The PNGs a task's result URLs serve, in result order."""
        return [self.files[f] for f in self.tasks[task_id].files if f in self.files]

    # --- handlers ------------------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return self.keyring.check(request, self.key)

    async def _stall(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), timeout=seconds)

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        if fault.malformed is not None:
            return web.Response(text=fault.malformed, content_type="application/json", headers=fault.headers)
        return web.json_response(fault.body, status=fault.status, headers=fault.headers)

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        self.submit_calls += 1
        await self._stall(self.submit_delay)
        if not self._authorized(request):
            return _error(401, "Invalid API key", "authentication_error", "invalid_api_key")
        try:
            record = await self.server.record(request)
        except (json.JSONDecodeError, ValueError):
            return _error(400, "Request body must be JSON")
        if self.submit_faults:
            return self._fault_response(self.submit_faults.popleft())
        body = record.json
        problem = self.validate(body)
        if problem:
            return _error(400, problem)
        script = self.scripts.popleft() if self.scripts else self.default
        task_id = f"task_{next(self._ids):06d}"
        count = script.images if script.images is not None else body.get("n", 1)
        files = []
        for i in range(count):
            name = f"{task_id}-{i}"
            files.append(name)
            if not script.dead_links:
                self.files[name] = png_bytes(32 + 8 * i, 32, (10 * (len(self.tasks) % 25), 40 * i % 256, 200))
        self.tasks[task_id] = FakeTask(task_id, script, body, files)
        self.polls[task_id] = 0
        entry = {"status": "submitted", "task_id": task_id}
        if script.submit_shape == "object":
            return web.json_response({"code": 200, "data": entry})
        if script.submit_shape == "id":
            return web.json_response({"code": 200, "data": [{"status": "submitted", "id": task_id}]})
        if script.submit_shape == "missing":
            return web.json_response({"code": 200, "data": [{"status": "submitted"}]})
        return web.json_response({"code": 200, "data": [entry]})

    def validate(self, body: Any) -> str | None:
        """The doc's rules for the request body; a message when one is broken."""
        if not isinstance(body, dict):
            return "Request body must be a JSON object"
        if body.get("model") not in MODELS:
            return f"Unsupported model: {body.get('model')!r}"
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return "prompt is required"
        if "size" in body and body["size"] not in SIZES:
            return f"Unsupported size: {body['size']!r}"
        if "resolution" in body and body["resolution"] not in RESOLUTIONS:
            return f"Unsupported resolution: {body['resolution']!r}"
        if "n" in body:
            n = body["n"]
            # "Must enter a plain number (e.g., 1), do not use quotes or it will cause an error".
            if not isinstance(n, int) or isinstance(n, bool):
                return "n must be an integer"
            if not 1 <= n <= 4:
                return "n must be between 1 and 4"
        if "image_urls" in body:
            urls = body["image_urls"]
            if not isinstance(urls, list):
                return "image_urls must be an array"
            if len(urls) > MAX_REFERENCES:
                return f"At most {MAX_REFERENCES} reference images"
            for url in urls:
                problem = _check_reference(url)
                if problem:
                    return problem
        return None

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        self.polls[task_id] = self.polls.get(task_id, 0) + 1
        await self._stall(self.poll_delay)
        if not self._authorized(request):
            return _error(401, "Invalid API key", "authentication_error", "invalid_api_key")
        await self.server.record(request)
        if self.poll_faults:
            return self._fault_response(self.poll_faults.popleft())
        task = self.tasks.get(task_id)
        if task is None:
            return _error(404, "task not found", code="task_not_found")
        task.polls += 1
        script = task.script
        limit = script.polls if script.polls is not None else (self.default.polls or 1)
        data: dict[str, Any] = {"id": task.id, "created": 1_760_000_000, "estimated_time": 20}
        if script.outcome == "never" or task.polls < limit:
            data["status"] = "pending" if task.polls == 1 else "processing"
            data["progress"] = min(95, int(100 * task.polls / max(limit, 1)))
        elif script.outcome == "completed":
            base = self.base_url
            urls = [f"{base}/files/{name}.png" for name in task.files]
            if script.url_style == "list":
                images: list[Any] = [{"url": [u], "expires_at": 1_760_086_400} for u in urls]
            elif script.url_style == "string":
                images = [{"url": u, "expires_at": 1_760_086_400} for u in urls]
            else:
                images = list(urls)
            data.update(
                status="completed",
                progress=100,
                result={"images": images},
                completed=1_760_000_030,
                actual_time=30,
            )
        elif script.outcome == "failed":
            data.update(status="failed", progress=0, error=script.error)
        else:
            data.update(status="cancelled", progress=0)
        return web.json_response({"code": 200, "data": data})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.file_gets += 1
        name = request.match_info["name"].removesuffix(".png")
        data = self.files.get(name)
        if data is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=data, content_type="image/png")


def _check_reference(url: Any) -> str | None:
    if not isinstance(url, str):
        return "image_urls entries must be strings"
    if url.startswith(("http://", "https://")):
        return None
    match = DATA_URI_RE.match(url)
    if not match:
        return "image_urls entries must be http(s) URLs or data:image/{jpeg|png|webp};base64 URIs"
    fmt, payload = match.groups()
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return "Invalid base64 image data"
    if len(data) > MAX_REFERENCE_BYTES:
        return "Reference image exceeds 10MB"
    if not data.startswith(MAGIC[fmt]):
        return f"Image data is not {fmt}"
    return None
