"""Pieces the synchronous fake providers share: scripted answers and result image sizes."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any


def image_dimensions(nominal: int, ratio: str | None, scale: float) -> tuple[int, int]:
    """Pixel size for a nominal size (1024 for 1K...) and ``W:H`` ratio: long side = nominal x scale."""
    long_side = max(8, round(nominal * scale))
    w, h = (int(x) for x in (ratio or "1:1").split(":"))
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side


@dataclass
class Scripted:
    """One queued answer. ``kind``: response | delay | truncated | malformed."""

    kind: str
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    times: int | None = 1  # None: forever
    #: A response waits until the test sets this event (to act while a call is in flight).
    gate: asyncio.Event | None = None


class ScriptQueue(deque[Scripted]):
    """Answers a test queued; each is used ``times`` times (None: for every later call)."""

    def take(self) -> Scripted | None:
        if not self:
            return None
        item = self[0]
        if item.times is not None:
            item.times -= 1
            if item.times <= 0:
                self.popleft()
        return item


class KeyRing:
    """Keys a fake provider accepts besides its own (``extra``), and the key every call carried."""

    def __init__(self) -> None:
        self.extra: set[str] = set()
        #: (request path, bearer key or None) of every call that reached an authorization check.
        self.used: list[tuple[str, str | None]] = []

    def check(self, request: Any, main: str) -> bool:
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        self.used.append((request.path, key))
        return key is not None and (key == main or key in self.extra)

    def keys_used(self) -> list[str | None]:
        return [key for _path, key in self.used]
