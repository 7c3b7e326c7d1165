"""SingleFlight, and the caches built on it: a flood of callers makes one load per key."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cryptography.fernet import Fernet

from bot.singleflight import SingleFlight
from bot.tenants import KeyCipher, RouteAccess, TenantService
from tests.conftest import make_settings


async def test_callers_during_a_load_share_it_and_later_ones_load_again() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    loads: list[int] = []
    release = asyncio.Event()

    async def load() -> int:
        loads.append(1)
        await release.wait()
        return len(loads)

    waiting = [asyncio.create_task(flight.run("k", load)) for _ in range(50)]
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 50 and len(loads) == 1
    assert await flight.run("k", load) == 2  # finished: the next caller loads anew


async def test_an_error_reaches_every_waiter_and_is_not_kept() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("database down")

    results = await asyncio.gather(*(flight.run("k", failing) for _ in range(5)), return_exceptions=True)
    assert calls == 1 and all(isinstance(r, RuntimeError) for r in results)

    async def ok() -> int:
        return 7

    assert await flight.run("k", ok) == 7


async def test_a_waiter_that_gives_up_does_not_cancel_the_load_and_forget_starts_a_new_one() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "old rows"

    first = asyncio.create_task(flight.run("k", slow))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flight.run("k", slow), 0.01)
    flight.forget("k")  # the data changed: new callers must not get the running load's answer

    async def fresh() -> str:
        return "new rows"

    assert await flight.run("k", fresh) == "new rows"
    release.set()
    assert await first == "old rows"


class CountingRepo:
    """The tenant repository's two reads, counted (a unit test of the cache in front of it)."""

    def __init__(self, cipher: KeyCipher) -> None:
        self.provider_reads = 0
        self.key_reads = 0
        self.secret = cipher.encrypt("server-key")

    async def providers(self, guild_id: int) -> tuple[frozenset[str], bool]:
        self.provider_reads += 1
        await asyncio.sleep(0.01)
        return frozenset({"listenhub"}), True

    async def keys(self, guild_id: int) -> list[Any]:
        self.key_reads += 1
        await asyncio.sleep(0.01)
        return [type("Row", (), {"provider": "listenhub", "secret": self.secret})()]

    async def fallback(self, guild_id: int) -> bool:
        return True


async def test_a_flood_of_commands_reads_a_servers_keys_once() -> None:
    settings = make_settings(palette_secret_key=Fernet.generate_key().decode())
    service = TenantService(None, settings)  # type: ignore[arg-type]
    assert service.cipher is not None
    repo = service.repo = CountingRepo(service.cipher)  # type: ignore[assignment]
    accesses = await asyncio.gather(*(service.access(1) for _ in range(200)))
    assert set(accesses) == {RouteAccess(frozenset({"listenhub"}), True)} and repo.provider_reads == 1
    creds = await asyncio.gather(*(service.credentials(1) for _ in range(200)))
    assert repo.key_reads == 1
    assert all(c is not None and c.key_for("listenhub").get_secret_value() == "server-key" for c in creds)
    assert len({id(c) for c in creds}) == 200  # each job its own copy (it records refused keys)
    service.invalidate(1)
    await service.access(1)
    assert repo.provider_reads == 2
