"""Fixtures for storage tests: a real SQLite file per test (tmp_path), opened through aiosqlite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.storage import Database, open_database


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    # A directory that does not exist yet: open_database must create it.
    return tmp_path / "data" / "palette.db"


@pytest.fixture
async def db(db_path: Path) -> AsyncIterator[Database]:
    database = await open_database(db_path)
    try:
        yield database
    finally:
        await database.close()
