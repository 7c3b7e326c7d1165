"""One load per key at a time: callers that ask while a load is under way share its result.

The caches in front of the database (moderation state, a server's provider keys) and the image store's
thumbnails use it, so that a flood of commands arriving before the first load finished makes one query
(or one thumbnail), not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """``await load()``, unless a load for ``key`` is running: then its result (or its error)."""
        pending = self._pending.get(key)
        if pending is not None:
            # Shielded: a caller that gives up does not cancel the load the others wait for.
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(value)
            return value
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]

    def forget(self, key: K) -> None:
        """Callers from now on start a load of their own (the data changed while one was running); the
        running one still answers those already waiting for it."""
        self._pending.pop(key, None)
