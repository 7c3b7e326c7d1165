"""Databases for the SQLAlchemy storage tests: tables made from :data:`bot.storage.schema.metadata`.

One place to switch to the Alembic migrations once they exist (``create_tables``); every test runs on
SQLite and on PostgreSQL through the ``database_url`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage import schema
from bot.storage.engine import create_engine

T0 = 1_700_000_000.0


async def create_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
    finally:
        await engine.dispose()


@pytest.fixture
async def sql_url(database_url: str) -> str:
    """An empty database with Palette's tables."""
    await create_tables(database_url)
    return database_url


@pytest.fixture
async def engines(sql_url: str) -> AsyncIterator[Callable[[], AsyncEngine]]:
    """Makes engines on the test database, each with its own pool (like separate processes)."""
    made: list[AsyncEngine] = []

    def make() -> AsyncEngine:
        engine = create_engine(sql_url)
        made.append(engine)
        return engine

    try:
        yield make
    finally:
        for engine in made:
            await engine.dispose()


@pytest.fixture
async def engine(engines: Callable[[], AsyncEngine]) -> AsyncEngine:
    return engines()


async def add_job(
    engine: AsyncEngine,
    user_id: int,
    *,
    created_at: float = T0,
    queue_provider: str | None = "p",
    **columns: Any,
) -> int:
    """A queued job, inserted as a plain row (the id)."""
    values: dict[str, Any] = {
        "user_id": user_id,
        "kind": "imagine",
        "model": "m",
        "prompt": "a cat",
        "count": 1,
        "reserved": 1,
        "created_at": created_at,
        "queue_provider": queue_provider,
        "status": "queued",
    }
    values.update(columns)
    async with engine.begin() as conn:
        result = await conn.execute(insert(schema.jobs).values(**values).returning(schema.jobs.c.id))
        return int(result.scalar_one())
