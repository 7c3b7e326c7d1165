"""Prompt filter, bans, mod log, reports, moderator delete and purge — end to end through the fake Discord."""

from __future__ import annotations

import time

import pytest

from tests.fakes.discord.models import Permission
from tests.presentation.conftest import Palette

MANAGER = int(Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES | Permission.MANAGE_GUILD)
MODERATOR = int(Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES | Permission.MANAGE_MESSAGES)


async def setup_modlog(palette: Palette) -> tuple[object, object]:
    manager = palette.member("manager", permissions=MANAGER)
    log_channel = palette.fake.add_channel(palette.guild, name="mod-log")
    assert "Mod log" in await palette.reply(await palette.admin(manager, "modlog", channel=log_channel))
    await palette.modlog_entry(log_channel, "mod-log channel")  # the change itself is logged
    return manager, log_channel


async def test_blocked_prompt_is_private_free_logged_and_leads_to_an_auto_ban(palette: Palette) -> None:
    manager, log_channel = await setup_modlog(palette)
    add = await palette.admin(manager, "blocklist add", pattern="gore")
    assert "Blocked `gore`" in await palette.reply(add)
    auto = await palette.admin(manager, "autoban", hits=2, window="10m", duration="1h")
    assert "2 blocked prompts within 10m → 1h ban" in await palette.reply(auto)
    now = [time.time()]
    palette.bot.moderation.clock = lambda: now[0]

    first = await palette.imagine(palette.alice, "lots of G0R-E please")
    assert "isn't allowed in this server" in await palette.reply(first)
    assert first.ephemeral
    entry = await palette.modlog_entry(log_channel, "Blocked prompt")
    fields = {f["name"]: f["value"] for f in entry.embeds[0]["fields"]}
    assert str(palette.alice.id) in fields["User"] and "G0R-E" in fields["Prompt"]
    # Innocent prompts still work.
    await palette.result_message(await palette.imagine(palette.alice, "a gorgeous sunset"))
    second = await palette.imagine(palette.alice, "g o r e")
    text = await palette.reply(second)
    assert "banned from generating" in text
    await palette.modlog_entry(log_channel, "Generation ban")
    # Banned: a clear message, no job.
    banned = await palette.imagine(palette.alice, "a kitten")
    assert "banned from generating images in this server until" in await palette.reply(banned)
    # Someone else is not affected.
    await palette.result_message(await palette.imagine(palette.bob, "a kitten"))
    # The ban expires with the (injected) clock; no sleeping.
    now[0] += 3601
    await palette.result_message(await palette.imagine(palette.alice, "a kitten"))
    await palette.idle()
    assert (await palette.bot.db.jobs.ledger_balance()).reserved == 3  # blocked prompts cost nothing
    assert all("gore" not in r.json["prompt"].lower() for r in palette.listenhub.generate_requests)


async def test_invalid_and_catastrophic_regexes_are_refused_with_the_reason(palette: Palette) -> None:
    manager = palette.member("manager", permissions=MANAGER)
    bad = await palette.admin(manager, "blocklist add", pattern="(unclosed", kind="regex")
    assert "invalid" in await palette.reply(bad)
    started = time.monotonic()
    slow = await palette.admin(manager, "blocklist add", pattern="(a+)+$", kind="regex")
    assert "too slow" in await palette.reply(slow)
    assert time.monotonic() - started < 5
    ok = await palette.admin(manager, "blocklist add", pattern=r"\bdragon\s*slayer\d*", kind="regex")
    assert "Blocked" in await palette.reply(ok)
    refused = await palette.imagine(palette.alice, "a DRAGON slayer42 at dawn")
    assert "isn't allowed" in await palette.reply(refused)
    listing = await palette.admin(manager, "blocklist list")
    assert "dragon" in await palette.reply(listing)
    removed = await palette.admin(manager, "blocklist remove", pattern=r"\bdragon\s*slayer\d*")
    assert "Removed" in await palette.reply(removed)
    await palette.result_message(await palette.imagine(palette.alice, "a DRAGON slayer42 at dawn"))
    await palette.idle()


async def test_a_slow_stored_pattern_fails_closed_and_tells_the_moderators(palette: Palette) -> None:
    manager, log_channel = await setup_modlog(palette)
    await palette.reply(await palette.admin(manager, "autoban", hits=1))
    # A pattern that got in without vetting (an old database, a hand edit): catastrophic on digits.
    await palette.bot.db.moderation.add_block(
        palette.guild.id, "regex", r"(\d|\d)+x", "all", manager.id, time.time()
    )
    palette.bot.moderation.invalidate(palette.guild.id)  # as after a restart
    refused = await palette.imagine(palette.alice, "a poster of " + "1" * 40 + "!x")
    text = await palette.reply(refused)
    assert refused.ephemeral
    assert "couldn't check this prompt" in text and "Nothing was charged" in text
    assert "isn't allowed" not in text  # not the blocked-prompt wording: the author did nothing wrong
    entry = await palette.modlog_entry(log_channel, "Blocklist too slow")
    fields = {f["name"]: f["value"] for f in entry.embeds[0]["fields"]}
    assert r"(\d|\d)+x" in fields["Slow entries"]
    assert str(palette.alice.id) in fields["User"] and "blocklist remove" in fields["What to do"]
    # Nothing charged, nothing generated, no auto-ban (even at one blocked prompt): the next prompt works.
    assert palette.listenhub.calls["generate"] == 0
    assert (await palette.bot.db.jobs.ledger_balance()).reserved == 0
    assert await palette.bot.db.moderation.get_ban(palette.guild.id, palette.alice.id) is None
    await palette.result_message(await palette.imagine(palette.alice, "a poster of a lighthouse"))
    await palette.idle()
    # Removing the pattern ends it.
    await palette.reply(await palette.admin(manager, "blocklist remove", pattern=r"(\d|\d)+x"))
    await palette.result_message(await palette.imagine(palette.alice, "a poster of " + "1" * 40 + "!x"))
    await palette.idle()
    pool = palette.bot.moderation.executor
    await palette.bot.close()
    with pytest.raises(RuntimeError):  # the filter's threads stop with the bot
        pool.submit(print)


async def test_nsfw_terms_and_strict_safety(palette: Palette) -> None:
    manager = palette.member("manager", permissions=MANAGER)
    await palette.reply(await palette.admin(manager, "blocklist add", pattern="bikini", scope="sfw"))
    lounge = palette.fake.add_channel(palette.guild, name="lounge", nsfw=True)
    # Default: NSFW channels follow the same rules.
    assert "isn't allowed" in await palette.reply(
        await palette.imagine(palette.alice, "a b1kini", channel=lounge)
    )
    await palette.reply(await palette.admin(manager, "nsfw", mode="relaxed"))
    ok = await palette.imagine(palette.alice, "a bikini", channel=lounge)
    relaxed_job = await palette.job_of(await palette.result_message(ok))
    assert relaxed_job.params_dict["strict_safety"] is False
    assert "isn't allowed" in await palette.reply(await palette.imagine(palette.alice, "a bikini"))
    sfw = await palette.imagine(palette.alice, "a beach")
    assert (await palette.job_of(await palette.result_message(sfw))).params_dict["strict_safety"] is True
    await palette.idle()


async def test_every_policy_change_appears_in_the_mod_log(palette: Palette) -> None:
    manager, log_channel = await setup_modlog(palette)
    role = palette.fake.add_role(palette.guild, "mods")
    art = palette.fake.add_channel(palette.guild, name="art")
    changes = [
        ("limits", {"daily": 5, "hourly": 3, "pool": 50, "max_resolution": "2K", "max_images": 2}),
        ("role-limit", {"role": role, "daily": 20}),
        ("role-limit", {"role": role, "clear": True}),
        ("channels", {"action": "allow", "channel": art}),
        ("models", {"allowed": "nano-banana-pro", "default": "nano-banana-pro"}),
        ("modrole", {"role": role}),
        ("nsfw", {"mode": "relaxed"}),
        ("autoban", {"hits": 5}),
        ("blocklist add", {"pattern": "gore"}),
        ("blocklist remove", {"pattern": "gore"}),
        ("blocklist builtin", {"enabled": True}),
        ("ban", {"user": palette.bob, "duration": "2h", "reason": "spam"}),
        ("unban", {"user": palette.bob}),
        ("modlog", {}),
    ]
    for subcommand, options in changes:
        before = len(palette.fake.channel_messages(log_channel))
        await palette.reply(await palette.admin(manager, subcommand, **options))
        await palette.bot.modlog.drain()
        entries = palette.fake.channel_messages(log_channel)
        assert len(entries) == before + 1, f"/palette {subcommand} left no mod-log entry"
        embed = entries[-1].embeds[0]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert f"<@{manager.id}>" in fields["By"], subcommand
        if embed["title"].startswith("⚙️"):
            assert "Before" in fields and "After" in fields
    limits = next(
        m.embeds[0] for m in palette.fake.channel_messages(log_channel) if "limits" in m.embeds[0]["title"]
    )
    fields = {f["name"]: f["value"] for f in limits["fields"]}
    assert "daily per user: bot default (25)" in fields["Before"] and "daily per user: 5" in fields["After"]
    # The mod log is off now: later changes go nowhere, and nothing breaks.
    await palette.reply(await palette.admin(manager, "limits", daily=6))


async def test_generations_are_logged_and_a_report_reaches_moderators_with_buttons(palette: Palette) -> None:
    manager, log_channel = await setup_modlog(palette)
    message = await palette.result_message(await palette.imagine(palette.alice, "a suspicious painting"))
    gen = await palette.modlog_entry(log_channel, "Generation")
    fields = {f["name"]: f["value"] for f in gen.embeds[0]["fields"]}
    assert "a suspicious painting" in fields["Prompt"] and f"/{message.id})" in fields["Result"]
    # Bob reports it.
    click = await palette.fake.click_button(palette.bob, message, palette.button(message, "report"))
    assert "moderators have been told" in await palette.reply(click)
    report = await palette.modlog_entry(log_channel, "Reported result")
    job = await palette.job_of(message)
    assert (await palette.bot.db.moderation.reports_for_job(job.id))[0].reporter_id == palette.bob.id
    delete_id = f"palette:mod:delete:{job.id}"
    ban_id = f"palette:mod:ban:{job.id}"
    # Not a moderator: refused.
    nope = await palette.fake.click_button(palette.bob, report, delete_id)
    assert "Only moderators" in await palette.reply(nope)
    assert not message.deleted
    # A member with the moderator role may.
    role = palette.fake.add_role(palette.guild, "mods")
    await palette.reply(await palette.admin(manager, "modrole", role=role))
    mod = palette.member("mod", roles=(role,))
    done = await palette.fake.click_button(mod, report, delete_id)
    assert "Deleted the result" in await palette.reply(done)
    assert message.deleted
    banned = await palette.fake.click_button(mod, report, ban_id)
    assert "can't generate here until" in await palette.reply(banned)
    assert await palette.bot.moderation.active_ban(palette.guild.id, palette.alice.id) is not None
    assert [r.resolution for r in await palette.bot.db.moderation.reports_for_job(job.id)] == ["deleted"]
    await palette.modlog_entry(log_channel, "Result deleted by a moderator")


async def test_moderators_can_delete_any_result(palette: Palette) -> None:
    message = await palette.result_message(await palette.imagine(palette.alice, "a fox"))
    mod = palette.member("mod", permissions=MODERATOR)
    click = await palette.fake.click_button(mod, message, palette.button(message, "delete"))
    await click.wait_for(lambda i: bool(i.followups), timeout=10)
    assert message.deleted


async def test_purge_deletes_a_users_results_after_confirmation(palette: Palette) -> None:
    manager, log_channel = await setup_modlog(palette)
    mine = [await palette.result_message(await palette.imagine(palette.alice, f"fox {i}")) for i in range(2)]
    other = await palette.result_message(await palette.imagine(palette.bob, "owl"))
    await palette.idle()
    ix = await palette.admin(manager, "purge", user=palette.alice)
    assert "Delete 2 message(s)" in await palette.reply(ix)
    prompt = ix.original
    cancel = await palette.fake.click_button(manager, prompt, "palette:purge:cancel")
    await cancel.wait_for_response()
    assert not any(m.deleted for m in mine)
    ix = await palette.admin(manager, "purge", user=palette.alice)
    await palette.reply(ix)
    confirm = await palette.fake.click_button(manager, ix.original, "palette:purge:confirm")
    await confirm.wait_for(lambda i: "Deleted 2" in (i.original.content if i.original else ""), timeout=10)
    assert all(m.deleted for m in mine) and not other.deleted
    entry = await palette.modlog_entry(log_channel, "Purged")
    assert {f["name"]: f["value"] for f in entry.embeds[0]["fields"]}["Messages deleted"] == "2"


async def test_history_clear_removes_the_users_data(palette: Palette) -> None:
    await palette.result_message(await palette.imagine(palette.alice, "my secret prompt"))
    await palette.result_message(await palette.imagine(palette.bob, "bob's prompt"))
    await palette.idle()
    ix = await palette.fake.invoke_slash(palette.alice, palette.channel, "history-clear")
    assert "Delete your prompts" in await palette.reply(ix)
    assert ix.ephemeral
    # Only alice can confirm her own request.
    confirm = await palette.fake.click_button(palette.alice, ix.original, "palette:forget:confirm")
    await confirm.wait_for(lambda i: "Cleared 1" in (i.original.content if i.original else ""), timeout=10)
    assert await palette.bot.db.history.count_history(palette.alice.id) == 0
    assert await palette.bot.db.history.count_history(palette.bob.id) == 1
    rows = await palette.bot.db.fetchall(
        "SELECT prompt FROM jobs WHERE user_id = :user", {"user": palette.alice.id}
    )
    assert [r[0] for r in rows] == [""]
    assert (
        await palette.bot.db.fetchval(
            "SELECT COUNT(*) FROM results WHERE user_id = :user", {"user": palette.alice.id}
        )
        == 0
    )


async def test_a_broken_mod_log_never_breaks_a_job(palette: Palette) -> None:
    await palette.bot.moderation.update_policy(palette.guild.id, 1, "test", modlog_channel_id=123456789)
    await palette.result_message(await palette.imagine(palette.alice, "a fox"))
    await palette.idle()
    await palette.bot.modlog.drain()
    assert palette.bot.modlog.failed >= 1 and palette.bot.modlog.sent == 0
    assert (await palette.bot.db.jobs.ledger_balance()).committed == 1
