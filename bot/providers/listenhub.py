"""ListenHub (Marswave) OpenAPI: synchronous image generation returning the raw Gemini response.

Spec: ``shared/provider-docs/listenhub.md`` (current model names), ``listenhub-preview-model-names.md``
(the same API under the older ``-preview`` names) and the README's notes on the subscription endpoint
and Gemini safety blocks.

- ``POST v1/images/generation`` takes ``{provider, model, prompt, imageConfig, referenceImages}`` and
  answers ``{"candidates": [{"content": {"parts": [{"inlineData": {"mimeType", "data"}}]}}]}``.
- A 200 without an image is a *refusal* (safety filter, or the model answered in words only): it is
  reported as :class:`ContentRefused`, never as a success and never as a crash.
- Pure-free accounts can get a "busy" answer (``reason: free_relax_busy | free_relax_timeout``): nothing
  was charged, retry later; :meth:`ListenHubProvider.error_hook` maps it to :class:`ProviderBusy`.
- ``GET v1/user/subscription`` answers ``{code, message, data, request_id}``; code 21007 = bad API key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx

from bot.errors import (
    AuthError,
    ContentRefused,
    ProviderBusy,
    ProviderError,
    ProviderUnavailable,
)
from bot.providers.base import (
    Balance,
    GeneratedImage,
    ImageProvider,
    ProviderRequest,
    ProviderResult,
    Reference,
)
from bot.providers.parsing import InlinePayloads, SpooledPayload, remove_payload_file
from bot.providers.transport import (
    DETAIL_LIMIT,
    b64decode_async,
    b64encode_async,
    error_text,
    parse_retry_after,
)

log = logging.getLogger(__name__)

NAME = "listenhub"
GENERATE_PATH = "v1/images/generation"
SUBSCRIPTION_PATH = "v1/user/subscription"

#: ``code`` in ListenHub's envelope meaning "the API key is invalid".
INVALID_KEY_CODE = 21007

#: The earlier doc page names the Gemini models with a ``-preview`` suffix; the current page drops it.
#: Both spellings are accepted by the API, so :meth:`ListenHubProvider.generate` sends the model id
#: exactly as the catalog (or an operator override) gave it: if ListenHub ever retires one spelling,
#: changing the catalog is enough, and the adapter never silently swaps a model behind the operator's back.
#: The table is used only to look up per-model facts (pricing, defaults) under one canonical name.
MODEL_ALIASES: dict[str, str] = {
    "gemini-3-pro-image-preview": "gemini-3-pro-image",
    "gemini-3.1-flash-image-preview": "gemini-3.1-flash-image",
}
DEFAULT_MODEL = "gemini-3-pro-image"
OPENAI_MODELS = frozenset({"gpt-image-2"})

#: GPT-Image-2 credit prices per output size ("Image Size Tiers"). Gemini prices are not published.
GPT_IMAGE_2_CREDITS: dict[str, float] = {"1K": 4, "2K": 6, "4K": 10}

#: Busy signals of the pure-free "relax" lane: retry later, nothing was charged.
BUSY_REASONS = frozenset({"free_relax_busy", "free_relax_timeout"})

#: Gemini ``finishReason`` values that mean the image was withheld on purpose (safety, policy,
#: recitation) or that the model produced no image. Upper-cased before comparison.
REFUSAL_FINISH_REASONS = frozenset(
    {
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "NO_IMAGE",
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "LANGUAGE",
    }
)

#: Keys a ``freeUsages`` entry might use when it is an object instead of a bare count. The docs only say
#: "the freeUsages map"; the web app's payloads have been seen both ways, so parse defensively.
_FREE_USAGE_COUNT_KEYS = ("remaining", "available", "count", "balance", "left", "quota", "value", "usages")


def normalize_model(model_id: str) -> str:
    """The current (suffix-less) name of a ListenHub model; unknown names are returned unchanged."""
    key = model_id.strip()
    return MODEL_ALIASES.get(key.lower(), key)


def price_credits(model_id: str, resolution: str) -> float | None:
    """Documented credit price of one image, or None (Gemini prices are not published)."""
    if normalize_model(model_id) in OPENAI_MODELS:
        return GPT_IMAGE_2_CREDITS.get(resolution.upper())
    return None


def _trim(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"


def _get(mapping: Mapping[str, Any], *keys: str) -> Any:
    """The first present key among camelCase / snake_case spellings."""
    for key in keys:
        if key in mapping:
            return mapping[key]
    return None


def _busy_metadata(body: Any) -> Mapping[str, Any] | None:
    """The mapping carrying ``reason``/``failReason`` = free_relax_*, at the top level or one level down."""
    if not isinstance(body, Mapping):
        return None
    candidates: list[Mapping[str, Any]] = [body]
    # The docs only say the metadata "appears in the error response"; envelopes nest payloads under
    # ``data`` and some gateways under ``error``, so look there too.
    for key in ("data", "error"):
        nested = body.get(key)
        if isinstance(nested, Mapping):
            candidates.append(nested)
    for mapping in candidates:
        for key in ("reason", "failReason", "fail_reason"):
            value = mapping.get(key)
            if isinstance(value, str) and value.strip().lower() in BUSY_REASONS:
                return mapping
    return None


def _envelope_code(body: Any) -> int | None:
    if not isinstance(body, Mapping):
        return None
    code = body.get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code)
    return None


def _free_usage_count(value: Any) -> int | None:
    """A ``freeUsages`` value as a count: an int, a numeric string, or an object with a count-like field."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            return None
    if isinstance(value, Mapping):
        for key in _FREE_USAGE_COUNT_KEYS:
            count = _free_usage_count(value.get(key))
            if count is not None:
                return count
    return None


def _as_timestamp(value: Any) -> str | None:
    """``resetAt`` as text. Undocumented type: an ISO string is kept; epoch seconds/ms become ISO-8601."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value  # 1e11 s is the year 5138: must be ms
        try:
            return datetime.fromtimestamp(seconds, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            return str(value)
    text = str(value).strip()
    return text or None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class ListenHubProvider(ImageProvider):
    """Adapter for ``https://api.marswave.ai/openapi`` (Gemini 3 Pro / 3.1 Flash Image, GPT-Image-2)."""

    name = NAME

    # --- errors ---------------------------------------------------------------------------------------------

    @staticmethod
    def error_hook(response: httpx.Response, body: Any) -> ProviderError | None:
        """Busy metadata -> :class:`ProviderBusy` (retried); envelope code 21007 -> :class:`AuthError`.

        Anything else falls back to the transport's status mapping (400 InvalidRequest, 402 OutOfCredits,
        429 RateLimited, 5xx ProviderUnavailable).
        """
        status = response.status_code
        busy = _busy_metadata(body)
        if busy is not None:
            reason = str(busy.get("reason") or busy.get("failReason") or busy.get("fail_reason"))
            user_message = busy.get("userMessage") or (
                body.get("userMessage") if isinstance(body, Mapping) else None
            )
            message = _trim(user_message) if isinstance(user_message, str) and user_message.strip() else None
            return ProviderBusy(
                message,
                provider=NAME,
                status=status,
                detail=reason,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if _envelope_code(body) == INVALID_KEY_CODE:
            return AuthError(provider=NAME, status=status, detail=error_text(body))
        return None

    # --- generation -----------------------------------------------------------------------------------------

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        """One call, one image (the catalog's ``max_per_call`` is 1; the orchestrator splits counts)."""
        started = time.monotonic()
        body = await self.build_body(request)
        # A 4K image is ~30 MB of base64 JSON: decode it while it streams in rather than holding it all.
        response, payloads = await self.transport.request_streaming("POST", GENERATE_PATH, json_body=body)
        try:
            images = await self._parse_images(response, payloads)
        finally:
            # Payload files nobody took (drafts, or all of them when the answer was refused).
            payloads.discard(keep_taken=True)
        model = body["model"]
        cost = price_credits(model, request.resolution)
        return ProviderResult(
            images=images,
            provider=self.name,
            provider_model=model,
            latency_s=time.monotonic() - started,
            # The table prices a generation (one call); free quota may make it free, which we cannot see.
            cost=cost,
            cost_unit="credits" if cost is not None else None,
        )

    async def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        """The documented JSON body. Reference bytes are base64-encoded off the event loop."""
        model = request.model_id.strip() or DEFAULT_MODEL
        provider = request.params.get("provider") or (
            "openai" if normalize_model(model) in OPENAI_MODELS else "google"
        )
        image_config: dict[str, str] = {"imageSize": request.resolution.upper()}
        if request.aspect_ratio is not None:  # None: GPT-Image-2 picks the ratio itself ("auto")
            image_config["aspectRatio"] = request.aspect_ratio
        body: dict[str, Any] = {
            "provider": provider,
            "model": model,
            "prompt": request.prompt,
            "imageConfig": image_config,
        }
        if request.references:
            body["referenceImages"] = list(
                await asyncio.gather(*(self._reference_part(ref) for ref in request.references))
            )
        return body

    @staticmethod
    async def _reference_part(ref: Reference) -> dict[str, Any]:
        # Bytes win over a URL when both are known: they are exactly what we validated, and ListenHub does
        # not have to fetch (possibly expiring) attachment URLs. The docs warn that inline references may be
        # throttled harder at peak; the transport's 429 handling covers that.
        if ref.data is not None:
            return {"inlineData": {"data": await b64encode_async(ref.data), "mimeType": ref.mime_type}}
        return {"fileData": {"fileUri": ref.url, "mimeType": ref.mime_type}}

    async def _parse_images(self, body: Any, payloads: InlinePayloads | None = None) -> list[GeneratedImage]:
        responses = list(_response_objects(body))
        image_parts: list[tuple[Mapping[str, Any], bool]] = []  # (inlineData, is a "thought" draft)
        texts: list[str] = []
        finish_reasons: list[str] = []
        block_reasons: list[str] = []
        has_candidates = False
        for obj in responses:
            feedback = _get(obj, "promptFeedback", "prompt_feedback")
            if isinstance(feedback, Mapping):
                reason = _get(feedback, "blockReason", "block_reason")
                if reason:
                    block_reasons.append(str(reason))
                message = _get(feedback, "blockReasonMessage", "block_reason_message")
                if isinstance(message, str) and message.strip():
                    texts.append(message)
            candidates = obj.get("candidates")
            if not isinstance(candidates, list):
                continue
            for candidate in candidates:
                if not isinstance(candidate, Mapping):
                    continue
                has_candidates = True
                reason = _get(candidate, "finishReason", "finish_reason")
                if reason:
                    finish_reasons.append(str(reason))
                finish_message = _get(candidate, "finishMessage", "finish_message")
                if isinstance(finish_message, str) and finish_message.strip():
                    texts.append(finish_message)
                content = candidate.get("content")
                parts = content.get("parts") if isinstance(content, Mapping) else None
                for part in parts if isinstance(parts, list) else ():
                    if not isinstance(part, Mapping):
                        continue
                    inline = _get(part, "inlineData", "inline_data")
                    if isinstance(inline, Mapping) and inline.get("data"):
                        image_parts.append((inline, bool(part.get("thought"))))
                    elif (
                        isinstance(part.get("text"), str) and part["text"].strip() and not part.get("thought")
                    ):
                        texts.append(part["text"])

        # Gemini 3 can return interim "thought" images when thoughts are included; they are drafts, so keep
        # them only if the answer has nothing else.
        final = [inline for inline, thought in image_parts if not thought] or [i for i, _ in image_parts]
        if final:
            return await self._decode_images(final, payloads)

        if block_reasons or has_candidates:
            refusal = [f"blockReason={r}" for r in block_reasons] + [
                f"finishReason={r}" for r in finish_reasons
            ]
            if texts:
                refusal.append("text: " + " ".join(texts))
            known = {r.upper() for r in finish_reasons} & REFUSAL_FINISH_REASONS
            if block_reasons or known or texts:
                raise ContentRefused(provider=self.name, status=200, detail=_trim("; ".join(refusal)))
            # Candidates with an unexpected finishReason (MAX_TOKENS, OTHER, none at all) and nothing to
            # show: the docs do not call that a refusal, so treat it as a provider fault (retryable).
            raise ProviderUnavailable(
                "The provider finished without an image.",
                provider=self.name,
                status=200,
                detail=_trim("; ".join(refusal) or "candidates without content"),
            )
        self._raise_no_payload(body)

    def _raise_no_payload(self, body: Any) -> NoReturn:
        """A 200 without any Gemini payload (no candidates, no promptFeedback)."""
        # The body can still be the API's own envelope (bad key, busy lane, other failure); the docs only
        # show those on error statuses, so handle them here too rather than calling them malformed.
        error = self.error_hook(httpx.Response(200), body)
        if error is not None:
            raise error
        code = _envelope_code(body)
        if code not in (None, 0):
            raise ProviderUnavailable(
                provider=self.name, status=200, detail=_trim(f"code {code}: {error_text(body)}")
            )
        log.debug("listenhub: unexpected response shape: %s", _trim(repr(body)))
        raise ProviderUnavailable(
            "The provider sent a malformed response.",
            provider=self.name,
            status=200,
            detail=_trim(repr(body)) if body is not None else "empty body",
        )

    async def _decode_images(
        self, parts: list[Mapping[str, Any]], payloads: InlinePayloads | None = None
    ) -> list[GeneratedImage]:
        async def one(inline: Mapping[str, Any]) -> GeneratedImage:
            data = inline.get("data")
            if not isinstance(data, str):
                raise ProviderUnavailable(
                    "The provider sent a malformed response.", provider=self.name, detail="inlineData.data"
                )
            streamed = payloads.payload(data) if payloads is not None else None
            declared = _get(inline, "mimeType", "mime_type")
            mime = declared if isinstance(declared, str) else None
            if isinstance(streamed, SpooledPayload):  # decoded to the worker's spool
                return await self._image_from_file(streamed, mime)
            raw = streamed if streamed is not None else await b64decode_async(data, provider=self.name)
            return await self._image_from_bytes(raw, mime)

        results = await asyncio.gather(*(one(p) for p in parts), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for image in results:  # the images that were read are not returned: drop their files
                if isinstance(image, GeneratedImage) and image.path is not None:
                    remove_payload_file(SpooledPayload(image.path, image.file_size))
            raise failed[0]
        return [r for r in results if isinstance(r, GeneratedImage)]

    # --- account --------------------------------------------------------------------------------------------

    async def balance(self) -> Balance:
        """Credits, free quotas and plan from ``GET v1/user/subscription``."""
        body = await self.transport.request("GET", SUBSCRIPTION_PATH)
        code = _envelope_code(body)
        if code == INVALID_KEY_CODE:
            raise AuthError(provider=self.name, detail=error_text(body))
        if not isinstance(body, Mapping) or code is None:
            raise ProviderUnavailable(
                "The provider sent a malformed response.", provider=self.name, detail=_trim(repr(body))
            )
        if code != 0:
            message = error_text(body)
            if message:
                raise ProviderUnavailable(
                    "The provider could not report the balance: {text}",
                    text=message,
                    provider=self.name,
                    detail=f"code {code}: {message}",
                )
            raise ProviderUnavailable(provider=self.name, detail=f"code {code}: {message}")
        data = body.get("data")
        if not isinstance(data, Mapping):
            data = {}
        free_usages: dict[str, int] = {}
        raw_free = data.get("freeUsages")
        if isinstance(raw_free, Mapping):
            for key, value in raw_free.items():
                count = _free_usage_count(value)
                if count is not None:
                    free_usages[str(key)] = count
                else:
                    log.debug("listenhub: unreadable freeUsages[%r] = %r", key, value)
        plan_info = data.get("subscriptionPlan")
        plan: str | None = None
        if isinstance(plan_info, Mapping) and plan_info.get("name"):
            plan = str(plan_info["name"])
        elif isinstance(plan_info, str) and plan_info.strip():
            plan = plan_info.strip()
        return Balance(
            provider=self.name,
            credits=_as_float(data.get("totalAvailableCredits")),
            free_usages=free_usages,
            plan=plan,
            resets_at=_as_timestamp(data.get("resetAt")),
        )


def _response_objects(body: Any) -> Iterator[Mapping[str, Any]]:
    """The Gemini response object(s) in a body.

    The docs say the endpoint "streams the raw model output"; the example is one object, but Gemini's
    streaming REST form is a JSON array of partial responses, and envelopes put payloads under ``data``.
    Accept all three.
    """
    if isinstance(body, list):
        for item in body:
            yield from _response_objects(item)
        return
    if not isinstance(body, Mapping):
        return
    if "candidates" in body or _get(body, "promptFeedback", "prompt_feedback") is not None:
        yield body
        return
    data = body.get("data")
    if isinstance(data, Mapping | list):
        yield from _response_objects(data)
