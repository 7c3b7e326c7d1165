"""Reading a real process's ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP (``METRICS_PORT=0``: the
process picks a free port and logs it)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.processes import PaletteProcess

_PORT_LINE = re.compile(r"metrics and health checks on http://127\.0\.0\.1:(\d+)")


async def ops_port(proc: PaletteProcess, timeout: float = 60) -> int:
    """The port ``proc`` serves its endpoints on (from its log)."""
    deadline = time.monotonic() + timeout
    while (match := _PORT_LINE.search(proc.current_log())) is None:
        proc.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{proc.name} logged no metrics port:\n{proc.log_tail()}")
        await asyncio.sleep(0.05)
    return int(match.group(1))


async def http_get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=10)) as response,
    ):
        return response.status, await response.text()


async def wait_status(port: int, path: str, status: int, timeout: float = 30) -> str:
    """Poll ``path`` until it answers ``status``; its body."""
    deadline = time.monotonic() + timeout
    while True:
        got, body = await http_get(port, path)
        if got == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} is still {got} after {timeout} s: {body}")
        await asyncio.sleep(0.1)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name`` with exactly ``labels`` (None when it is not on the page)."""
    return samples(text).get((name, frozenset(labels.items())))


async def wait_metric(
    port: int, name: str, predicate: Callable[[float | None], bool], timeout: float = 30, **labels: str
) -> str:
    """Poll ``/metrics`` until the sample satisfies ``predicate``; the page."""
    deadline = time.monotonic() + timeout
    while True:
        _, page = await http_get(port, "/metrics")
        got = value(page, name, **labels)
        if predicate(got):
            return page
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} is {got} after {timeout} s")
        await asyncio.sleep(0.1)
