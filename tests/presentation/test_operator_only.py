"""Provider balances and provider health are the operator's business: the bot's owner (or its team's admins
and developers) sees them, server managers see their own usage and the queue (issue 13, item 9)."""

from __future__ import annotations

from typing import Any

from tests.presentation.conftest import Palette
from tests.presentation.test_moderation import MANAGER


def fields_of(message: Any) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0].get("fields", [])}


async def quota_fields(palette: Palette, user: Any) -> dict[str, str]:
    ix = await palette.fake.invoke_slash(user, palette.channel, "quota")
    await ix.wait_for(lambda i: bool(i.original and i.original.embeds), timeout=10)
    return fields_of(ix.original)


async def status_fields(palette: Palette, user: Any) -> dict[str, str]:
    ix = await palette.admin(user, "status")
    await ix.wait_for(lambda i: bool(i.original and i.original.embeds and not i.original.loading), timeout=10)
    assert ix.ephemeral
    return fields_of(ix.original)


async def test_provider_balances_and_health_are_for_the_bots_owner_only(palette: Palette) -> None:
    await palette.result_message(await palette.imagine(palette.alice, "a fox"))
    await palette.idle()
    manager = palette.member("manager", permissions=MANAGER)
    quota = await quota_fields(palette, manager)
    assert "Today (24 h)" in quota and "Provider balances" not in quota
    status = await status_fields(palette, manager)
    assert status["Queue"] == "0 waiting · 0 generating"
    assert status["This server (24 h)"] == "1 image"  # one image, singular
    assert not any("listenhub" in name or "mountsea" in name for name in status), status

    owner = palette.fake.app_owner
    palette.fake.add_member(palette.guild, owner, permissions=MANAGER)
    quota = await quota_fields(palette, owner)
    assert "listenhub" in quota["Provider balances"] and "credits" in quota["Provider balances"]
    status = await status_fields(palette, owner)
    assert "breaker closed" in next(v for k, v in status.items() if k.endswith("listenhub"))
    assert status["This server (24 h)"] == "1 image"  # one image, singular


async def test_a_team_owned_app_shows_balances_to_team_admins_and_developers(palette: Palette) -> None:
    lead, dev, viewer, manager = (
        palette.member(n, permissions=MANAGER) for n in ("lead", "dev", "viewer", "mgr")
    )
    palette.fake.set_team(lead, [(dev, "developer"), (viewer, "read_only")])
    for user, sees in ((lead, True), (dev, True), (viewer, False), (manager, False)):
        quota = await quota_fields(palette, user)
        assert ("Provider balances" in quota) is sees, user.username
        status = await status_fields(palette, user)
        assert any(name.endswith("listenhub") for name in status) is sees, user.username
