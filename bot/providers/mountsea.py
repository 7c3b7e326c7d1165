"""Mountsea hub (``https://api.mountsea.ai``): asynchronous image tasks over fal.ai-style models.

Spec: ``shared/provider-docs/mountsea-hub.md`` (models and their inputs) and the README there (tasks).

- ``POST hub/v1/image`` with ``{model, input}`` answers ``{task_id, status, capability, model, vendor,
  mode, created_at}`` (one page spells it ``taskId``).
- ``GET hub/v1/tasks/{task_id}`` answers ``{task_id, status, ready, data, elapsed_ms, error_code,
  error_message}``; poll until ``ready`` is true. ``status`` is ``pending | processing | completed |
  failed | timeout | cancelled``.

Billing: Mountsea charges only when a task completes. A job that resumes after a restart calls
:meth:`MountseaProvider.wait` with the stored task id: polling never submits, so it never pays twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from bot.errors import (
    ContentRefused,
    InvalidRequest,
    OutOfCredits,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    TaskFailed,
)
from bot.providers.base import ProviderRequest, Reference, TaskProvider, TaskState, TaskStatus
from bot.providers.parsing import SAFETY_RE, shape
from bot.providers.transport import DETAIL_LIMIT, b64encode_async, error_text

log = logging.getLogger(__name__)

PROVIDER = "mountsea"
SUBMIT_PATH = "hub/v1/image"
TASK_PATH = "hub/v1/tasks/{task_id}"
EDIT_SUFFIX = "-edit"

#: The doc gives no maximum for ``num_images``; fal's models take 1-4 and the catalog splits larger counts.
MAX_IMAGES_PER_CALL = 4
#: Malformed 2xx poll bodies tolerated in a row (a poll is a GET: repeating it is harmless).

# --- the model tables of mountsea-hub.md --------------------------------------------------------------------

_BASE_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16")


@dataclass(frozen=True)
class ModelSchema:
    """What one Mountsea model accepts (from its table in the doc)."""

    family: str  # "nano-banana" or "gpt-image-2"
    edit: bool
    aspect_ratios: tuple[str, ...] = ()
    # None: the model has no ``resolution`` input (plain nano-banana).
    resolutions: tuple[str, ...] | None = None


MODELS: dict[str, ModelSchema] = {
    "nano-banana": ModelSchema("nano-banana", False, _BASE_RATIOS),
    "nano-banana-edit": ModelSchema("nano-banana", True, _BASE_RATIOS),
    "nano-banana-2": ModelSchema(
        "nano-banana", False, ("auto", *_BASE_RATIOS, "4:1", "1:4", "8:1", "1:8"), ("0.5K", "1K", "2K", "4K")
    ),
    "nano-banana-2-edit": ModelSchema(
        "nano-banana", True, ("auto", *_BASE_RATIOS, "4:1", "1:4", "8:1", "1:8"), ("0.5K", "1K", "2K", "4K")
    ),
    "nano-banana-pro": ModelSchema("nano-banana", False, ("auto", *_BASE_RATIOS), ("1K", "2K", "4K")),
    "nano-banana-pro-edit": ModelSchema("nano-banana", True, ("auto", *_BASE_RATIOS), ("1K", "2K", "4K")),
    "gpt-image-2": ModelSchema("gpt-image-2", False),
    "gpt-image-2-edit": ModelSchema("gpt-image-2", True),
}

# --- gpt-image-2 custom sizes ("both dimensions must be multiples of 16, max edge 3840px, aspect ratio
# ≤ 3:1, total pixels 655,360-8,294,400") -------------------------------------------------------------------

GPT_SIZE_MULTIPLE = 16
GPT_MAX_EDGE = 3840
GPT_MAX_RATIO = 3
GPT_MIN_PIXELS = 655_360
GPT_MAX_PIXELS = 8_294_400
#: Pixel area aimed at per resolution tier: 1K ≈ 1024², 2K ≈ 2048², 4K as large as allowed.
GPT_TARGET_PIXELS: dict[str, int] = {"1K": 1024 * 1024, "2K": 2048 * 2048, "4K": GPT_MAX_PIXELS}


def gpt_size_allowed(width: int, height: int) -> bool:
    """Whether ``width`` x ``height`` meets gpt-image-2's documented custom-size constraints."""
    return (
        width > 0
        and height > 0
        and width % GPT_SIZE_MULTIPLE == 0
        and height % GPT_SIZE_MULTIPLE == 0
        and max(width, height) <= GPT_MAX_EDGE
        and max(width, height) <= GPT_MAX_RATIO * min(width, height)
        and GPT_MIN_PIXELS <= width * height <= GPT_MAX_PIXELS
    )


def gpt_image_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """(width, height) for gpt-image-2's custom ``image_size`` object.

    Picks, among the sizes the doc allows, one with exactly the requested ratio if any exists (every
    catalog ratio has some), else one within 1% of it; then the one whose area is closest (in log scale)
    to the tier's target. Raises InvalidRequest for ratios or tiers gpt-image-2 cannot make.
    """
    target = GPT_TARGET_PIXELS.get(resolution.strip().upper())
    if target is None:
        raise InvalidRequest(
            "GPT Image 2 supports the 1K, 2K and 4K resolutions.", provider=PROVIDER, detail=resolution
        )
    w_ratio, h_ratio = _parse_ratio(aspect_ratio)
    if max(w_ratio, h_ratio) > GPT_MAX_RATIO * min(w_ratio, h_ratio):
        raise InvalidRequest(
            "GPT Image 2 cannot make images wider or taller than 3:1.", provider=PROVIDER, detail=aspect_ratio
        )
    size = _best_gpt_size(
        w_ratio // math.gcd(w_ratio, h_ratio), h_ratio // math.gcd(w_ratio, h_ratio), target
    )
    if size is None:  # cannot happen for ratios within 3:1, kept as a guard
        raise InvalidRequest(
            "No allowed GPT Image 2 size fits that ratio.", provider=PROVIDER, detail=aspect_ratio
        )
    return size


@lru_cache(maxsize=256)
def _best_gpt_size(w_ratio: int, h_ratio: int, target: int) -> tuple[int, int] | None:
    want = math.log(w_ratio / h_ratio)
    best: tuple[tuple[float, ...], tuple[int, int]] | None = None
    step = GPT_SIZE_MULTIPLE
    for height in range(step, GPT_MAX_EDGE + 1, step):
        ideal = height * w_ratio / h_ratio
        for width in {math.floor(ideal / step) * step, math.ceil(ideal / step) * step}:
            if not gpt_size_allowed(width, height):
                continue
            exact = width * h_ratio == height * w_ratio
            ratio_err = abs(math.log(width / height) - want)
            area_err = abs(math.log(width * height / target))
            key = (
                0.0 if exact else 1.0,
                0.0 if ratio_err <= 0.01 else 1.0,
                ratio_err if ratio_err > 0.01 else 0.0,
                area_err,
            )
            if best is None or key < best[0]:
                best = (key, (width, height))
    return best[1] if best else None


def _parse_ratio(aspect_ratio: str) -> tuple[int, int]:
    left, sep, right = aspect_ratio.strip().partition(":")
    if sep and left.isdigit() and right.isdigit() and int(left) > 0 and int(right) > 0:
        return int(left), int(right)
    raise InvalidRequest("That aspect ratio is not supported.", provider=PROVIDER, detail=aspect_ratio)


# --- errors -------------------------------------------------------------------------------------------------

# ("insufficient permissions" must stay an AuthError, so "insufficient" alone is not enough.)
_NO_BALANCE_RE = re.compile(
    r"insufficient[\s_-]*(?:balance|credits?|quota|funds?)|not enough (?:balance|credits?|quota)"
    r"|\bbalance\b|out of credits|no credits",
    re.IGNORECASE,
)


class MountseaProvider(TaskProvider):
    """Adapter for the Mountsea hub's image models (nano-banana family and gpt-image-2).

    Mountsea bills a task only when it completes, so re-polling a stored task id (``wait`` after a
    restart) can never charge twice; only ``submit`` creates billable work.
    """

    name: ClassVar[str] = PROVIDER

    @staticmethod
    def error_hook(response: httpx.Response, body: Any) -> ProviderError | None:
        """Mountsea error bodies are not documented: read ``message``/``error``/``error_message`` and
        ``error_code`` defensively. Statuses keep the transport's default mapping, except an empty
        balance reported with another status than 402, and a safety refusal sent as a 400/422."""
        status = response.status_code
        words = _error_words(body)
        detail = error_text(body) or (words[:DETAIL_LIMIT] if words else None)
        if status < 500 and words and _NO_BALANCE_RE.search(words):
            return OutOfCredits(provider=PROVIDER, status=status, detail=detail)
        if status in (400, 422) and words and SAFETY_RE.search(words):
            return ContentRefused(provider=PROVIDER, status=status, detail=detail)
        return None

    # --- submit --------------------------------------------------------------------------------------------

    async def submit(self, request: ProviderRequest) -> str:
        body = await self.build_body(request)
        answer = await self._post_submit(body)
        task_id = _task_id_of(answer)
        if not task_id:
            log.debug("mountsea submit answer without a task id: %r", shape(answer))
            raise ProviderUnavailable(
                "The provider did not return a task id.",
                provider=PROVIDER,
                detail=error_text(answer) or shape(answer),
            )
        return task_id

    async def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        """The JSON body ``{model, input}`` for ``POST hub/v1/image``."""
        model = self.model_for(request)
        schema = MODELS[model]
        if not 1 <= request.count <= MAX_IMAGES_PER_CALL:
            raise InvalidRequest(
                "Mountsea makes 1 to {max} images per call.",
                max=MAX_IMAGES_PER_CALL,
                provider=PROVIDER,
                detail=f"num_images={request.count}",
            )
        if schema.family == "gpt-image-2":
            payload = self._gpt_input(request, schema)
        else:
            payload = self._nano_input(request, schema)
        if schema.edit:
            payload["image_urls"] = list(
                await asyncio.gather(*(self._reference_entry(ref) for ref in request.references))
            )
        return {"model": model, "input": payload}

    @staticmethod
    def model_for(request: ProviderRequest) -> str:
        """The Mountsea model id: edits use the ``-edit`` model, which requires ``image_urls``.

        The orchestrator already picks ``-edit`` when there are references; this guards against a caller
        that did not.
        """
        model = request.model_id.strip()
        if request.references and not model.endswith(EDIT_SUFFIX):
            model += EDIT_SUFFIX
        elif not request.references and model.endswith(EDIT_SUFFIX):
            raise InvalidRequest(
                "Editing needs at least one reference image.", provider=PROVIDER, detail=model
            )
        if model not in MODELS:
            raise InvalidRequest("Mountsea does not serve that model.", provider=PROVIDER, detail=model)
        return model

    def _nano_input(self, request: ProviderRequest, schema: ModelSchema) -> dict[str, Any]:
        payload: dict[str, Any] = {"prompt": request.prompt, "num_images": int(request.count)}
        if request.aspect_ratio:
            if request.aspect_ratio not in schema.aspect_ratios:
                raise InvalidRequest(
                    "That aspect ratio is not available for this model.",
                    provider=PROVIDER,
                    detail=request.aspect_ratio,
                )
            payload["aspect_ratio"] = request.aspect_ratio
        if schema.resolutions is None:
            # Plain nano-banana / nano-banana-edit have no resolution input: they render at ~1K.
            if request.resolution and request.resolution.upper() != "1K":
                raise InvalidRequest(
                    "This model only renders at 1K.", provider=PROVIDER, detail=request.resolution
                )
        else:
            resolution = request.resolution.upper() if request.resolution else "1K"
            if resolution not in schema.resolutions:
                raise InvalidRequest(
                    "That resolution is not available for this model.",
                    provider=PROVIDER,
                    detail=request.resolution,
                )
            payload["resolution"] = resolution
        if request.seed is not None:
            payload["seed"] = int(request.seed)
        payload["output_format"] = "png"
        if request.strict_safety:
            # "1 is the most strict"; left out otherwise so the provider's default ("4") applies.
            payload["safety_tolerance"] = "1"
        return payload

    def _gpt_input(self, request: ProviderRequest, schema: ModelSchema) -> dict[str, Any]:
        # gpt-image-2 has no seed and no safety_tolerance input: never send them.
        ratio = request.aspect_ratio if request.aspect_ratio and request.aspect_ratio != "auto" else None
        image_size: str | dict[str, int]
        if ratio is None and schema.edit:
            image_size = "auto"  # "Use 'auto' to infer from input images"
        else:
            width, height = gpt_image_size(ratio or "1:1", request.resolution or "1K")
            image_size = {"width": width, "height": height}
        return {
            "prompt": request.prompt,
            "num_images": int(request.count),
            "image_size": image_size,
            "quality": "high",
            "output_format": "png",
        }

    async def _reference_entry(self, ref: Reference) -> str:
        """The reference's public URL when it has one, else a data URI (fal.ai conventions accept data
        URIs in ``image_urls``, though the Mountsea page only shows URLs)."""
        if ref.url:
            return ref.url
        if not ref.mime_type.lower().startswith("image/"):
            raise InvalidRequest("A reference is not an image.", provider=PROVIDER, detail=ref.mime_type)
        assert ref.data is not None  # Reference guarantees data or url
        return f"data:{ref.mime_type.lower()};base64,{await b64encode_async(ref.data)}"

    async def _post_submit(self, body: dict[str, Any]) -> Any:
        """POST the task. The transport retries 429/5xx and connection failures, but not an error after
        which the provider may have accepted the task (``maybe_charged``, e.g. a read timeout): a
        second submit could create, and bill, a second task."""
        return await self.transport.request("POST", SUBMIT_PATH, json_body=body)

    # --- poll ----------------------------------------------------------------------------------------------

    async def poll(self, task_id: str) -> TaskStatus:
        if not task_id:
            raise TaskFailed("The provider task id is missing.", provider=PROVIDER)
        answer = await self._get_task(task_id)
        task = _unwrap_task(answer)
        if task is None:
            log.debug("mountsea poll %s: unexpected shape %r", task_id, shape(answer))
            raise ProviderUnavailable(
                "The provider sent a malformed task status.", provider=PROVIDER, detail=shape(answer)
            )
        raw = str(task.get("status") or "").strip().lower()
        ready = task.get("ready")
        if raw == "failed":
            raise _failure(task, task_id)
        if raw == "timeout":
            # The provider gave up on its side; nothing is billed, so another route may try.
            raise ProviderTimeout(
                "The provider timed out generating the image.",
                provider=PROVIDER,
                detail=_reason_detail(task, task_id),
            )
        if raw in ("cancelled", "canceled"):
            raise TaskFailed(
                "The generation was cancelled.", provider=PROVIDER, detail=_reason_detail(task, task_id)
            )
        if raw == "completed" and ready is not False:
            outputs = _collect_outputs(task.get("data"))
            if not outputs:
                log.debug("mountsea task %s completed without outputs: %r", task_id, shape(task))
            return TaskStatus(TaskState.DONE, outputs=outputs, progress=1.0, raw_status=raw)
        if raw not in ("pending", "processing", "completed"):
            # Not a documented status: keep polling (the deadline still bounds the wait), but say so.
            log.debug("mountsea task %s: unknown status %r (ready=%r), still polling", task_id, raw, ready)
        return TaskStatus(TaskState.PENDING, raw_status=raw or None)

    async def check_access(self) -> bool:
        """``GET /hub/v1/models?capability=image`` (the documented first step of the workflow)."""
        await self.transport.request("GET", "hub/v1/models", params={"capability": "image"}, retry=False)
        return True

    async def _get_task(self, task_id: str) -> Any:
        path = TASK_PATH.format(task_id=quote(task_id, safe=""))
        return await self.fetch_task(task_id, path)


# --- parsing helpers ----------------------------------------------------------------------------------------


def _task_id_of(answer: Any) -> str | None:
    """``task_id`` (documented), ``taskId`` (one page), ``id``; at the top level or inside ``data``."""
    if not isinstance(answer, Mapping):
        return None
    candidates = [answer]
    if isinstance(answer.get("data"), Mapping):
        candidates.insert(0, answer["data"])
    for item in candidates:
        for key in ("task_id", "taskId", "id"):
            value = item.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
                return str(value).strip()
    return None


def _unwrap_task(answer: Any) -> Mapping[str, Any] | None:
    """The task object: the body itself, or (undocumented, tolerated) an envelope's ``data``.

    ``data`` is also the task's *result* field, so we unwrap only when the top level has no status.
    """
    if not isinstance(answer, Mapping):
        return None
    if "status" in answer or "ready" in answer:
        return answer
    inner = answer.get("data")
    if isinstance(inner, Mapping) and ("status" in inner or "ready" in inner):
        return inner
    return None


# fal-style result keys, most specific first. The inner shape of ``data`` is undocumented: expected is
# ``data.images[].url``; also seen in fal-style APIs: ``images`` as strings, ``image.url``, ``urls``,
# ``output``, or ``data`` itself a list of URLs / data URIs.
_OUTPUT_KEYS = ("images", "image", "urls", "url", "output", "outputs", "result", "file_url")


def _collect_outputs(value: Any, depth: int = 0) -> list[str]:
    if depth > 4:
        return []
    if isinstance(value, str):
        text = value.strip()
        return [text] if text.startswith(("http://", "https://", "data:")) else []
    if isinstance(value, list):
        found: list[str] = []
        for item in value:
            found.extend(_collect_outputs(item, depth + 1))
        return found
    if isinstance(value, Mapping):
        for key in _OUTPUT_KEYS:
            if key in value:
                found = _collect_outputs(value[key], depth + 1)
                if found:
                    return found
    return []


def _error_words(body: Any) -> str:
    """Every error-ish text of a body joined, for keyword matching."""
    parts: list[str] = []
    if isinstance(body, Mapping):
        for key in (
            "error_code",
            "error_message",
            "message",
            "msg",
            "error",
            "code",
            "type",
            "detail",
            "reason",
        ):
            value = body.get(key)
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, Mapping):
                parts.append(_error_words(value))
    elif isinstance(body, str):
        parts.append(body)
    return " ".join(p for p in parts if p)


def _reason_detail(task: Mapping[str, Any], task_id: str) -> str:
    words = _error_words({k: task.get(k) for k in ("error_code", "error_message")})
    return f"{task_id}: {words[:DETAIL_LIMIT]}" if words else task_id


def _failure(task: Mapping[str, Any], task_id: str) -> ProviderError:
    """A failed task: ContentRefused when error_code/error_message name a safety decision."""
    words = _error_words({k: task.get(k) for k in ("error_code", "error_message", "error", "message")})
    detail = _reason_detail(task, task_id)
    if SAFETY_RE.search(words):
        return ContentRefused(provider=PROVIDER, detail=detail)
    reason = error_text({k: task.get(k) for k in ("error_message", "error", "message")}) or ""
    if reason:
        return TaskFailed(
            "The provider could not generate the image: {reason}",
            reason=reason[:200],
            provider=PROVIDER,
            detail=detail,
        )
    return TaskFailed(provider=PROVIDER, detail=detail)


__all__ = ["MODELS", "ModelSchema", "MountseaProvider", "gpt_image_size", "gpt_size_allowed"]
