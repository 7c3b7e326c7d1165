"""Fixtures for storage tests: each test that takes ``db`` runs on SQLite (a file in tmp_path) and on a
fresh PostgreSQL database; ``sqlite_db`` is for what only SQLite has (pragmas, backup files, file locks)."""

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
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await open_database(database_url)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def sqlite_db(db_path: Path) -> AsyncIterator[Database]:
    database = await open_database(db_path)
    try:
        yield database
    finally:
        await database.close()
