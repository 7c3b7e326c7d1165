"""Loopback HTTP servers for fakes: an aiohttp app on 127.0.0.1 with a request log."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[str, str, bytes, str]] = field(default_factory=list)  # (field, filename, data, type)


class FakeServer:
    """Runs an aiohttp application on an ephemeral loopback port."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def record(self, request: web.Request) -> RecordedRequest:
        """Read and log a request body (JSON or multipart) and return the record."""
        rec = RecordedRequest(
            request.method,
            request.path,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
        )
        ctype = request.content_type
        if ctype == "application/json":
            rec.json = await request.json()
        elif ctype == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if part.filename is not None:
                    data = await part.read(decode=False)
                    rec.files.append(
                        (part.name or "", part.filename, bytes(data), part.headers.get("Content-Type", ""))
                    )
                else:
                    rec.form[part.name or ""] = await part.text()
        self.requests.append(rec)
        return rec


class TrickleServer(FakeServer):
    """Answers every GET with an "image" that never ends: one byte every ``interval`` seconds, so no single
    read waits long enough to time out. Stops when :attr:`release` is set (then ends the body, which is no
    valid image) or after ``limit`` seconds; counts clients that hung up on it."""

    PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

    def __init__(self, interval: float = 0.05, limit: float = 90.0) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._trickle)
        super().__init__(app)
        self.interval = interval
        self.limit = limit
        self.release = asyncio.Event()
        #: Requests being answered right now, all requests so far, and those whose client went away.
        self.active = 0
        self.started = 0
        self.hung_up = 0
        self._changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        self.started += 1
        self.active += 1
        await self._notify()
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            await response.write(self.PNG_SIGNATURE)
            loop = asyncio.get_running_loop()
            stop_at = loop.time() + self.limit
            while not self.release.is_set() and loop.time() < stop_at:
                await response.write(b"\0")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), self.interval)
            await response.write_eof()
        except ConnectionError:
            self.hung_up += 1
        finally:
            self.active -= 1
            await self._notify()
        return response

    async def wait_until(self, predicate: Callable[[TrickleServer], bool], timeout: float = 15) -> None:
        """Wait until ``predicate(self)`` holds; raise TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def stop(self) -> None:
        self.release.set()
        await super().stop()


def png_bytes(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 30, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def noisy_png(width: int, height: int) -> bytes:
    """A PNG that does not compress (random pixels): big like a real 4K render."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48, color: tuple[int, int, int] = (10, 120, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG", quality=90)
    return buf.getvalue()
