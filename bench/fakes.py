"""The fakes the benchmark runs in its own process: the test suite's fakes, made cheap to serve at volume.

* :class:`BenchDiscord` is the tests' :class:`FakeDiscord` that also stamps when each interaction got its
  final message with a file, and (optionally) drops uploaded bytes once seen, so 1000 results do not pile
  up in the benchmark process.
* :class:`BenchListenHub` is the tests' :class:`FakeListenHub` with a lean generation handler: it parses the
  request, waits ``latency`` seconds (``asyncio.sleep``, never blocking), and answers with a response body
  built once per image size and sent from a file (``sendfile``: a 4K answer is 31 MB of JSON, which the
  fake would otherwise copy through its own loop on the cores the bot is measured on), so the fake costs
  next to nothing per call. It counts requests in flight.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image, ImageFilter

from tests.fakes.discord import FakeDiscord, Message
from tests.fakes.providers.common import image_dimensions
from tests.fakes.providers.listenhub import SIZES, FakeListenHub


def photo_png(width: int, height: int) -> bytes:
    """A PNG that compresses like a real render (gradients + grain): ~1.4 MB at 1K, ~23 MB at 4K.

    JPEG q92 brings the 4K one to ~3 MB, like a photo, so fitting it under 10 MiB is realistic work.
    """
    gradient = Image.linear_gradient("L").resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    grain = Image.blend(
        Image.effect_noise((width, height), 40).filter(ImageFilter.GaussianBlur(1.2)),
        Image.effect_noise((width, height), 12),
        0.5,
    )
    img = Image.merge(
        "RGB",
        (
            Image.blend(gradient, grain, 0.5),
            Image.blend(radial, grain, 0.4),
            Image.blend(gradient.transpose(Image.Transpose.ROTATE_90), grain, 0.6),
        ),
    )
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


@functools.lru_cache(maxsize=4)
def cached_photo_png(width: int, height: int) -> bytes:
    """:func:`photo_png`, made once per size per benchmark run (a 4K one takes seconds)."""
    return photo_png(width, height)


class BenchListenHub(FakeListenHub):
    def __init__(self, *, latency: float = 1.0) -> None:
        super().__init__(scale=1.0, processing_delay=latency)
        self.latency = latency
        self._bodies: dict[tuple[int, int], Path] = {}
        self._body_dir = tempfile.TemporaryDirectory(prefix="palette-bench-bodies-")
        self.png_sizes: dict[tuple[int, int], int] = {}
        #: Seconds spent inside generate calls, summed, and the first call's start and last one's end:
        #: how busy the provider's slots were (``bench.scenarios.slot_use``).
        self.busy_s = 0.0
        self.first_call_at: float | None = None
        self.last_end_at: float | None = None

    def prepare(self, size: str, ratio: str = "1:1") -> None:
        """Build the answer for ``size`` now (a 4K PNG takes seconds to make)."""
        self._body(*image_dimensions(SIZES[size], ratio, self.scale))

    def _body(self, width: int, height: int) -> Path:
        key = (width, height)
        path = self._bodies.get(key)
        if path is None:
            png = cached_photo_png(width, height)
            self.png_sizes[key] = len(png)
            part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode("ascii")}}
            body = json.dumps(
                {
                    "candidates": [
                        {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
                    ],
                    "modelVersion": "gemini-3-pro-image",
                }
            ).encode()
            path = Path(self._body_dir.name) / f"{width}x{height}.json"
            path.write_bytes(body)
            self._bodies[key] = path
        return path

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.calls["generate"] += 1
        started = time.monotonic()
        self.request_times.append(started)
        if self.first_call_at is None:
            self.first_call_at = started
        try:
            body = await request.json()
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return web.json_response({"code": 21007, "message": "Invalid API key"}, status=401)
            config = body.get("imageConfig") or {}
            size = config.get("imageSize", "2K")
            width, height = image_dimensions(SIZES[size], config.get("aspectRatio"), self.scale)
            await asyncio.sleep(self.latency)
            body = self._body(width, height)  # made by prepare() beforehand for the sizes a scenario uses
            return web.FileResponse(body, headers={"Content-Type": "application/json"})
        finally:
            self.in_flight -= 1
            self.last_end_at = time.monotonic()
            self.busy_s += self.last_end_at - started


class BenchDiscord(FakeDiscord):
    def __init__(self, *, keep_files: bool = False) -> None:
        super().__init__()
        self.keep_files = keep_files
        #: interaction id -> monotonic time its final message (one with files) appeared.
        self.done_at: dict[int, float] = {}
        #: interaction id -> (filename, size) of the files delivered.
        self.delivered: dict[int, list[tuple[str, int]]] = {}
        #: Interactions whose result came as a new channel message (the bot's fallback when it cannot
        #: edit the status message), not on the interaction's own message.
        self.in_channel: set[int] = set()
        #: prompt -> interaction id (the benchmark's prompts are unique), to attribute channel results:
        #: the result embed's title is the prompt.
        self.by_prompt: dict[str, int] = {}
        # Interactions are only ever created by slash commands here, so the base class's scan of every
        # interaction for a matching source message (component interactions) is not needed.

    def _message_changed(self, msg: Message) -> None:
        interaction_id = msg.interaction_id
        if interaction_id is None and msg.files and msg.embeds:
            interaction_id = self.by_prompt.get(str(msg.embeds[0].get("title", "")))
            if interaction_id is not None and interaction_id not in self.done_at:
                self.in_channel.add(interaction_id)
        if interaction_id is not None:
            if msg.files and not msg.deleted and not msg.loading and interaction_id not in self.done_at:
                self.done_at[interaction_id] = time.monotonic()
                self.delivered[interaction_id] = [(name, len(data)) for name, data, _ in msg.files]
                if not self.keep_files:
                    self._drop_files(msg)
            ix = self.interactions.get(interaction_id)
            if ix is not None:
                ix._changed()
        self._state_changed()

    def _drop_files(self, msg: Message) -> None:
        for attachment in msg.attachments:
            self.cdn.pop(int(attachment["id"]), None)
        msg.files = [(name, b"", ctype) for name, _data, ctype in msg.files]
        self.requests.clear()  # recorded multipart bodies hold the uploads too

    def summary(self) -> dict[str, Any]:
        return {"interactions": len(self.interactions), "done": len(self.done_at)}
