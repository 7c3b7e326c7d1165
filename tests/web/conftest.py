"""Headless Chromium (Debian's package) for the browser tests. Under CI a browser that cannot start is a
failure, never a skip."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("PALETTE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A Playwright browser context on a new profile directory."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:  # pragma: no cover - dev dependency
        if _in_ci():
            pytest.fail(f"Playwright is missing under CI: {exc}")
        pytest.skip(f"Playwright is missing: {exc}")
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (make test installs Debian's chromium)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as pw:
        try:
            context = await pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1100, "height": 900},
            )
        except Exception as exc:
            if _in_ci():
                pytest.fail(f"Chromium did not start: {exc}")
            pytest.skip(f"Chromium did not start: {exc}")
        try:
            yield context
        finally:
            await context.close()
