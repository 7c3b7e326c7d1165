"""LimitPolicy: the operator's USER_DAILY_LIMIT / USER_HOURLY_LIMIT are ceilings servers can't lift."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.limits import LimitPolicy
from bot.moderation.policy import exceeds_ceiling, within_ceiling
from bot.moderation.service import capped_note, describe_limit
from bot.storage import Database, GuildPolicy, RoleLimit, open_database
from tests.conftest import make_settings

GUILD = 42
EVERYONE = GUILD  # Discord's @everyone role has the server's id
ARTISTS = 7
USER = 1


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """SQLite and PostgreSQL: the policy's numbers go through the moderation repository's SQL."""
    database = await open_database(database_url)
    try:
        yield database
    finally:
        await database.close()


async def limits(
    db: Database,
    *,
    operator: tuple[int, int] = (25, 10),
    server: tuple[int | None, int | None] = (None, None),
    roles: dict[int, tuple[int | None, int | None]] | None = None,
    member_roles: tuple[int, ...] = (EVERYONE,),
) -> tuple[int | None, int | None]:
    settings = make_settings(user_daily_limit=operator[0], user_hourly_limit=operator[1])
    await db.moderation.save_policy(
        GuildPolicy(guild_id=GUILD, daily_limit=server[0], hourly_limit=server[1]), 0.0
    )
    for role_id, (daily, hourly) in (roles or {}).items():
        await db.moderation.set_role_limit(RoleLimit(GUILD, role_id, daily, hourly), 0.0)
    got = await LimitPolicy(settings, db.moderation).limits_for(USER, GUILD, member_roles)
    return got.daily, got.hourly


async def test_a_server_cannot_lift_the_operators_limits(db: Database) -> None:
    # "0 = unlimited" and a huge number both stop at the operator's values.
    assert await limits(db, server=(0, 0)) == (25, 10)
    assert await limits(db, server=(1000, 1000)) == (25, 10)
    # Not set: the operator's values.
    assert await limits(db, server=(None, None)) == (25, 10)


async def test_a_role_on_everyone_cannot_lift_them_either(db: Database) -> None:
    assert await limits(db, server=(0, 1000), roles={EVERYONE: (1000, 0)}) == (25, 10)
    both = (EVERYONE, ARTISTS)
    assert await limits(db, roles={EVERYONE: (0, 0), ARTISTS: (500, 500)}, member_roles=both) == (25, 10)


async def test_servers_and_roles_may_lower_and_roles_may_raise_within_the_ceiling(db: Database) -> None:
    assert await limits(db, server=(5, 2)) == (5, 2)
    # A role is more generous than the server, up to the ceiling.
    both = (EVERYONE, ARTISTS)
    assert await limits(db, server=(1, 1), roles={ARTISTS: (20, 50)}, member_roles=both) == (20, 10)
    # Someone without the role keeps the server's values.
    assert await limits(db, server=(1, 1), roles={ARTISTS: (20, 50)}) == (1, 1)
    # A role may also lower a field; a field the role leaves unset stays the server's.
    assert await limits(db, server=(10, 5), roles={EVERYONE: (3, None)}) == (3, 5)


async def test_operator_zero_means_no_ceiling(db: Database) -> None:
    assert await limits(db, operator=(0, 0), server=(1000, 0)) == (1000, None)
    assert await limits(db, operator=(0, 10), roles={EVERYONE: (0, 0)}) == (None, 10)
    assert await limits(db, operator=(0, 0)) == (None, None)


async def test_dms_use_the_operators_limits(db: Database) -> None:
    settings = make_settings(user_daily_limit=25, user_hourly_limit=0)
    got = await LimitPolicy(settings, db.moderation).limits_for(USER, None)
    assert (got.daily, got.hourly) == (25, None)


def test_ceiling_helpers() -> None:
    assert within_ceiling(25, None) == 25
    assert within_ceiling(25, 0) == 25
    assert within_ceiling(25, 3) == 3
    assert within_ceiling(25, 30) == 25
    assert within_ceiling(0, 30) == 30
    assert within_ceiling(0, 0) is None
    assert exceeds_ceiling(25, 0) and exceeds_ceiling(25, 26)
    assert not exceeds_ceiling(25, 25) and not exceeds_ceiling(25, None) and not exceeds_ceiling(0, 0)


def test_what_admins_are_told() -> None:
    settings = make_settings(user_daily_limit=25, user_hourly_limit=10)
    note = capped_note(settings, daily_limit=0, hourly_limit=1000)
    assert note is not None and "daily unlimited → 25" in str(note) and "hourly 1000 → 10" in str(note)
    assert capped_note(settings, daily_limit=5, hourly_limit=None) is None
    assert capped_note(make_settings(user_daily_limit=0), daily_limit=1000) is None
    assert str(describe_limit(1000, 25)).startswith("25 ")
    assert str(describe_limit(None, 25)) == "bot default (25)"
    assert str(describe_limit(0, 0)) == "unlimited"
    assert str(describe_limit(5, 25)) == "5"
