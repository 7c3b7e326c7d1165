"""Every change of a server's moderation state bumps its version, in the same transaction (other
processes drop their cached state when it moves)."""

from __future__ import annotations

import time

import pytest

from bot.storage import Ban, Database, GuildPolicy, RoleLimit


async def versions(db: Database) -> dict[int, int]:
    return {guild: version for guild, version, _ in await db.moderation.versions_since(0.0)}


async def test_each_moderation_write_bumps_that_servers_version(db: Database) -> None:
    repo = db.moderation
    assert await versions(db) == {}
    await repo.save_policy(GuildPolicy(1, daily_limit=5), now=100.0)
    assert await versions(db) == {1: 1}
    await repo.save_policy(GuildPolicy(1, daily_limit=6, allowed_channels=(3, 4)), now=101.0)
    assert (await repo.get_policy(1)).daily_limit == 6
    await repo.set_role_limit(RoleLimit(1, 50, daily_limit=9), now=102.0)
    await repo.set_role_limit(RoleLimit(1, 50, daily_limit=10), now=103.0)
    assert [r.daily_limit for r in await repo.role_limits(1)] == [10]
    assert await repo.add_block(1, "word", "bad*", "all", 7, now=104.0)
    await repo.ban(Ban(1, 8, None, "spam", 7, False, 105.0))
    await repo.ban(Ban(1, 8, 999.0, "spam again", 7, True, 106.0))
    assert (await repo.get_ban(1, 8)) == Ban(1, 8, 999.0, "spam again", 7, True, 106.0)
    assert await versions(db) == {1: 7}
    assert await repo.clear_role_limit(1, 50)
    assert await repo.remove_block(1, "bad*") == 1
    assert await repo.unban(1, 8)
    assert await versions(db) == {1: 10}
    # Another server has its own counter.
    await repo.ban(Ban(2, 8, None, None, None, False, 107.0))
    assert await versions(db) == {1: 10, 2: 1}


async def test_writes_that_change_nothing_leave_the_version_alone(db: Database) -> None:
    repo = db.moderation
    await repo.add_block(1, "word", "bad", "all", None, now=1.0)
    assert await versions(db) == {1: 1}
    assert not await repo.add_block(1, "word", "bad", "all", None, now=2.0)  # already there
    assert not await repo.clear_role_limit(1, 404)
    assert await repo.remove_block(1, "nothing") == 0
    assert not await repo.unban(1, 404)
    assert await versions(db) == {1: 1}


async def test_versions_since_returns_what_moved_after_a_time(db: Database) -> None:
    repo = db.moderation
    before = time.time()
    await repo.save_policy(GuildPolicy(1), now=1.0)
    await repo.save_policy(GuildPolicy(2), now=1.0)
    rows = await repo.versions_since(before - 1)
    assert [(g, v) for g, v, _ in rows] == [(1, 1), (2, 1)]
    assert all(before - 1 < at <= time.time() + 1 for _, _, at in rows)  # wall clock, not the caller's now
    latest = max(at for _, _, at in rows)
    assert await repo.versions_since(latest) == []
    await repo.unban(2, 5)  # nothing to lift: no change
    await repo.ban(Ban(2, 5, None, None, None, False, 1.0))
    assert [(g, v) for g, v, _ in await repo.versions_since(latest)] == [(2, 2)]


async def test_a_failed_write_does_not_bump_the_version(db: Database) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the CHECK constraint (negative limit)
        await db.moderation.save_policy(GuildPolicy(1, daily_limit=-1), now=1.0)
    assert await versions(db) == {}
