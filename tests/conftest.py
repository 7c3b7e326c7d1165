"""Shared fixtures: settings that never reach a real host and never sleep for long."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import Settings


def make_settings(**overrides: object) -> Settings:
    """Settings isolated from the developer's `.env` and environment, with near-zero retry delays."""
    base: dict[str, object] = {
        "discord_token": None,
        "listenhub_api_key": None,
        "nanobanana_pro_api_key": None,
        "apimart_api_key": None,
        "mountsea_api_key": None,
        "retry_backoff_base": 0.001,
        "retry_backoff_max": 0.01,
        "retry_after_cap": 0.05,
        "poll_interval": 0.01,
        "task_deadline": 5.0,
        "http_read_timeout": 5.0,
        "http_connect_timeout": 2.0,
        "download_timeout": 5.0,
        "allow_private_urls": True,
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)  # type: ignore[arg-type]


@pytest.fixture
def settings_factory():
    return make_settings


# --- databases: the same tests on SQLite and on a real PostgreSQL server ---

POSTGRES_ADMIN_URL = os.environ.get("PALETTE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


_POSTGRES_CHECKED: list[str | None] = []


async def _postgres_unavailable_reason() -> str | None:
    """None when the test server answers; otherwise why not (checked once per session)."""
    if not _POSTGRES_CHECKED:
        import asyncpg

        try:
            conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        except Exception as exc:
            _POSTGRES_CHECKED.append(
                f"no PostgreSQL server answers at {POSTGRES_ADMIN_URL} ({type(exc).__name__})"
            )
        else:
            await conn.close()
            _POSTGRES_CHECKED.append(None)
    return _POSTGRES_CHECKED[0]


async def require_postgres() -> None:
    """Skip (or, under CI, fail) when no PostgreSQL server answers: CI must run every PostgreSQL test."""
    reason = await _postgres_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL tests must run under CI: {reason}")
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test (its URL); dropped afterwards."""
    import asyncpg

    await require_postgres()
    name = f"palette_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A DATABASE_URL for an empty database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'palette.db'}"
        return
    async with fresh_postgres_database() as url:
        yield url
