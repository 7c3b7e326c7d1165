"""The one-trip SQLite cursor (bot/storage/sqlite_driver.py): in use with the installed versions, one
call on aiosqlite's thread per statement, and the results SQLAlchemy reads are the stock adapter's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage import sqlite_driver
from bot.storage.engine import create_engine

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("n", sa.Integer, nullable=False, default=0),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call handed to an aiosqlite connection's thread, by function."""
    calls: list[Any] = []
    original = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return calls


def test_the_installed_versions_get_the_one_trip_adapter(engine: AsyncEngine) -> None:
    # If an upgrade of aiosqlite or SQLAlchemy changes what the module leans on, this fails instead of
    # the bot quietly going back to four trips per statement.
    assert sqlite_driver.dbapi() is not None
    assert isinstance(engine.dialect.dbapi, sqlite_driver.OneTripDBAPI)


async def test_a_statement_is_one_trip_to_the_thread(engine: AsyncEngine, trips: list[Any]) -> None:
    async with engine.connect() as conn:
        await conn.execute(sa.select(items.c.id))  # warm the pool and the statement cache
        await conn.rollback()
        trips.clear()
        rows = (await conn.execute(sa.select(items.c.id).where(items.c.n > 0))).all()
        assert rows == []
        statement_trips = [fn for fn in trips if fn is sqlite_driver._run]
        # BEGIN is its own trip (engine.py); the SELECT, its rows and its cursor are one more.
        assert len(statement_trips) == 1
        assert len(trips) == 2


async def test_results_match_the_dbapi(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(items.insert().values(name="a", n=1))
        assert inserted.inserted_primary_key == (1,)
        many = await conn.execute(items.insert(), [{"name": "b", "n": 2}, {"name": "c", "n": 3}])
        assert many.rowcount == 2
        returned = await conn.execute(
            items.update().where(items.c.n >= 2).values(n=items.c.n + 10).returning(items.c.name, items.c.n)
        )
        assert sorted(returned.all()) == [("b", 12), ("c", 13)]
        updated = await conn.execute(items.update().where(items.c.name == "a").values(n=5))
        assert updated.rowcount == 1
        assert not updated.returns_rows
        missing = await conn.execute(items.delete().where(items.c.name == "nobody"))
        assert missing.rowcount == 0
        result = await conn.execute(sa.select(items.c.name, items.c.n).order_by(items.c.name))
        assert list(result.keys()) == ["name", "n"]
        assert result.first() == ("a", 5)  # first() closes the result with rows left: nothing leaks
        assert (await conn.execute(sa.select(sa.func.count()).select_from(items))).scalar_one() == 3
        pragma = await conn.exec_driver_sql("PRAGMA foreign_keys")
        assert pragma.scalar_one() == 1  # engine.py's connect hook ran through the same cursor


async def test_errors_are_sqlalchemys_and_the_transaction_rolls_back(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(items.insert().values(name="a"))
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(items.insert().values(name="b"))
            await conn.execute(items.insert().values(name="a"))  # unique
    async with engine.connect() as conn:
        names = (await conn.execute(sa.select(items.c.name))).scalars().all()
    assert names == ["a"]
    with pytest.raises(sa.exc.OperationalError):
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELEC nothing")


def test_unexpected_layouts_fall_back_to_the_stock_adapter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(aiosqlite.Connection, "_execute")
    assert sqlite_driver.dbapi() is None
    engine = create_engine(f"sqlite:///{tmp_path / 'stock.db'}")
    assert not isinstance(engine.dialect.dbapi, sqlite_driver.OneTripDBAPI)
