"""Identify buckets, the command sync claim and shard heartbeats in the database (SQLite and PostgreSQL),
and the identify gate built on them."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.config import Settings, parse_shard_ids
from bot.ops.shards import IdentifyGate, claim_command_sync
from bot.storage import Database
from bot.storage.shards import SqlShardRepository


async def test_a_bucket_is_granted_once_per_interval_across_holders(db: Database) -> None:
    repo = SqlShardRepository(db.engine)
    assert await repo.claim_identify(0, "a", 100.0, 5.0) == 0.0
    # Another process (or the same one) asking within the interval is told how long to wait.
    assert await repo.claim_identify(0, "b", 101.0, 5.0) == pytest.approx(4.0)
    assert await repo.claim_identify(1, "b", 101.0, 5.0) == 0.0  # another bucket has its own turn
    assert await repo.claim_identify(0, "b", 105.0, 5.0) == 0.0


async def test_concurrent_claims_of_one_bucket_grant_exactly_one(db: Database) -> None:
    repo = SqlShardRepository(db.engine)
    waits = await asyncio.gather(*(repo.claim_identify(3, f"p{i}", 50.0, 5.0) for i in range(8)))
    assert sorted(waits).count(0.0) == 1


async def test_the_first_gateway_to_see_a_new_command_tree_syncs_it(db: Database) -> None:
    repo = SqlShardRepository(db.engine)
    assert await repo.claim_sync("global", "d1", "a", 10.0, 60.0)
    assert not await repo.claim_sync("global", "d1", "b", 11.0, 60.0)
    assert await repo.claim_sync("global", "d2", "b", 12.0, 60.0)  # the tree changed
    assert await repo.claim_sync("global", "d2", "c", 80.0, 60.0)  # b died before syncing: stale
    recorded = {"value": None}

    async def later() -> str | None:
        return recorded["value"]

    async def record() -> None:
        await asyncio.sleep(0.3)
        recorded["value"] = "d2"

    task = asyncio.create_task(record())
    assert not await claim_command_sync(repo, "global", "d2", "d", later, wait=10, clock=lambda: 81.0)
    assert recorded["value"] == "d2"  # it waited for the one syncing
    await task


async def test_shard_heartbeats_name_the_process_and_go_with_it(db: Database) -> None:
    repo = SqlShardRepository(db.engine)
    await repo.beat("gw-a", "host-a", 11, 4, [(0, 0.05), (1, None)], 100.0)
    await repo.beat("gw-b", "host-b", 12, 4, [(2, 0.07)], 100.0)
    await repo.beat("gw-a", "host-a", 11, 4, [(1, 0.04)], 105.0)  # shard 0 moved away
    rows = await repo.shards()
    assert [(r.shard_id, r.worker_id, r.latency_s) for r in rows] == [(1, "gw-a", 0.04), (2, "gw-b", 0.07)]
    assert [r.shard_id for r in await repo.shards(fresher_than=101.0)] == [1]
    await repo.forget("gw-a")
    assert [r.worker_id for r in await repo.shards()] == ["gw-b"]


async def test_identify_gate_uses_shard_id_modulo_max_concurrency(db: Database) -> None:
    repo = SqlShardRepository(db.engine)

    async def two() -> int:
        return 2

    gate = IdentifyGate(repo, "gw", two, interval=0.5)
    started = time.monotonic()
    # Shards 0 and 1 are in different buckets: both go at once; shard 2 shares shard 0's bucket and waits.
    await asyncio.wait_for(asyncio.gather(gate.wait_turn(0), gate.wait_turn(1)), 2)
    assert time.monotonic() - started < 0.4
    await asyncio.wait_for(gate.wait_turn(2), 5)
    assert time.monotonic() - started >= 0.45
    assert sorted(sid for sid, _ in gate.granted[:2]) == [0, 1] and gate.granted[2][0] == 2


def test_shard_ids_accept_lists_ranges_and_mixes() -> None:
    assert parse_shard_ids("0,1") == [0, 1]
    assert parse_shard_ids("0-3") == [0, 1, 2, 3]
    assert parse_shard_ids(" 5, 0-2 ,2") == [0, 1, 2, 5]
    for bad in ("", "a", "3-1", "-1", "1-x"):
        with pytest.raises(ValueError):
            parse_shard_ids(bad)
    settings = Settings(_env_file=None, shard_ids="1-2", shard_count=4)
    assert settings.sharded and settings.shard_id_list() == [1, 2]
    assert not Settings(_env_file=None).sharded
