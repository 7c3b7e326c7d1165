"""nano-banana-pro.net: synchronous generation that answers with image URLs.

Spec: ``shared/provider-docs/nano-banana-pro-net.md`` and the README's notes (no balance endpoint; API
access needs a Standard or Pro plan).

- ``POST api/ai/nano-banana/generate`` with ``{prompt, size: 1k|2k|4k, aspectRatio, image}`` as JSON
  (``image`` = one URL or a list of URLs) or as ``multipart/form-data`` (``image`` file parts).
- Success: ``{"model": "nano-banana-2-4k", "created": 1705123456, "images": [{"url": ...}]}``; the URLs are
  downloaded with the shared :class:`~bot.providers.transport.Downloader` (size cap, SSRF guard, no key).
- Errors: ``{"error": "..."}`` with 400 / 401 / 402 / 500; the transport's status mapping covers them.
- Plan limits: Standard = 8 references, 5 concurrent generations, 2.5 MB per image; 4K needs Standard+.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx

from bot.errors import InvalidRequest, ProviderBusy, ProviderError, ProviderUnavailable, ResultDownloadError
from bot.images import sniff_mime
from bot.providers.base import ImageProvider, ProviderRequest, ProviderResult, Reference
from bot.providers.transport import DETAIL_LIMIT, error_text, parse_retry_after

log = logging.getLogger(__name__)

NAME = "nanobanana_pro"
GENERATE_PATH = "api/ai/nano-banana/generate"

#: "Max image size 2.5MB" on every plan (decimal megabytes, as the catalog reads it).
MAX_REFERENCE_BYTES = 2_500_000

_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/heic": "heic",
    "image/heif": "heif",
}

_FOUR_K = re.compile(r"\b4\s?k\b", re.IGNORECASE)
_PLAN_WORDS = ("plan", "upgrade", "subscri", "standard", "tier", "not available", "not allowed")


def _trim(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"


def _filename(index: int, mime_type: str) -> str:
    return f"image{index}.{_EXTENSIONS.get(mime_type.lower(), 'png')}"


class NanoBananaProProvider(ImageProvider):
    """Adapter for ``https://nano-banana-pro.net`` (Nano Banana Pro behind a reseller API)."""

    name = NAME

    @staticmethod
    def error_hook(response: httpx.Response, body: Any) -> ProviderError | None:
        """Refine two undocumented-but-predictable 400s; everything else uses the status mapping."""
        if response.status_code != 400:
            return None
        text = error_text(body) or ""
        lowered = text.lower()
        # The plan table says 4K is not available on the Free plan; the error wording is not published,
        # so recognise "4K" next to plan-ish words. Still InvalidRequest (not retryable), with a message
        # the user can act on.
        if _FOUR_K.search(text) and any(word in lowered for word in _PLAN_WORDS):
            return InvalidRequest(
                "4K is not available on this provider's plan; try 1K or 2K.",
                provider=NAME,
                status=400,
                detail=text,
            )
        # Plans cap concurrent generations (Standard: 5). How the API reports going over is not
        # documented; a 400 that says so is a "busy" signal, worth retrying after a pause.
        if "concurren" in lowered:
            return ProviderBusy(
                provider=NAME,
                status=400,
                detail=text,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return None

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        """One call; the response's image URLs are all downloaded (usually exactly one)."""
        started = time.monotonic()
        fields: dict[str, str] = {"prompt": request.prompt, "size": request.resolution.lower()}
        if request.aspect_ratio is not None:
            fields["aspectRatio"] = request.aspect_ratio
        # No ``model`` field is documented: the route (nano-banana-pro) is implied by the endpoint.

        refs = request.references
        # The 2.5 MB cap applies to every image the API takes, fetched by URL or uploaded; we can only
        # check the bytes we hold (the orchestrator already enforces it upstream).
        for ref in refs:
            if ref.data is not None and len(ref.data) > MAX_REFERENCE_BYTES:
                raise InvalidRequest(
                    "A reference image is larger than this provider's 2.5 MB limit.",
                    provider=self.name,
                    detail=f"{len(ref.data)} bytes",
                )
        if all(ref.url for ref in refs):
            # All references reachable by URL (or none at all): plain JSON, the documented cheap path.
            # A reference that has both bytes and a URL is sent by URL (the URL serves those same bytes).
            body: dict[str, Any] = dict(fields)
            urls = [ref.url for ref in refs if ref.url]
            if len(urls) == 1:
                body["image"] = urls[0]
            elif urls:
                body["image"] = urls
            response = await self.transport.request("POST", GENERATE_PATH, json_body=body)
        else:
            # Some reference exists only as bytes: upload every reference as a multipart file part.
            files = await self._upload_parts(refs)
            response = await self.transport.request("POST", GENERATE_PATH, data=fields, files=files)

        outputs, provider_model = self._parse(response)
        images = await self._fetch_outputs(outputs)
        return ProviderResult(
            images=images,
            provider=self.name,
            provider_model=provider_model or request.model_id,
            latency_s=time.monotonic() - started,
        )

    async def _upload_parts(self, refs: tuple[Reference, ...]) -> list[tuple[str, tuple[str, bytes, str]]]:
        """``("image", (filename, bytes, content type))`` per reference, in order.

        A reference known only by URL is downloaded first (with the SSRF-guarded downloader), because the
        docs do not say whether a multipart request may mix URLs with uploads.
        """

        async def one(index: int, ref: Reference) -> tuple[str, tuple[str, bytes, str]]:
            data, mime = ref.data, ref.mime_type
            if data is None:
                assert ref.url is not None  # Reference guarantees data or url
                try:
                    data, _declared = await self.transport.downloader.fetch(ref.url)
                except ResultDownloadError as exc:
                    raise InvalidRequest(
                        "A reference image could not be downloaded.", provider=self.name, detail=exc.detail
                    ) from exc
                if len(data) > MAX_REFERENCE_BYTES:
                    raise InvalidRequest(
                        "A reference image is larger than this provider's 2.5 MB limit.",
                        provider=self.name,
                        detail=f"{len(data)} bytes",
                    )
                mime = sniff_mime(data) or mime
            return "image", (_filename(index, mime), data, mime)

        return list(await asyncio.gather(*(one(i, ref) for i, ref in enumerate(refs, start=1))))

    def _parse(self, body: Any) -> tuple[list[str], str | None]:
        """Result URLs (or data URIs) and the ``model`` the provider reports."""
        if not isinstance(body, Mapping) or "images" not in body:
            text = error_text(body) if isinstance(body, Mapping) else None
            log.debug("nanobanana_pro: unexpected response shape: %s", _trim(repr(body)))
            raise ProviderUnavailable(
                "The provider sent a malformed response.",
                provider=self.name,
                status=200,
                detail=_trim(text or repr(body)),
            )
        model = body.get("model")
        entries = body.get("images")
        if not isinstance(entries, list):
            entries = [entries] if entries else []
        outputs: list[str] = []
        for entry in entries:
            # Documented: {"url": ...}. Tolerated: a bare URL string, an alternative key, inline base64.
            if isinstance(entry, str) and entry.strip():
                outputs.append(entry.strip())
            elif isinstance(entry, Mapping):
                url = entry.get("url") or entry.get("image_url") or entry.get("uri")
                if isinstance(url, str) and url.strip():
                    outputs.append(url.strip())
                elif isinstance(entry.get("b64_json"), str):
                    mime = entry.get("mime_type") or entry.get("mimeType") or "image/png"
                    outputs.append(f"data:{mime};base64,{entry['b64_json']}")
        if not outputs:
            # The docs describe no refusal shape, so an empty list is not assumed to be a safety block:
            # it is reported as a provider fault (retryable, possibly on another route).
            raise ProviderUnavailable(
                "The provider finished without an image.",
                provider=self.name,
                status=200,
                detail=_trim(f"no image in response: {body!r}"),
            )
        return outputs, model if isinstance(model, str) and model.strip() else None
