"""ModerationService: pre-defer checks read memory once warm; every change is seen at once; ban expiry."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bot.moderation import filter as filter_module
from bot.moderation import service as service_module
from bot.moderation.filter import PromptFilter
from bot.moderation.policy import RequestContext
from bot.moderation.service import (
    FILTER_THREAD_NAME,
    Banned,
    ModerationService,
    PromptBlocked,
    PromptCheckTimedOut,
)
from bot.storage import open_database
from tests.conftest import make_settings

GUILD = 42


class CountingRepo:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await method(*args, **kwargs)

        return counted


async def test_checks_read_memory_and_changes_apply_at_once() -> None:
    db = await open_database(":memory:")
    try:
        repo = CountingRepo(db.moderation)
        now = [1000.0]
        service = ModerationService(repo, make_settings(), clock=lambda: now[0])  # type: ignore[arg-type]
        ctx = RequestContext(user_id=7, guild_id=GUILD, channel_id=1)
        for _ in range(50):
            policy = await service.admit(ctx)
            await service.screen_prompt(policy, ctx, "a lighthouse")
        assert sum(repo.calls.values()) == 4  # one load: policy, blocklist, bans, role limits
        await service.add_block(GUILD, 1, "word", "gore")
        policy = await service.admit(ctx)
        with pytest.raises(PromptBlocked):
            await service.screen_prompt(policy, ctx, "g0re")
        await service.ban(GUILD, 7, actor_id=1, duration="1h", reason="test")
        with pytest.raises(Banned):
            await service.admit(ctx)
        now[0] += 3601  # expiry follows the injected clock
        assert await service.admit(ctx) is not None
        await service.update_policy(GUILD, 1, "channels", allowed_channels=(2,))
        with pytest.raises(Exception, match="isn't enabled"):
            await service.admit(ctx)
    finally:
        service.close()
        await db.close()


async def test_limits_come_from_the_cached_state_and_follow_every_change() -> None:
    """The limit policy reads the moderation service's per-server state: a warm command costs no database
    read for its limits, and a role limit or server limit change applies to the very next request."""
    from bot.limits import LimitPolicy

    db = await open_database(":memory:")
    try:
        repo = CountingRepo(db.moderation)
        settings = make_settings(user_daily_limit=20, user_hourly_limit=0)
        service = ModerationService(repo, settings)  # type: ignore[arg-type]
        policy = LimitPolicy(settings, repo, source=service.limit_policy)  # type: ignore[arg-type]
        role = 555
        assert (await policy.limits_for(7, GUILD, (role,))).daily == 20
        loaded = sum(repo.calls.values())
        for _ in range(20):
            assert (await policy.limits_for(7, GUILD, (role,))).daily == 20
        assert sum(repo.calls.values()) == loaded  # warm: memory only
        await service.set_role_limit(GUILD, 1, role, daily=5, hourly=None)
        assert (await policy.limits_for(7, GUILD, (role,))).daily == 5
        assert (await policy.limits_for(8, GUILD, ())).daily == 20  # not in that role
        await service.update_policy(GUILD, 1, "limits", daily_limit=3)
        assert (await policy.limits_for(8, GUILD, ())).daily == 3
        assert await service.clear_role_limit(GUILD, 1, role)
        assert (await policy.limits_for(7, GUILD, (role,))).daily == 3
    finally:
        service.close()
        await db.close()


async def test_server_default_model_only_when_it_can_take_the_references() -> None:
    from dataclasses import replace

    from bot.generation import GenerationSpec
    from bot.storage import GuildPolicy

    db = await open_database(":memory:")
    try:
        service = ModerationService(db.moderation, make_settings())
        policy = replace(GuildPolicy(guild_id=GUILD), default_model="gpt-image-2")  # takes 4 references
        ctx = RequestContext(user_id=7, guild_id=GUILD, channel_id=1, nsfw_channel=True)
        spec = GenerationSpec(model="nano-banana-pro", prompt="p")
        assert service.adjust(policy, ctx, spec, model_chosen=False, references=2).model == "gpt-image-2"
        assert service.adjust(policy, ctx, spec, model_chosen=False, references=6).model == "nano-banana-pro"
        assert service.adjust(policy, ctx, spec, model_chosen=True).model == "nano-banana-pro"
    finally:
        await db.close()


async def test_prompt_checks_run_on_the_filters_own_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on the event loop, and not in the default executor image work and DNS lookups share."""
    loop = asyncio.get_running_loop()
    default = ThreadPoolExecutor(2, thread_name_prefix="default-pool")
    loop.set_default_executor(default)
    seen: list[tuple[str, str]] = []
    original_check = PromptFilter.check
    original_compile = filter_module.compile_regex

    def check(self: PromptFilter, *args: Any, **kwargs: Any) -> Any:
        seen.append(("check", threading.current_thread().name))
        return original_check(self, *args, **kwargs)

    def vet(pattern: str) -> Any:
        seen.append(("vet", threading.current_thread().name))
        return original_compile(pattern)

    monkeypatch.setattr(PromptFilter, "check", check)
    monkeypatch.setattr(service_module, "compile_regex", vet)
    db = await open_database(":memory:")
    service = ModerationService(db.moderation, make_settings())
    try:
        ctx = RequestContext(user_id=7, guild_id=GUILD, channel_id=1)
        await service.add_block(GUILD, 1, "regex", r"\bdragon\d+")
        policy = await service.admit(ctx)
        await service.screen_prompt(policy, ctx, "a lighthouse")
        with pytest.raises(PromptBlocked):
            await service.screen_prompt(policy, ctx, "a dragon42")
        assert [kind for kind, _ in seen] == ["vet", "check", "check"]
        assert all(name.startswith(FILTER_THREAD_NAME) for _, name in seen), seen
        pool = service.executor
        assert pool is not default
    finally:
        service.close()
        await db.close()
        default.shutdown()
    with pytest.raises(RuntimeError):  # closed: no more work is accepted
        pool.submit(print)


async def test_a_slow_pattern_fails_closed_without_blaming_the_author() -> None:
    db = await open_database(":memory:")
    entries: list[Any] = []
    service = ModerationService(db.moderation, make_settings(), sink=entries.append)
    try:
        await service.update_policy(GUILD, 1, "auto-ban", autoban_hits=1)
        # Stored without vetting (an old database, a hand edit): catastrophic on runs of digits.
        await db.moderation.add_block(GUILD, "regex", r"(\d|\d)+x", "all", 1, 0.0)
        service.invalidate(GUILD)
        ctx = RequestContext(user_id=7, guild_id=GUILD, channel_id=1)
        for _ in range(2):
            policy = await service.admit(ctx)
            with pytest.raises(PromptCheckTimedOut) as caught:
                await service.screen_prompt(policy, ctx, "1" * 40 + "!x")
            assert "in time" in caught.value.message and "Nothing was charged" in caught.value.message
            assert "isn't allowed" not in caught.value.message
        # One mod-log entry naming the pattern (the repeat within the interval is not logged again).
        slow = [e for e in entries if e.kind == "slow_filter"]
        assert len(slow) == 1
        assert r"(\d|\d)+x" in dict(slow[0].fields)["Slow entries"]
        # No blocked-prompt record, so no auto-ban: the author did nothing wrong.
        assert not [e for e in entries if e.kind in ("blocked", "ban")]
        assert await service.active_ban(GUILD, 7) is None
        await service.screen_prompt(await service.admit(ctx), ctx, "a lighthouse")
    finally:
        service.close()
        await db.close()


async def test_a_change_during_a_load_is_not_hidden_by_that_load() -> None:
    """A request arriving after a change must not share a load that began before it (it read old rows)."""
    from bot.storage import GuildPolicy

    db = await open_database(":memory:")
    try:
        gate = asyncio.Event()
        reading = asyncio.Event()

        class SlowFirstRead:
            def __init__(self, inner: Any) -> None:
                self.inner = inner
                self.first = True

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

            async def get_policy(self, guild_id: int) -> GuildPolicy:
                policy = await self.inner.get_policy(guild_id)
                if self.first:
                    self.first = False
                    reading.set()
                    await gate.wait()  # the old rows are in hand; the change lands meanwhile
                return policy

        service = ModerationService(SlowFirstRead(db.moderation), make_settings())  # type: ignore[arg-type]
        early = asyncio.create_task(service.policy(GUILD))
        await reading.wait()
        await service.update_policy(GUILD, 1, "limits", daily_limit=1)
        late = asyncio.create_task(service.policy(GUILD))
        await asyncio.sleep(0)
        gate.set()
        assert (await early).daily_limit is None  # the caller that was already waiting: the old state
        assert (await late).daily_limit == 1
        assert (await service.policy(GUILD)).daily_limit == 1
    finally:
        service.close()
        await db.close()
