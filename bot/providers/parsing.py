"""Small helpers for reading provider answers whose shape the docs leave open."""

from __future__ import annotations

import binascii
import contextlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pybase64

#: Words in a failure or error text that mean the provider's safety system declined the request.
SAFETY_RE = re.compile(
    r"safety|moderation|policy|prohibited|sensitive|nsfw|content[\s_-]?filter|flagged|violat|违规|敏感",
    re.IGNORECASE,
)


def shape(value: Any, depth: int = 0) -> str:
    """A short description of a JSON value for logs (keys and types, never megabytes of base64)."""
    if depth > 2:
        return "…"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {shape(v, depth + 1)}" for k, v in list(value.items())[:12]) + "}"
    if isinstance(value, list):
        return f"[{len(value)}: {shape(value[0], depth + 1)}]" if value else "[]"
    if isinstance(value, str):
        return repr(value[:60])
    return repr(value)


@dataclass(frozen=True)
class SpooledPayload:
    """A decoded payload that went to a file instead of memory (see :class:`PayloadSink`)."""

    path: str
    size: int


class PayloadSink(Protocol):
    """Where one long payload's decoded bytes go while they stream in (the worker's image spool: memory
    within its budget, else a file). ``write`` is called on the event loop with one network chunk's
    worth of bytes (tens of KB) at a time, so it must not block: a file sink writes in a thread.
    ``drain`` is awaited after each chunk (backpressure), ``complete`` once the answer has ended: a
    payload's file may be read only after it."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def finish(self) -> bytes | SpooledPayload: ...

    async def complete(self) -> None: ...

    def discard(self) -> None: ...


#: Makes the sink of one payload, given the bytes it will probably hold (0 when unknown).
SinkFactory = Callable[[int], PayloadSink]


def remove_payload_file(payload: SpooledPayload) -> None:
    with contextlib.suppress(OSError):
        os.unlink(payload.path)


class InlinePayloads:
    """Reads a JSON answer as it streams in, decoding long base64 ``"data"`` strings on the fly.

    A 4K image inlined as base64 is ~30 MB of JSON. Parsing it whole means holding the body, a 30 MB
    string and the decoded image at once (and a long GIL-holding parse). Here each ``"data": "<base64>"``
    value of at least ``min_payload`` characters is decoded in small blocks while it arrives and replaced
    in the remaining JSON (the *skeleton*, a few hundred bytes) by a marker that :meth:`payload` resolves.
    Shorter ``"data"`` strings stay in the skeleton untouched. JSON escapes for slashes and line breaks
    are accepted.
    """

    MARKER = "\x00palette-payload:"
    _KEY = re.compile(rb'"data"\s*:\s*"')
    _WHITESPACE = b" \t\r\n"
    _WHITESPACE_BYTES = (b" ", b"\t", b"\r", b"\n")
    # JSON escapes a base64 text may carry: escaped slashes, and line breaks of wrapped base64.
    _ESCAPES = ((b"\\/", b"/"), (b"\\n", b""), (b"\\r", b""), (b"\\t", b""))

    def __init__(self, *, min_payload: int = 4096, sink: SinkFactory | None = None) -> None:
        """``sink``: where long payloads are decoded to (default: memory, uncounted). ``expected``, the
        answer's size when its headers say it, may be set before feeding: the decoded size of a payload
        is at most three quarters of it."""
        self.min_payload = min_payload
        self._sink_factory = sink
        self._sink: PayloadSink | None = None
        self._finished: dict[int, PayloadSink] = {}  # payload index -> its sink, until complete()
        self.expected = 0
        self._taken: set[int] = set()
        self._skeleton = bytearray()
        self._pending = b""
        self._inside = False
        self._raw = bytearray()  # the current value's text while it may still be a short string
        self._long = False  # the current value reached min_payload: it is being decoded
        self._carry = b""  # base64 characters not yet a multiple of 4
        self._decoded = bytearray()
        self._payloads: list[bytes | SpooledPayload] = []
        self.error: str | None = None

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        self._pending = b""
        while data:
            if not self._inside:
                match = self._KEY.search(data)
                if match is None:
                    keep = min(len(data), 32)  # a key split across chunks
                    self._skeleton += data[:-keep]
                    self._pending = data[-keep:]
                    return
                self._skeleton += data[: match.end()]
                data = data[match.end() :]
                self._inside = True
                continue
            end = data.find(b'"')
            piece, data = (data, b"") if end < 0 else (data[:end], data[end + 1 :])
            if piece.endswith(b"\\") and end < 0:  # an escape split across chunks
                self._pending, piece = piece[-1:], piece[:-1]
            self._take(piece)
            if end >= 0:
                self._close_value()

    def _take(self, piece: bytes) -> None:
        if not self._long:
            self._raw += piece
            if len(self._raw) < self.min_payload:
                return
            self._long = True
            piece, self._raw = bytes(self._raw), bytearray()
            if self._sink_factory is not None:
                self._sink = self._sink_factory(self.expected * 3 // 4)
        if self.error is not None:
            return
        if b"\\" in piece:
            for escape, plain in self._ESCAPES:
                piece = piece.replace(escape, plain)
        if any(ws in piece for ws in self._WHITESPACE_BYTES):  # wrapped base64 (rare): unwrap
            piece = piece.translate(None, self._WHITESPACE)
        text = self._carry + piece if self._carry else piece
        usable = len(text) - len(text) % 4
        try:
            # pybase64 (SIMD) decodes ~13x faster than binascii: this runs on the event loop.
            decoded = pybase64.b64decode(text if usable == len(text) else text[:usable], validate=True)
            if self._sink is not None:
                self._sink.write(decoded)
            else:
                self._decoded += decoded
        except (binascii.Error, ValueError) as exc:
            self.error = str(exc)
        self._carry = text[usable:]

    def _close_value(self) -> None:
        self._inside = False
        if not self._long:  # a short string: leave it as it was
            self._skeleton += bytes(self._raw) + b'"'
        else:
            if self._carry and self.error is None:
                self.error = f"truncated base64 ({len(self._carry)} characters left over)"
            marker = f"{self.MARKER}{len(self._payloads)}".encode().replace(b"\x00", b"\\u0000")
            self._skeleton += marker + b'"'
            sink, self._sink = self._sink, None
            if sink is None:
                self._payloads.append(bytes(self._decoded))
            else:
                self._finished[len(self._payloads)] = sink
                self._payloads.append(sink.finish())
        self._raw, self._carry, self._decoded, self._long = bytearray(), b"", bytearray(), False

    async def drain(self) -> None:
        """Call after each :meth:`feed`: waits while the payload being decoded is far ahead of its sink."""
        if self._sink is not None:
            await self._sink.drain()

    async def complete(self) -> None:
        """Call after the last :meth:`feed`: every payload's file is whole once this returns."""
        for index, sink in list(self._finished.items()):
            await sink.complete()
            self._finished.pop(index, None)

    def skeleton(self) -> bytes:
        """The answer without its payloads (call after the last :meth:`feed`). An answer that ended in the
        middle of a string gives invalid JSON, as it was."""
        return bytes(self._skeleton) + self._pending + (bytes(self._raw) if self._inside else b"")

    def payload(self, value: object) -> bytes | SpooledPayload | None:
        """The decoded bytes (or their file) behind a marker string from the skeleton; None for any other
        value. A file handed out here is the caller's to delete."""
        if isinstance(value, str) and value.startswith(self.MARKER):
            index = int(value[len(self.MARKER) :])
            self._taken.add(index)
            return self._payloads[index]
        return None

    def discard(self, *, keep_taken: bool = False) -> None:
        """Delete the files of payloads nobody took (all of them unless ``keep_taken``), and of the
        payload being decoded: an answer that failed, or drafts the adapter did not use."""
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.discard()
        for index, payload in enumerate(self._payloads):
            if isinstance(payload, SpooledPayload) and not (keep_taken and index in self._taken):
                finished = self._finished.pop(index, None)
                if finished is not None:  # its last write may still be running: the sink deletes it after
                    finished.discard()
                remove_payload_file(payload)
