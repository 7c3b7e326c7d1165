"""APIMart (``https://api.apimart.ai``): asynchronous image tasks.

Spec: ``shared/provider-docs/apimart.md`` (submit) and the README there (task polling shape).

- ``POST v1/images/generations`` with ``{model, prompt, size, resolution, n, image_urls}`` answers
  ``{"code": 200, "data": [{"status": "submitted", "task_id": "task_..."}]}``.
- ``GET v1/tasks/{task_id}?language=en`` answers ``{"code": 200, "data": {"id", "status", "progress",
  "result": {"images": [{"url", "expires_at"}]}, ...}}``; ``status`` is ``pending | processing |
  completed | failed | cancelled``.

APIMart bills per successful image, so a task is submitted once and then only polled: a job that
resumes after a restart calls :meth:`ApiMartProvider.wait` with the stored task id and never pays twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from bot.errors import (
    AuthError,
    ContentRefused,
    InvalidRequest,
    OutOfCredits,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    TaskFailed,
)
from bot.providers.base import (
    ProviderRequest,
    ProviderResult,
    Reference,
    TaskProvider,
    TaskState,
    TaskStatus,
)
from bot.providers.parsing import SAFETY_RE, shape
from bot.providers.transport import DETAIL_LIMIT, b64encode_async, error_text

log = logging.getLogger(__name__)

PROVIDER = "apimart"
SUBMIT_PATH = "v1/images/generations"
TASK_PATH = "v1/tasks/{task_id}"

#: Reference formats the doc accepts ("Supported image formats: jpeg, png, webp").
REFERENCE_FORMATS: dict[str, str] = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}
MAX_REFERENCES = 14
MAX_REFERENCE_BYTES = 10 * 1024 * 1024
MAX_IMAGES_PER_CALL = 4

#: The doc gives no per-image price for Lite: it is billed by token ("a single 1K image ≈ 1120 output
#: tokens ≈ $0.0336/image", apimart.md, "Lite usage notes"). We record that as an estimate.
LITE_MODEL = "gemini-3.1-flash-lite-image"
LITE_USD_PER_IMAGE = 0.0336
COST_UNIT_ESTIMATE = "usd-estimate"

PENDING_STATUSES = frozenset({"pending", "processing", "submitted", "queued", "running", "in_progress"})
#: "completed" is documented; the other spellings are tolerated (never seen, but cheap to accept).
COMPLETED_STATUSES = frozenset({"completed", "succeeded", "success"})

#: A few malformed 2xx poll bodies in a row are tolerated (a poll is a GET: repeating it is harmless).

# APIMart looks like a new-api/one-api gateway, which reports an empty account as 403
# "insufficient_user_quota" / "用户额度不足" rather than 402; OpenAI-style gateways use
# 429 "insufficient_quota".
# ("insufficient permissions" must stay an AuthError, so "insufficient" alone is not enough.)
_NO_BALANCE_RE = re.compile(
    r"insufficient[\s_-]*(?:user[\s_-]*)?(?:balance|credits?|quota|funds?)"
    r"|not enough (?:balance|credits?|quota)|\bbalance\b|余额不足|额度不足",
    re.IGNORECASE,
)


class ApiMartProvider(TaskProvider):
    """Adapter for APIMart's image task API (``gemini-3.1-flash-lite-image``)."""

    name: ClassVar[str] = PROVIDER

    # --- errors --------------------------------------------------------------------------------------------

    @staticmethod
    def error_hook(response: httpx.Response, body: Any) -> ProviderError | None:
        """APIMart error bodies: ``{"error": {"message", "type", "code"}}`` or ``{"code", "message"|"msg"}``.

        The transport's status mapping already gives 400 -> InvalidRequest (with the text), 401/403 ->
        AuthError, 402 -> OutOfCredits, 429 -> RateLimited, 5xx -> ProviderUnavailable. Only two cases
        need help: an empty balance reported with another status, and a safety refusal sent as a 400.
        """
        status = response.status_code
        text = _error_words(body)
        if status < 500 and text and _NO_BALANCE_RE.search(text):
            return OutOfCredits(provider=PROVIDER, status=status, detail=error_text(body) or text)
        if status in (400, 422) and text and SAFETY_RE.search(text):
            return ContentRefused(provider=PROVIDER, status=status, detail=error_text(body) or text)
        return None

    # --- submit --------------------------------------------------------------------------------------------

    async def submit(self, request: ProviderRequest) -> str:
        body = await self.build_body(request)
        answer = await self._post_submit(body)
        _raise_for_envelope(answer)
        task_id = _task_id_of(answer)
        if not task_id:
            log.debug("apimart submit answer without a task id: %r", shape(answer))
            raise ProviderUnavailable(
                "The provider did not return a task id.", provider=PROVIDER, detail=shape(answer)
            )
        return task_id

    async def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        """The JSON body for ``POST v1/images/generations``."""
        if not 1 <= request.count <= MAX_IMAGES_PER_CALL:
            raise InvalidRequest(
                "APIMart makes 1 to {max} images per call.",
                max=MAX_IMAGES_PER_CALL,
                provider=PROVIDER,
                detail=f"n={request.count}",
            )
        if len(request.references) > MAX_REFERENCES:
            raise InvalidRequest(
                "APIMart accepts at most {max} reference images.",
                max=MAX_REFERENCES,
                provider=PROVIDER,
                detail=f"{len(request.references)} references",
            )
        body: dict[str, Any] = {
            "model": request.model_id,
            "prompt": request.prompt,
            "size": request.aspect_ratio or "auto",
            "resolution": request.resolution,
            # The doc warns: "Must enter a plain number (e.g., 1), do not use quotes".
            "n": int(request.count),
        }
        if request.references:
            body["image_urls"] = list(
                await asyncio.gather(*(self._reference_entry(ref) for ref in request.references))
            )
        return body

    async def _reference_entry(self, ref: Reference) -> str:
        """A data URI when we hold the bytes (no dependency on a public host), else the public URL."""
        fmt = REFERENCE_FORMATS.get(ref.mime_type.lower())
        if fmt is None:
            # The orchestrator converts references to a route's formats; this only guards against a bug.
            raise InvalidRequest(
                "APIMart accepts only JPEG, PNG or WebP reference images.",
                provider=PROVIDER,
                detail=ref.mime_type,
            )
        if ref.data is not None:
            if len(ref.data) > MAX_REFERENCE_BYTES:
                raise InvalidRequest(
                    "A reference image is larger than APIMart's 10 MB limit.",
                    provider=PROVIDER,
                    detail=f"{len(ref.data)} bytes",
                )
            return f"data:image/{fmt};base64,{await b64encode_async(ref.data)}"
        assert ref.url is not None  # Reference guarantees data or url
        return ref.url

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
        _raise_for_envelope(answer, task_id=task_id)
        data = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(data, Mapping):
            # Tolerate a bare task object (no envelope).
            data = answer if isinstance(answer, Mapping) and "status" in answer else None
        if data is None:
            log.debug("apimart poll %s: unexpected shape %r", task_id, shape(answer))
            raise ProviderUnavailable(
                "The provider sent a malformed task status.", provider=PROVIDER, detail=shape(answer)
            )
        raw = str(data.get("status") or "").strip().lower()
        progress = _progress(data.get("progress"))
        if raw in COMPLETED_STATUSES:
            outputs = _result_urls(data.get("result"))
            if not outputs:
                log.debug("apimart task %s completed without urls: %r", task_id, shape(data))
            return TaskStatus(TaskState.DONE, outputs=outputs, progress=1.0, raw_status=raw)
        if raw == "failed":
            raise _failure(data, task_id)
        if raw in ("cancelled", "canceled"):
            raise TaskFailed(
                "The generation was cancelled.", provider=PROVIDER, detail=f"{task_id}: cancelled"
            )
        if raw not in PENDING_STATUSES:
            # Not a documented status: keep polling (the deadline still bounds the wait), but say so.
            log.debug("apimart task %s: unknown status %r, still polling", task_id, raw)
        return TaskStatus(TaskState.PENDING, progress=progress, raw_status=raw or None)

    async def _get_task(self, task_id: str) -> Any:
        path = TASK_PATH.format(task_id=quote(task_id, safe=""))
        return await self.fetch_task(task_id, path, params={"language": "en"})

    async def check_access(self) -> bool:
        """APIMart publishes no account endpoint: ask for a task that cannot exist. A 404 means the key
        was accepted (authentication comes first); a 401/403 raises AuthError. Costs nothing."""
        try:
            await self.transport.request("GET", TASK_PATH.format(task_id="palette-access-check"), retry=False)
        except InvalidRequest as exc:
            if exc.status == 404:
                return True
            raise
        return True

    # --- wait ----------------------------------------------------------------------------------------------

    async def wait(
        self,
        task_id: str,
        request: ProviderRequest,
        *,
        started: float | None = None,
        deadline: float | None = None,
    ) -> ProviderResult:
        result = await super().wait(task_id, request, started=started, deadline=deadline)
        if result.provider_model == LITE_MODEL:
            result.cost = round(LITE_USD_PER_IMAGE * len(result.images), 6)
            result.cost_unit = COST_UNIT_ESTIMATE
        return result


# --- parsing helpers ----------------------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _raise_for_envelope(answer: Any, *, task_id: str | None = None) -> None:
    """An HTTP 200 whose envelope ``code`` is not 200 is an error in disguise."""
    if not isinstance(answer, Mapping) or "code" not in answer:
        return
    code = _as_int(answer.get("code"))
    # 200 is documented; 0 is the other common "ok" of such envelopes (undocumented, tolerated).
    if code is None or code == 0 or 200 <= code < 300:
        return
    text = error_text(answer)
    if task_id is not None and code == 404:
        raise TaskFailed(
            "The provider no longer knows this task.",
            provider=PROVIDER,
            status=404,
            detail=f"{task_id}: {text or 'not found'}",
        )
    raise classify_code(code, text, words=_error_words(answer))


def classify_code(code: int, text: str | None, *, words: str | None = None) -> ProviderError:
    """Map an APIMart status ``code`` (HTTP-like) and its text to a typed error."""
    words = words or text or ""
    kw: dict[str, Any] = {"provider": PROVIDER, "status": code, "detail": text}
    if code < 500 and _NO_BALANCE_RE.search(words):
        return OutOfCredits(**kw)
    if code == 402:
        return OutOfCredits(**kw)
    if code in (401, 403):
        return AuthError(**kw)
    if code == 429:
        return RateLimited(**kw)
    if code >= 500:
        return ProviderUnavailable(**kw)
    if SAFETY_RE.search(words):
        return ContentRefused(**kw)
    if text:
        return InvalidRequest("The provider rejected the request: {text}", text=text, **kw)
    return InvalidRequest(**kw)


def _error_words(body: Any) -> str:
    """Message, type and code of an error body joined, for keyword matching."""
    parts: list[str] = []
    if isinstance(body, Mapping):
        for key in ("message", "msg", "type", "code", "error", "error_message", "detail", "reason"):
            value = body.get(key)
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, Mapping):
                parts.append(_error_words(value))
    elif isinstance(body, str):
        parts.append(body)
    return " ".join(p for p in parts if p)


def _task_id_of(answer: Any) -> str | None:
    """``data[0].task_id`` as documented; also ``data`` as an object, ``id`` for ``task_id``, no envelope."""
    candidates: list[Any] = []
    if isinstance(answer, Mapping):
        data = answer.get("data")
        if isinstance(data, list):
            candidates.extend(data[:1])
        elif isinstance(data, Mapping):
            candidates.append(data)
        candidates.append(answer)
    for item in candidates:
        if not isinstance(item, Mapping):
            continue
        for key in ("task_id", "taskId", "id"):
            value = item.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
                return str(value).strip()
    return None


def _progress(value: Any) -> float | None:
    """APIMart reports progress in percent (0-100); TaskStatus holds a fraction (0-1)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(str(value).strip().rstrip("%"))
    except ValueError:
        return None
    return max(0.0, min(1.0, number / 100.0))


def _result_urls(result: Any) -> list[str]:
    """``result.images[].url``, where ``url`` is a string (one doc page) or a list (the other).

    Also tolerated: ``images`` holding plain strings, and a ``result`` that is itself that list.
    """
    images = result.get("images") if isinstance(result, Mapping) else result
    if isinstance(images, Mapping | str):
        images = [images]
    if not isinstance(images, list):
        return []
    urls: list[str] = []
    for item in images:
        value = item.get("url", item.get("urls")) if isinstance(item, Mapping) else item
        for url in value if isinstance(value, list) else [value]:
            if isinstance(url, str) and url.strip():
                urls.append(url.strip())
    return urls


def _failure(data: Mapping[str, Any], task_id: str) -> ProviderError:
    """A failed task: ContentRefused when the reason is a safety decision, else TaskFailed."""
    error = data.get("error")
    if isinstance(error, Mapping):
        reason = error_text(error) or ""
        words = _error_words(error)
    elif isinstance(error, str):
        reason = words = error.strip()
    else:  # undocumented: fall back to other common fields
        reason = error_text({k: data.get(k) for k in ("message", "msg", "fail_reason", "reason")}) or ""
        words = reason
    reason = reason[:DETAIL_LIMIT]
    detail = f"{task_id}: {reason}" if reason else task_id
    if SAFETY_RE.search(words):
        return ContentRefused(provider=PROVIDER, detail=detail)
    if reason:
        return TaskFailed(
            "The provider could not generate the image: {reason}",
            reason=reason[:200],
            provider=PROVIDER,
            detail=detail,
        )
    return TaskFailed(provider=PROVIDER, detail=detail)


__all__ = ["ApiMartProvider", "classify_code"]
