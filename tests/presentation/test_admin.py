"""/palette: permission enforcement, limits and role overrides, channels, DMs, models — end to end."""

from __future__ import annotations

import time
from pathlib import Path

from tests.fakes.discord.models import Permission
from tests.presentation.conftest import Palette, running_palette

MANAGER = int(Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES | Permission.MANAGE_GUILD)


async def refused_privately(palette: Palette, ix) -> str:
    text = await palette.reply(ix)
    assert ix.ephemeral
    return text


async def test_palette_group_is_hidden_and_checked_server_side(palette: Palette) -> None:
    cmd = palette.fake.find_command("palette", palette.guild)
    assert cmd is not None
    assert int(cmd["default_member_permissions"]) == int(Permission.MANAGE_GUILD)
    assert cmd.get("contexts") in (None, [0]) or cmd.get("dm_permission") is False

    # Every option of every subcommand has a description.
    def walk(options):
        for o in options or []:
            assert o.get("description"), o
            walk(o.get("options"))

    walk(cmd["options"])
    # A member without Manage Server invokes it anyway (e.g. the server overrode the default): refused.
    ix = await palette.admin(palette.alice, "limits", daily=1000)
    assert "Manage Server" in await refused_privately(palette, ix)
    policy = await palette.bot.db.moderation.get_policy(palette.guild.id)
    assert policy.daily_limit is None
    for sub, options in (("ban", {"user": palette.bob}), ("blocklist add", {"pattern": "x"})):
        ix = await palette.admin(palette.alice, sub, **options)
        assert "Manage Server" in await refused_privately(palette, ix)
    assert await palette.bot.db.moderation.get_ban(palette.guild.id, palette.bob.id) is None
    assert await palette.bot.db.moderation.blocklist(palette.guild.id) == []
    # A manager may.
    manager = palette.member("manager", permissions=MANAGER)
    ix = await palette.admin(manager, "limits", daily=7)
    assert "Limits updated" in await refused_privately(palette, ix)
    assert (await palette.bot.db.moderation.get_policy(palette.guild.id)).daily_limit == 7


async def test_limits_apply_at_once_and_the_most_generous_role_wins(tmp_path: Path) -> None:
    # The operator sets no ceiling here (0 = unlimited), so a role's "unlimited" really is unlimited.
    async with running_palette(
        tmp_path, user_daily_limit=0, user_hourly_limit=0, user_max_concurrent=0
    ) as palette:
        artists = palette.fake.add_role(palette.guild, "artists")
        patrons = palette.fake.add_role(palette.guild, "patrons")
        carol = palette.member("carol", roles=(artists, patrons))
        dave = palette.member("dave", roles=(artists,))
        manager = palette.member("manager", permissions=MANAGER)
        await palette.reply(await palette.admin(manager, "limits", daily=1))
        await palette.reply(await palette.admin(manager, "role-limit", role=artists, daily=2))
        await palette.reply(await palette.admin(manager, "role-limit", role=patrons, daily=0))
        policy = palette.bot.policy
        assert (await policy.limits_for(palette.alice.id, palette.guild.id, ())).daily == 1
        assert (await policy.limits_for(dave.id, palette.guild.id, (artists.id,))).daily == 2
        assert (await policy.limits_for(carol.id, palette.guild.id, (artists.id, patrons.id))).daily is None
        # Through Discord: alice (no role) gets one image, the second is refused.
        await palette.result_message(await palette.imagine(palette.alice, "one"))
        second = await palette.imagine(palette.alice, "two")
        assert "1 of your 1 image" in await palette.reply(second)
        # dave (artists: 2) gets two.
        for i in range(2):
            await palette.result_message(await palette.imagine(dave, f"dave {i}"))
        assert "2 of your 2 images" in await palette.reply(await palette.imagine(dave, "dave 3"))
        # Clearing the override applies at once: dave is back to the server's 1 (already used 2).
        await palette.reply(await palette.admin(manager, "role-limit", role=artists, clear=True))
        assert (await policy.limits_for(dave.id, palette.guild.id, (artists.id,))).daily == 1
        await palette.idle()


async def test_server_admins_cannot_lift_the_operators_limits(tmp_path: Path) -> None:
    """USER_DAILY_LIMIT / USER_HOURLY_LIMIT are ceilings: /palette limits and role limits (even on
    @everyone) may lower them, never raise them; the admin is told when a value was capped."""
    async with running_palette(
        tmp_path, user_daily_limit=2, user_hourly_limit=5, user_max_concurrent=0
    ) as palette:
        manager = palette.member("manager", permissions=MANAGER)
        everyone = palette.guild.roles[0]
        assert everyone.id == palette.guild.id and everyone.name == "@everyone"
        ix = await palette.admin(manager, "limits", daily=0, hourly=1000)
        answer = await refused_privately(palette, ix)
        assert "Limits updated" in answer
        assert "Capped at the bot's limits" in answer and "daily unlimited → 2" in answer
        assert "hourly 1000 → 5" in answer
        ix = await palette.admin(manager, "role-limit", role=everyone, daily=1000, hourly=0)
        answer = await refused_privately(palette, ix)
        assert "daily 1000 → 2" in answer and "hourly unlimited → 5" in answer
        # /palette settings shows what applies.
        ix = await palette.admin(manager, "settings")
        await ix.wait_for(lambda i: bool(i.responses), timeout=10)
        embed = ix.responses[0]["data"]["embeds"][0]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert "daily: 2 (unlimited asked" in fields["Limits per user"]
        assert "hourly: 5 (1000 asked" in fields["Limits per user"]
        assert "daily: 2 (1000 asked" in fields["Role overrides"]
        assert "2 a day" in embed["description"]
        # The member is still held to USER_DAILY_LIMIT: the third image is refused and costs nothing.
        for i in range(2):
            await palette.result_message(await palette.imagine(palette.alice, f"picture {i}"))
        await palette.idle()
        third = await palette.imagine(palette.alice, "picture 3")
        assert "2 of your 2 images" in await palette.reply(third)
        await palette.idle()
        assert palette.listenhub.calls["generate"] == 2
        assert (await palette.bot.db.jobs.ledger_balance()).reserved == 2
        usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time())
        assert usage.daily_used == 2 and usage.in_flight == 0
        # A server may still lower them.
        await palette.reply(await palette.admin(manager, "role-limit", role=everyone, clear=True))
        ix = await palette.admin(manager, "limits", daily=1)
        answer = await refused_privately(palette, ix)
        assert "Capped" not in answer and "daily: 1" in answer
        bob = await palette.bot.policy.limits_for(palette.bob.id, palette.guild.id, (everyone.id,))
        assert bob.daily == 1


async def test_server_pool_caps_everyone(tmp_path: Path) -> None:
    async with running_palette(tmp_path, user_hourly_limit=0, user_max_concurrent=0) as palette:
        manager = palette.member("manager", permissions=MANAGER)
        await palette.reply(await palette.admin(manager, "limits", pool=2))
        await palette.result_message(await palette.imagine(palette.alice, "a"))
        await palette.result_message(await palette.imagine(palette.bob, "b"))
        refused = await palette.imagine(manager, "c")
        assert "pool" in (await palette.reply(refused)).lower() or "server" in refused.followups[-1].content
        await palette.idle()


async def test_channel_restrictions(palette: Palette) -> None:
    manager = palette.member("manager", permissions=MANAGER)
    art = palette.fake.add_channel(palette.guild, name="art-bot")
    await palette.reply(await palette.admin(manager, "channels", action="allow", channel=art))
    refused = await palette.imagine(palette.alice, "a fox")
    assert "isn't enabled in this channel" in await refused_privately(palette, refused)
    assert f"<#{art.id}>" in await palette.reply(refused)
    ok = await palette.imagine(palette.alice, "a fox", channel=art)
    await palette.result_message(ok)
    # deny the only allowed channel is refused; reset opens everything again
    ix = await palette.admin(manager, "channels", action="deny", channel=art)
    assert "no channel" in await palette.reply(ix)
    await palette.reply(await palette.admin(manager, "channels", action="reset"))
    await palette.result_message(await palette.imagine(palette.alice, "a fox again"))
    # deny from "all channels": that one is switched off, every other channel (even new ones) stays open
    answer = await palette.reply(await palette.admin(manager, "channels", action="deny", channel=art))
    assert f"all channels except <#{art.id}>" in answer
    refused = await palette.imagine(palette.alice, "a fox", channel=art)
    assert "switched off in this channel" in await palette.reply(refused)
    later = palette.fake.add_channel(palette.guild, name="made-later")
    await palette.result_message(await palette.imagine(palette.alice, "a fox later", channel=later))
    # allowing it again lifts the switch-off
    await palette.reply(await palette.admin(manager, "channels", action="allow", channel=art))
    assert (await palette.bot.db.moderation.get_policy(palette.guild.id)).denied_channels == ()
    await palette.idle()
    assert palette.listenhub.calls["generate"] == 3


async def test_dms_on_and_off(tmp_path: Path) -> None:
    for allowed in (True, False):
        async with running_palette(tmp_path / str(allowed), allow_dms=allowed) as palette:
            dm = palette.fake.add_dm_channel(palette.alice)
            ix = await palette.fake.invoke_slash(palette.alice, dm, "imagine", options={"prompt": "a cat"})
            if allowed:
                await palette.result_message(ix)
            else:
                assert "direct messages" in await refused_privately(palette, ix)
                assert palette.listenhub.calls["generate"] == 0
            await palette.idle()


async def test_models_resolution_and_count_rules(palette: Palette) -> None:
    manager = palette.member("manager", permissions=MANAGER)
    await palette.reply(await palette.admin(manager, "limits", max_resolution="1K", max_images=1))
    big = await palette.imagine(palette.alice, "a cat", model="nano-banana-pro", resolution="2K")
    assert "up to 1K" in await refused_privately(palette, big)
    many = await palette.imagine(palette.alice, "a cat", count=2)
    assert "at most 1 image" in await refused_privately(palette, many)
    models = await palette.admin(manager, "models", allowed="nano-banana", default="nano-banana")
    assert "Allowed: `nano-banana`" in await palette.reply(models)
    refused = await palette.imagine(palette.alice, "a cat", model="nano-banana-pro")
    assert "doesn't allow the model" in await refused_privately(palette, refused)
    # no model given: the server's default is used
    ok = await palette.imagine(palette.alice, "a cat")
    job = await palette.job_of(await palette.result_message(ok))
    assert job.model == "nano-banana"
    bad = await palette.admin(manager, "models", allowed="nano-banana", default="gpt-image-2")
    assert "must be one of the allowed" in await palette.reply(bad)
    await palette.idle()
    assert (await palette.bot.db.jobs.ledger_balance()).reserved == 1  # refusals cost nothing


async def test_settings_shows_the_whole_policy(palette: Palette) -> None:
    manager = palette.member("manager", permissions=MANAGER)
    role = palette.fake.add_role(palette.guild, "vip")
    await palette.reply(await palette.admin(manager, "limits", daily=5, hourly=2, pool=100))
    await palette.reply(await palette.admin(manager, "role-limit", role=role, daily=20))
    await palette.reply(await palette.admin(manager, "modrole", role=role))
    ix = await palette.admin(manager, "settings")
    await ix.wait_for(lambda i: i.responses, timeout=10)
    assert ix.ephemeral
    embed = ix.responses[0]["data"]["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Limits per user"] == "daily: 5 · hourly: 2"
    assert fields["Server daily pool"] == "100"
    assert f"<@&{role.id}>: daily: 20" in fields["Role overrides"]
    assert fields["Moderator role"] == f"<@&{role.id}>"
    assert {"Channels", "Models", "Mod log", "NSFW channels", "Blocklist", "Auto-ban"} <= set(fields)
