"""Mod-log buttons need server-wide permissions; result buttons act only on their own job's result, in its
server (issue 13, item 5)."""

from __future__ import annotations

from typing import Any

from tests.fakes.discord.models import Permission
from tests.presentation.conftest import Palette
from tests.presentation.test_moderation import setup_modlog


def entries(palette: Palette, channel: Any, title: str) -> list[Any]:
    return [
        m
        for m in palette.fake.channel_messages(channel)
        if m.embeds and title in m.embeds[0].get("title", "")
    ]


def bot_message_with_button(palette: Palette, channel: Any, custom_id: str) -> Any:
    """A message of the bot's carrying one button (as if Palette had posted it)."""
    row = {"type": 1, "components": [{"type": 2, "style": 2, "label": "?", "custom_id": custom_id}]}
    return palette.fake.create_message(channel, {"content": "not a result", "components": [row]})


async def reported(palette: Palette, log_channel: Any) -> tuple[Any, Any, Any]:
    """Alice's result, reported by Bob: (result message, its job, the report in the mod log)."""
    message = await palette.result_message(await palette.imagine(palette.alice, "a reported painting"))
    click = await palette.fake.click_button(palette.bob, message, palette.button(message, "report"))
    assert "moderators have been told" in await palette.reply(click)
    return message, await palette.job_of(message), await palette.modlog_entry(log_channel, "Reported result")


async def test_manage_messages_in_the_mod_log_channel_alone_cannot_delete_results_or_ban(
    palette: Palette,
) -> None:
    _, log_channel = await setup_modlog(palette)
    message, job, report = await reported(palette, log_channel)
    channel_mod = palette.member("channel-mod")
    palette.fake.set_channel_overwrite(log_channel, channel_mod, allow=Permission.MANAGE_MESSAGES)
    # Discord resolves the click's permissions in the mod-log channel: Manage Messages is there.
    assert palette.fake.member_permissions_in(log_channel, channel_mod) & Permission.MANAGE_MESSAGES
    for action in ("delete", "ban"):
        click = await palette.fake.click_button(channel_mod, report, f"palette:mod:{action}:{job.id}")
        assert "Only moderators" in await palette.reply(click)
        assert click.ephemeral
    assert not message.deleted
    assert await palette.bot.moderation.active_ban(palette.guild.id, palette.alice.id) is None
    assert [r.resolution for r in await palette.bot.db.moderation.reports_for_job(job.id)] == [None]
    await palette.bot.modlog.drain()
    assert not entries(palette, log_channel, "Result deleted")
    assert not entries(palette, log_channel, "Generation ban")

    # Manage Messages for the whole server (a role) is enough.
    mods = palette.fake.add_role(palette.guild, "mods", int(Permission.MANAGE_MESSAGES))
    server_mod = palette.member("server-mod", roles=(mods,))
    done = await palette.fake.click_button(server_mod, report, f"palette:mod:delete:{job.id}")
    assert "Deleted the result" in await palette.reply(done)
    assert message.deleted
    banned = await palette.fake.click_button(server_mod, report, f"palette:mod:ban:{job.id}")
    assert "can't generate here until" in await palette.reply(banned)
    assert await palette.bot.moderation.active_ban(palette.guild.id, palette.alice.id) is not None


async def test_the_servers_moderator_role_may_use_the_mod_log_buttons(palette: Palette) -> None:
    manager, log_channel = await setup_modlog(palette)
    message, job, report = await reported(palette, log_channel)
    role = palette.fake.add_role(palette.guild, "palette-mods")
    await palette.reply(await palette.admin(manager, "modrole", role=role))
    mod = palette.member("mod", roles=(role,))
    done = await palette.fake.click_button(mod, report, f"palette:mod:delete:{job.id}")
    assert "Deleted the result" in await palette.reply(done)
    assert message.deleted


# ------------------------------------------------------------------ forged result buttons


async def test_a_result_button_naming_another_servers_job_is_refused(palette: Palette) -> None:
    other = palette.fake.add_guild(name="Other server")
    palette.fake.add_member(other, palette.bob)
    theirs = await palette.result_message(
        await palette.imagine(palette.bob, "the other server's secret prompt", channel=other.default_channel)
    )
    their_job = await palette.job_of(theirs)
    _, log_channel = await setup_modlog(palette)
    for action in ("report", "reroll"):
        custom_id = f"palette:{action}:{their_job.id}"
        forged = bot_message_with_button(palette, palette.channel, custom_id)
        click = await palette.fake.click_button(palette.alice, forged, custom_id)
        assert "doesn't belong to this result" in await palette.reply(click)
        assert click.ephemeral
    await palette.idle()
    await palette.bot.modlog.drain()
    assert await palette.bot.db.moderation.reports_for_job(their_job.id) == []
    assert await palette.bot.db.fetchval("SELECT COUNT(*) FROM jobs") == 1  # no re-roll of their prompt
    assert not any("secret prompt" in str(m.embeds) for m in palette.fake.channel_messages(log_channel)), (
        "another server's prompt reached this server's mod log"
    )


async def test_a_result_button_on_a_message_that_is_not_the_jobs_result_is_refused(palette: Palette) -> None:
    result = await palette.result_message(await palette.imagine(palette.alice, "a fox"))
    job = await palette.job_of(result)
    custom_id = f"palette:delete:{job.id}"
    other = bot_message_with_button(palette, palette.channel, custom_id)
    click = await palette.fake.click_button(palette.alice, other, custom_id)
    assert "doesn't belong to this result" in await palette.reply(click)
    assert not other.deleted and not result.deleted
    # On the real result the same button works.
    real = await palette.fake.click_button(palette.alice, result, custom_id)
    assert "Deleted" in await palette.reply(real)
    assert result.deleted


async def test_buttons_still_work_on_a_result_delivered_to_the_authors_dms(palette: Palette) -> None:
    """The server's result went to a DM (the channel was closed to the bot): it is still the job's own."""
    palette.listenhub.processing_delay = 0.5
    ix = await palette.imagine(palette.alice, "private delivery")
    await ix.wait_for(lambda i: bool(i.original and "Generating" in (i.original.content or "")), timeout=10)
    palette.fake.expire_token(ix)
    palette.fake.set_bot_permissions(palette.channel, int(Permission.VIEW_CHANNEL))
    message = await palette.fake.wait_for_message(lambda m: bool(m.files), timeout=15)
    assert palette.fake.channels[message.channel_id].guild_id is None
    await palette.job_of(message)
    click = await palette.fake.click_button(palette.alice, message, palette.button(message, "delete"))
    assert "Deleted" in await palette.reply(click)
    assert message.deleted


async def test_a_click_whose_custom_id_is_not_on_the_message_is_dropped(palette: Palette) -> None:
    mine = await palette.result_message(await palette.imagine(palette.alice, "a fox"))
    theirs = await palette.result_message(await palette.imagine(palette.bob, "an owl"))
    their_job = await palette.job_of(theirs)
    forged = await palette.fake.forge_component_click(palette.alice, mine, f"palette:delete:{their_job.id}")
    # A real click dispatched after it is answered; the forged one, handled first, never was.
    real = await palette.fake.click_button(palette.bob, mine, palette.button(mine, "report"))
    assert "moderators have been told" in await palette.reply(real)
    assert not forged.responses and not forged.errors
    assert not theirs.deleted and not mine.deleted
