"""A loopback fake of the Mountsea hub's image API, written from ``shared/provider-docs/mountsea-hub.md``
and the task facts in that folder's README.

The model tables below are copied from the doc independently of the adapter's, so a mistake in one
shows up as a 400 in the tests. The fake is stricter than a real fal-style API in one way: it rejects
input keys a model's table does not list (so the adapter cannot send, e.g., ``seed`` to gpt-image-2).

Tests drive it through ``scripts`` (one :class:`MountseaScript` per accepted submit), ``submit_faults`` /
``poll_faults`` (queued :class:`Fault` answers), ``submit_delay`` / ``poll_delay``, and read
``submit_calls``, ``polls`` (per task) and ``server.requests``.
"""

from __future__ import annotations

import asyncio
import base64
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

VALID_KEY = "ms-test-key-abcdef"

_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16")
_NB2_RATIOS = ("auto", *_RATIOS, "4:1", "1:4", "8:1", "1:8")
_PRO_RATIOS = ("auto", *_RATIOS)


@dataclass(frozen=True)
class DocModel:
    params: frozenset[str]
    aspect_ratios: tuple[str, ...] = ()
    resolutions: tuple[str, ...] = ()
    edit: bool = False
    gpt: bool = False


def _p(*names: str) -> frozenset[str]:
    return frozenset(names)


DOC_MODELS: dict[str, DocModel] = {
    "nano-banana": DocModel(
        _p(
            "seed",
            "prompt",
            "sync_mode",
            "num_images",
            "aspect_ratio",
            "output_format",
            "safety_tolerance",
            "limit_generations",
        ),
        _RATIOS,
    ),
    "nano-banana-edit": DocModel(
        _p("seed", "prompt", "image_urls", "num_images", "aspect_ratio", "output_format", "safety_tolerance"),
        _RATIOS,
        edit=True,
    ),
    "nano-banana-2": DocModel(
        _p(
            "seed",
            "prompt",
            "sync_mode",
            "num_images",
            "resolution",
            "aspect_ratio",
            "output_format",
            "system_prompt",
            "thinking_level",
            "safety_tolerance",
            "enable_web_search",
            "limit_generations",
        ),
        _NB2_RATIOS,
        ("0.5K", "1K", "2K", "4K"),
    ),
    "nano-banana-2-edit": DocModel(
        _p(
            "seed",
            "prompt",
            "image_urls",
            "num_images",
            "resolution",
            "aspect_ratio",
            "output_format",
            "safety_tolerance",
        ),
        _NB2_RATIOS,
        ("0.5K", "1K", "2K", "4K"),
        edit=True,
    ),
    "nano-banana-pro": DocModel(
        _p(
            "seed",
            "prompt",
            "sync_mode",
            "num_images",
            "resolution",
            "aspect_ratio",
            "output_format",
            "system_prompt",
            "safety_tolerance",
            "enable_web_search",
            "limit_generations",
        ),
        _PRO_RATIOS,
        ("1K", "2K", "4K"),
    ),
    "nano-banana-pro-edit": DocModel(
        _p(
            "seed",
            "prompt",
            "image_urls",
            "num_images",
            "resolution",
            "aspect_ratio",
            "output_format",
            "safety_tolerance",
        ),
        _PRO_RATIOS,
        ("1K", "2K", "4K"),
        edit=True,
    ),
    "gpt-image-2": DocModel(
        _p("prompt", "quality", "sync_mode", "image_size", "num_images", "output_format"), gpt=True
    ),
    "gpt-image-2-edit": DocModel(
        _p(
            "prompt",
            "quality",
            "mask_url",
            "sync_mode",
            "image_size",
            "image_urls",
            "num_images",
            "output_format",
        ),
        edit=True,
        gpt=True,
    ),
}
GPT_PRESETS = frozenset(
    {"square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"}
)
DATA_URI_RE = re.compile(r"^data:image/[a-z0-9.+-]+;base64,(.+)$", re.DOTALL)

DataShape = Literal["images", "image_strings", "image_object", "urls", "list", "data_uris", "output"]


@dataclass
class MountseaScript:
    """How one task behaves."""

    outcome: Literal["completed", "failed", "cancelled", "timeout", "never"] = "completed"
    #: Polls answered before the terminal state; the poll with this number is the terminal one.
    polls: int | None = None
    #: Inner shape of ``data`` on completion (undocumented, so the adapter must accept several):
    #: ``images``: ``{"images": [{"url"}]}``; ``image_strings``: ``{"images": ["url"]}``;
    #: ``image_object``: ``{"image": {"url"}}``; ``urls``: ``{"urls": [..]}``; ``list``: ``[url, ..]``;
    #: ``data_uris``: ``[data URI, ..]``; ``output``: ``{"output": [url, ..]}``.
    data_shape: DataShape = "images"
    #: Submit answer spelling: documented ``task_id``, ``taskId``, or wrapped in ``{"data": {...}}``.
    submit_shape: Literal["task_id", "taskId", "wrapped"] = "task_id"
    error_code: str | None = "generation_failed"
    error_message: str | None = "The model could not produce an image"
    dead_links: bool = False
    #: Report ``status: completed`` with ``ready: false`` for this many polls before ``ready: true``.
    completed_not_ready: int = 0


@dataclass
class Fault:
    """An answer given instead of the normal one."""

    status: int = 500
    body: Any = field(default_factory=lambda: {"message": "Internal server error", "error_code": "internal"})
    headers: dict[str, str] = field(default_factory=dict)
    #: Send this raw text with HTTP 200 instead (malformed JSON).
    malformed: str | None = None


@dataclass
class FakeTask:
    id: str
    script: MountseaScript
    request: dict[str, Any]
    files: list[str]
    polls: int = 0


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"message": message, "error_code": code}, status=status)


class FakeMountsea:
    """The fake hub (``/hub/v1/image``, ``/hub/v1/tasks/{id}``) plus result files at ``/files/``."""

    key = VALID_KEY

    def __init__(self, *, polls: int = 3) -> None:
        #: Other accepted keys (servers' own) and the key each call carried.
        self.keyring = KeyRing()
        self.default = MountseaScript(polls=polls)
        self.scripts: deque[MountseaScript] = deque()
        self.submit_faults: deque[Fault] = deque()
        self.poll_faults: deque[Fault] = deque()
        self.submit_delay = 0.0
        self.poll_delay = 0.0
        self.submit_calls = 0
        #: While True every task is still processing, however often it is polled (a slow provider).
        self.hold_tasks = False
        self.polls: dict[str, int] = {}
        self.tasks: dict[str, FakeTask] = {}
        self.files: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._release = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hub/v1/image", self._submit)
        app.router.add_get("/hub/v1/tasks/{task_id}", self._poll)
        app.router.add_get("/hub/v1/models", self._models)
        app.router.add_get("/files/{name}", self._file)
        self.server = FakeServer(app)

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
        self.server.requests.clear()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    async def start(self) -> str:
        return await self.server.start()

    async def stop(self) -> None:
        self._release.set()
        await self.server.stop()

    async def __aenter__(self) -> FakeMountsea:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def submitted_prompts(self) -> list[str]:
        """The prompt of every accepted submit, in order (a prompt twice: a task submitted twice)."""
        return [t.request["input"]["prompt"] for t in self.tasks.values()]

    def image_bytes(self, task_id: str) -> list[bytes]:
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
            return _error(401, "Invalid or missing API key", "unauthorized")
        try:
            record = await self.server.record(request)
        except (json.JSONDecodeError, ValueError):
            return _error(400, "Request body must be JSON", "invalid_json")
        if self.submit_faults:
            return self._fault_response(self.submit_faults.popleft())
        body = record.json
        problem = self.validate(body)
        if problem:
            return _error(400, problem, "invalid_input")
        script = self.scripts.popleft() if self.scripts else self.default
        task_id = f"hub-{next(self._ids):08d}-fake"
        count = body["input"].get("num_images", 1)
        files = []
        for i in range(count):
            name = f"{task_id}-{i}"
            files.append(name)
            if not script.dead_links:
                self.files[name] = png_bytes(40, 24 + 8 * i, (30 * (len(self.tasks) % 8), 90, 20 * i % 256))
        self.tasks[task_id] = FakeTask(task_id, script, body, files)
        self.polls[task_id] = 0
        answer: dict[str, Any] = {
            "task_id": task_id,
            "status": "pending",
            "capability": "image",
            "model": body["model"],
            "vendor": "OpenAI" if DOC_MODELS[body["model"]].gpt else "Google",
            "mode": "image-to-image" if DOC_MODELS[body["model"]].edit else "text-to-image",
            "created_at": "2026-05-18T09:00:00.000Z",
        }
        if script.submit_shape == "taskId":
            answer["taskId"] = answer.pop("task_id")
        elif script.submit_shape == "wrapped":
            answer = {"code": 0, "data": answer}
        return web.json_response(answer)

    def validate(self, body: Any) -> str | None:
        """The doc's tables as rules; a message when one is broken."""
        if not isinstance(body, dict) or set(body) - {"model", "input"}:
            return "Body must be {model, input}"
        model = DOC_MODELS.get(body.get("model"))  # type: ignore[arg-type]
        if model is None:
            return f"Unknown model {body.get('model')!r}"
        inp = body.get("input")
        if not isinstance(inp, dict):
            return "input must be an object"
        unknown = set(inp) - model.params
        if unknown:
            return f"Unknown input parameter(s) for {body['model']}: {sorted(unknown)}"
        if not isinstance(inp.get("prompt"), str) or not inp["prompt"].strip():
            return "input.prompt is required"
        if "num_images" in inp:
            n = inp["num_images"]
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4:
                return "num_images must be an integer from 1 to 4"
        if "seed" in inp and (not isinstance(inp["seed"], int) or isinstance(inp["seed"], bool)):
            return "seed must be an integer"
        if "output_format" in inp and inp["output_format"] not in ("jpeg", "png", "webp"):
            return "output_format must be jpeg, png or webp"
        if "safety_tolerance" in inp and inp["safety_tolerance"] not in ("1", "2", "3", "4", "5", "6"):
            return "safety_tolerance must be a string from '1' to '6'"
        if "aspect_ratio" in inp and inp["aspect_ratio"] not in model.aspect_ratios:
            return f"aspect_ratio {inp['aspect_ratio']!r} is not supported by {body['model']}"
        if "resolution" in inp and inp["resolution"] not in model.resolutions:
            return f"resolution {inp['resolution']!r} is not supported by {body['model']}"
        if "quality" in inp and inp["quality"] not in ("auto", "low", "medium", "high"):
            return "quality must be auto, low, medium or high"
        if "image_size" in inp:
            problem = check_image_size(inp["image_size"], edit=model.edit)
            if problem:
                return problem
        if model.edit:
            urls = inp.get("image_urls")
            if not isinstance(urls, list) or not urls:
                return "image_urls is required"
            for url in urls:
                if not isinstance(url, str):
                    return "image_urls entries must be strings"
                if url.startswith(("http://", "https://")):
                    continue
                match = DATA_URI_RE.match(url)
                if not match:
                    return "image_urls entries must be URLs or data URIs"
                try:
                    base64.b64decode(match.group(1), validate=True)
                except ValueError:
                    return "image_urls data URI is not valid base64"
        return None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        """``GET /hub/v1/models?capability=image``: the documented model browser (ids only here)."""
        if not self._authorized(request):
            return _error(401, "Invalid or missing API key", "unauthorized")
        capability = request.query.get("capability")
        models = [{"id": name, "capability": "image"} for name in DOC_MODELS if capability in (None, "image")]
        return web.json_response({"data": models})

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        self.polls[task_id] = self.polls.get(task_id, 0) + 1
        await self._stall(self.poll_delay)
        if not self._authorized(request):
            return _error(401, "Invalid or missing API key", "unauthorized")
        await self.server.record(request)
        if self.poll_faults:
            return self._fault_response(self.poll_faults.popleft())
        task = self.tasks.get(task_id)
        if task is None:
            return _error(404, "Task not found", "task_not_found")
        if self.hold_tasks:
            return web.json_response(
                {"task_id": task.id, "status": "processing", "ready": False, "elapsed_ms": 1500}
            )
        task.polls += 1
        script = task.script
        limit = script.polls if script.polls is not None else (self.default.polls or 1)
        answer: dict[str, Any] = {
            "task_id": task.id,
            "ready": False,
            "elapsed_ms": 1500 * task.polls,
            "error_code": None,
            "error_message": None,
        }
        if script.outcome == "never" or task.polls < limit:
            answer["status"] = "pending" if task.polls == 1 else "processing"
        elif script.outcome == "completed":
            answer["status"] = "completed"
            if task.polls >= limit + script.completed_not_ready:
                answer["ready"] = True
                answer["data"] = self._data(task)
        else:
            answer.update(status=script.outcome, ready=True)
            if script.outcome == "failed":
                answer.update(error_code=script.error_code, error_message=script.error_message)
            elif script.outcome == "timeout":
                answer.update(error_code="timeout", error_message="Generation timed out")
        return web.json_response(answer)

    def _data(self, task: FakeTask) -> Any:
        urls = [f"{self.base_url}/files/{name}.png" for name in task.files]
        shape = task.script.data_shape
        if shape == "images":
            return {
                "images": [{"url": u, "content_type": "image/png", "width": 40, "height": 24} for u in urls],
                "seed": 42,
                "description": "",
            }
        if shape == "image_strings":
            return {"images": urls}
        if shape == "image_object":
            return {"image": {"url": urls[0], "content_type": "image/png"}}
        if shape == "urls":
            return {"urls": urls}
        if shape == "list":
            return urls
        if shape == "output":
            return {"output": urls}
        # data_uris: the bytes inline, as fal does with sync_mode
        return [
            "data:image/png;base64," + base64.b64encode(self.files[name]).decode("ascii")
            for name in task.files
            if name in self.files
        ]

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"].removesuffix(".png")
        data = self.files.get(name)
        if data is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=data, content_type="image/png")


def check_image_size(value: Any, *, edit: bool) -> str | None:
    """gpt-image-2: a preset name (``auto`` for edits) or ``{width, height}`` within the documented limits:
    "both dimensions must be multiples of 16, max edge 3840px, aspect ratio ≤ 3:1, total pixels
    655,360-8,294,400"."""
    if isinstance(value, str):
        if value in GPT_PRESETS or (edit and value == "auto"):
            return None
        return f"image_size {value!r} is not a preset"
    if not isinstance(value, dict) or set(value) != {"width", "height"}:
        return "image_size must be a preset or {width, height}"
    w, h = value["width"], value["height"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        return "image_size width/height must be positive integers"
    if w % 16 or h % 16:
        return "image_size dimensions must be multiples of 16"
    if max(w, h) > 3840:
        return "image_size max edge is 3840"
    if max(w, h) > 3 * min(w, h):
        return "image_size aspect ratio must be at most 3:1"
    if not 655_360 <= w * h <= 8_294_400:
        return "image_size total pixels must be between 655,360 and 8,294,400"
    return None
