"""ModerationService: pre-defer checks read memory once warm; every change is seen at once; ban expiry."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bot.moderation.policy import RequestContext
from bot.moderation.service import Banned, ModerationService, PromptBlocked
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
        assert sum(repo.calls.values()) == 3  # one load: policy, blocklist, bans
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
