"""What every provider adapter takes and returns.

An adapter turns a :class:`ProviderRequest` (already validated against the catalog and fitted to the
route's limits) into a :class:`ProviderResult`, raising typed :mod:`bot.errors` on failure. Synchronous
APIs implement :meth:`ImageProvider.generate`; asynchronous (task + polling) APIs implement
:class:`TaskProvider`'s ``submit``/``poll`` so a job can resume from a stored task id without paying twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import httpx

from bot.errors import (
    InvalidImage,
    InvalidRequest,
    ProviderBusy,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ResultDownloadError,
    TaskFailed,
)
from bot.images import ImageInfo, sniff_mime, verify_result, verify_result_async, verify_result_file
from bot.providers.parsing import SpooledPayload, remove_payload_file
from bot.providers.transport import Transport

log = logging.getLogger(__name__)

# Generated images are at most 4K (about 16.8 MP at 4096x4096); leave room for odd ratios.
RESULT_MAX_PIXELS = 64_000_000
# Checking a small image costs less than handing it to a thread.
INLINE_CHECK_MAX = 64 * 1024


@dataclass(frozen=True)
class Reference:
    """A reference image: bytes we validated, or a public URL, or both (the URL of these exact bytes)."""

    mime_type: str
    data: bytes | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if self.data is None and self.url is None:
            raise ValueError("a reference needs data or a url")

    def __repr__(self) -> str:  # never dump megabytes into a log line
        size = len(self.data) if self.data is not None else None
        return f"Reference(mime_type={self.mime_type!r}, bytes={size}, url={self.url!r})"


@dataclass(frozen=True)
class ProviderRequest:
    model_id: str
    prompt: str
    resolution: str = "1K"
    aspect_ratio: str | None = None
    count: int = 1
    seed: int | None = None
    references: tuple[Reference, ...] = ()
    # Ask for the provider's strictest safety setting where it has one.
    strict_safety: bool = False
    # Route constants from the catalog (e.g. ListenHub's "provider": "google").
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    mime_type: str
    width: int
    height: int
    # Decoded straight to a file (the worker's image spool, beyond its memory budget): ``data`` is
    # empty and ``path`` holds the image, ``file_size`` bytes; the file belongs to whoever holds this.
    path: str | None = None
    file_size: int = 0

    @property
    def size(self) -> int:
        return self.file_size if self.path is not None else len(self.data)

    def __repr__(self) -> str:
        return f"GeneratedImage({self.mime_type}, {self.width}x{self.height}, {self.size} bytes)"


@dataclass
class ProviderResult:
    images: list[GeneratedImage]
    provider: str
    provider_model: str
    latency_s: float
    task_id: str | None = None
    # The provider's price for this result where its docs give one, with its unit ("credits", "usd").
    cost: float | None = None
    cost_unit: str | None = None


@dataclass(frozen=True)
class Balance:
    """What a provider account has left, as the provider publishes it."""

    provider: str
    credits: float | None
    free_usages: dict[str, int] = field(default_factory=dict)
    plan: str | None = None
    resets_at: str | None = None


class TaskState(StrEnum):
    PENDING = "pending"
    DONE = "done"


@dataclass
class TaskStatus:
    state: TaskState
    # Result image URLs or data URIs, when done.
    outputs: list[str] = field(default_factory=list)
    progress: float | None = None
    raw_status: str | None = None


class ImageProvider(ABC):
    """A provider adapter bound to one :class:`Transport`."""

    name: ClassVar[str]
    #: Whether the API is task-based (submit, then poll).
    asynchronous: ClassVar[bool] = False

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @staticmethod
    def error_hook(response: httpx.Response, body: Any) -> ProviderError | None:
        """Turn a provider-specific error response into a typed error (None: use the status mapping)."""
        return None

    @abstractmethod
    async def generate(self, request: ProviderRequest) -> ProviderResult: ...

    async def balance(self) -> Balance | None:
        """The account balance, or None when the provider publishes no balance endpoint."""
        return None

    async def check_access(self) -> bool | None:
        """Whether our key is accepted (raises AuthError if not); None when nothing cheap can tell.

        Never starts a generation. Providers with a balance endpoint are checked through it instead.
        """
        return None

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def _image_from_bytes(self, data: bytes, declared_mime: str | None = None) -> GeneratedImage:
        """Check that bytes returned by a provider are an image and read its size (off the event loop)."""
        mime = sniff_mime(data)
        if mime is None:
            raise ResultDownloadError(
                "The provider returned something that is not an image.",
                provider=self.name,
                detail=f"declared {declared_mime!r}, {len(data)} bytes",
            )
        try:
            # A truncated image is a provider fault, not a result (checked without decoding pixels).
            if len(data) > INLINE_CHECK_MAX:
                info = await verify_result_async(data, max_pixels=RESULT_MAX_PIXELS)
            else:
                info = verify_result(data, max_pixels=RESULT_MAX_PIXELS)
        except Exception as exc:
            raise ResultDownloadError(
                "The provider returned an image that cannot be read.", provider=self.name, detail=str(exc)
            ) from exc
        return GeneratedImage(data, info.mime_type, info.width, info.height)

    async def _image_from_file(
        self, payload: SpooledPayload, declared_mime: str | None = None
    ) -> GeneratedImage:
        """:meth:`_image_from_bytes` for a result that was decoded to a file; the file is deleted if it is
        not an image (a thread reads it through a memory map; at most two at once)."""
        try:
            async with _file_checks():
                info = await asyncio.to_thread(_verify_file, payload.path)
        except Exception as exc:
            remove_payload_file(payload)
            raise ResultDownloadError(
                "The provider returned an image that cannot be read.",
                provider=self.name,
                detail=f"declared {declared_mime!r}: {exc}",
            ) from exc
        return GeneratedImage(
            b"", info.mime_type, info.width, info.height, path=payload.path, file_size=payload.size
        )

    async def _fetch_outputs(self, outputs: list[str]) -> list[GeneratedImage]:
        """Download result URLs (or decode data URIs) concurrently.

        Images that arrived are kept when others fail (they were paid for); only when none arrived is
        the first error raised.
        """

        async def one(ref: str) -> GeneratedImage:
            data, declared = await self.transport.fetch_output(ref)
            return await self._image_from_bytes(data, declared)

        results = await asyncio.gather(*(one(o) for o in outputs), return_exceptions=True)
        images = [r for r in results if isinstance(r, GeneratedImage)]
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, ProviderError):
                raise error
        if not images and errors:
            raise errors[0]
        if errors:
            log.warning(
                "%s: %d of %d result downloads failed: %r", self.name, len(errors), len(outputs), errors[0]
            )
        return images


class TaskProvider(ImageProvider):
    """Task-based API: ``submit`` returns a task id; ``poll`` reports its state."""

    asynchronous = True

    def __init__(self, transport: Transport, *, poll_interval: float, deadline: float) -> None:
        super().__init__(transport)
        self.poll_interval = poll_interval
        self.deadline = deadline

    @abstractmethod
    async def submit(self, request: ProviderRequest) -> str: ...

    async def fetch_task(self, task_id: str, path: str, params: dict[str, str] | None = None) -> Any:
        """GET a task's status body. A 404 means the provider no longer knows the task.

        Malformed bodies and 5xx raise ProviderUnavailable, which :meth:`wait` rides out until the
        deadline (a GET is safe to repeat).
        """
        try:
            return await self.transport.request("GET", path, params=params)
        except InvalidRequest as exc:
            if exc.status == 404:
                raise TaskFailed(
                    "The provider no longer knows this task.",
                    provider=self.name,
                    status=404,
                    detail=f"{task_id}: {exc.detail or 'not found'}",
                ) from exc
            raise

    @abstractmethod
    async def poll(self, task_id: str) -> TaskStatus:
        """One status check. Raises TaskFailed when the task failed or was cancelled."""

    async def wait(
        self,
        task_id: str,
        request: ProviderRequest,
        *,
        started: float | None = None,
        deadline: float | None = None,
    ) -> ProviderResult:
        """Poll until the task is done, then download its images. Safe to call again after a restart."""
        started = time.monotonic() if started is None else started
        limit = started + (deadline if deadline is not None else self.deadline)
        while True:
            try:
                status = await self.poll(task_id)
            except (ProviderUnavailable, RateLimited, ProviderBusy) as exc:
                # The task is still running (and will be billed) at the provider: one failed status
                # check must not abandon it. Keep checking until the deadline.
                if time.monotonic() + self.poll_interval > limit:
                    raise
                log.warning("%s: status check for %s failed (%r); still waiting", self.name, task_id, exc)
                await asyncio.sleep(max(self.poll_interval, min(exc.retry_after or 0, 30)))
                continue
            if status.state is TaskState.DONE:
                if not status.outputs:
                    raise TaskFailed(
                        "The provider finished without an image.", provider=self.name, detail=task_id
                    )
                images = await self._fetch_outputs(status.outputs)
                return ProviderResult(
                    images=images,
                    provider=self.name,
                    provider_model=request.model_id,
                    latency_s=time.monotonic() - started,
                    task_id=task_id,
                )
            if time.monotonic() + self.poll_interval > limit:
                raise ProviderTimeout(
                    "The provider did not finish the image in time.", provider=self.name, detail=task_id
                )
            await asyncio.sleep(self.poll_interval)

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        started = time.monotonic()
        task_id = await self.submit(request)
        return await self.wait(task_id, request, started=started)


def _verify_file(path: str) -> ImageInfo:
    with open(path, "rb") as f:
        head = f.read(64)
    if sniff_mime(head) is None:
        raise InvalidImage("The provider returned something that is not an image.")
    return verify_result_file(path, max_pixels=RESULT_MAX_PIXELS)


_FILE_CHECKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _file_checks() -> asyncio.Semaphore:
    """Checks of results on disk running at once, per event loop (each maps its whole file: its pages count
    in the process's memory while it runs)."""
    loop = asyncio.get_running_loop()
    semaphore = _FILE_CHECKS.get(loop)
    if semaphore is None:
        semaphore = _FILE_CHECKS[loop] = asyncio.Semaphore(2)
    return semaphore
