"""Copy one Palette database into another, empty one (``python -m bot copy-db --to URL``).

Everything in :data:`bot.storage.schema.metadata` is copied row by row with its ids, parents before
children, in batches (a few rows at a time for tables that hold image bytes), so memory stays bounded
whatever the size. The source is read in one snapshot (its state at one instant, while the bot may keep
running); the target is written in one transaction, so a failed copy leaves it empty.

The ledger is copied as it is. The triggers that write ledger entries when a job is inserted or settled
are switched off for the copy's transaction (:func:`bot.storage.dialect.job_triggers_disabled`), so jobs
arrive with their final numbers and no entry is added twice; the append-only guards stay on (the copy
only inserts). PostgreSQL sequences are advanced past the copied ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import LargeBinary, Table, func, insert, select, tuple_

from bot.storage import schema
from bot.storage.db import Database
from bot.storage.dialect import advance_sequences, job_triggers_disabled

ROWS_PER_BATCH = 500
#: Tables with image bytes: at most this many rows in memory at once (references are up to 25 MiB each).
BLOB_ROWS_PER_BATCH = 4


class TargetNotEmpty(RuntimeError):
    """The target database already holds Palette data; copy-db only fills an empty one."""


@dataclass(frozen=True, slots=True)
class CopyReport:
    rows: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def tables_to_copy() -> list[Table]:
    """Every table of the schema, parents before children."""
    return list(schema.metadata.sorted_tables)


async def check_empty(db: Database) -> None:
    for table in tables_to_copy():
        if await db.fetchval(select(func.count()).select_from(table)):
            raise TargetNotEmpty(
                f"{db.url} is not empty (table {table.name} has rows); copy-db fills an empty one"
            )


async def copy_database(
    source: Database, target: Database, *, progress: Callable[[str, int], None] | None = None
) -> CopyReport:
    """Copy every row of ``source`` into ``target`` (which must be empty); see the module docstring."""
    if source.url == target.url:
        raise TargetNotEmpty(f"{target.url} is the source database itself")
    await check_empty(target)
    copied: dict[str, int] = {}
    tables = tables_to_copy()
    async with source.snapshot() as src, target.transaction() as dst:
        async with job_triggers_disabled(dst):
            for table in tables:
                pk = list(table.primary_key.columns)
                blobs = any(isinstance(c.type, LargeBinary) for c in table.columns)
                limit = BLOB_ROWS_PER_BATCH if blobs else ROWS_PER_BATCH
                page = select(table).order_by(*pk).limit(limit)
                statement = insert(table)
                last: tuple[object, ...] | None = None
                count = 0
                while True:
                    query = page
                    if last is not None:
                        key = pk[0] > last[0] if len(pk) == 1 else tuple_(*pk) > tuple_(*last)
                        query = page.where(key)
                    rows = (await src.execute(query)).all()
                    if not rows:
                        break
                    await dst.execute(statement, [dict(row._mapping) for row in rows])
                    count += len(rows)
                    last = tuple(rows[-1]._mapping[c.name] for c in pk)
                    del rows
                copied[table.name] = count
                if progress is not None:
                    progress(table.name, count)
        await advance_sequences(dst, tables)
    return CopyReport(copied)
