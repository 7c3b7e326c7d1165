"""Command surface: registration, help text, autocomplete, status edits, manager-only quota details,
and `python -m bot sync`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import discord

from bot.app import create_bot, shutdown
from tests.presentation.conftest import Palette, running_palette


def walk_options(options: list[dict]) -> list[dict]:
    found = []
    for option in options or []:
        found.append(option)
        found.extend(walk_options(option.get("options", [])))
    return found


async def test_every_command_and_option_has_help_text(palette: Palette) -> None:
    names = {c["name"] for c in palette.fake.commands.values()}
    assert {"imagine", "edit", "quota", "history", "Edit with Palette"} <= names
    for command in palette.fake.commands.values():
        if command.get("type", 1) == 1:
            assert command["description"].strip(), command["name"]
        for option in walk_options(command.get("options", [])):
            assert option["description"].strip(), (command["name"], option["name"])


async def test_model_autocomplete_offers_enabled_models(palette: Palette) -> None:
    ix = await palette.fake.autocomplete(
        palette.alice,
        palette.channel,
        "imagine",
        options=[{"name": "prompt", "value": "x"}, {"name": "model", "value": "banana 2", "focused": True}],
    )
    await ix.wait_for(lambda i: i.autocomplete_choices is not None, timeout=5)
    values = [c["value"] for c in ix.autocomplete_choices]
    assert values == [] or all("banana" in v for v in values)
    ix = await palette.fake.autocomplete(
        palette.alice,
        palette.channel,
        "imagine",
        options=[{"name": "prompt", "value": "x"}, {"name": "model", "value": "", "focused": True}],
    )
    await ix.wait_for(lambda i: i.autocomplete_choices is not None, timeout=5)
    values = {c["value"] for c in ix.autocomplete_choices}
    # ListenHub + Mountsea are enabled in the harness; APIMart (nano-banana-lite) is not.
    assert {"nano-banana-pro", "nano-banana-2", "nano-banana", "gpt-image-2"} == values


async def test_ratio_autocomplete_follows_the_chosen_model(palette: Palette) -> None:
    ix = await palette.fake.autocomplete(
        palette.alice,
        palette.channel,
        "imagine",
        options=[
            {"name": "prompt", "value": "x"},
            {"name": "model", "value": "nano-banana-2"},
            {"name": "aspect_ratio", "value": "1:", "focused": True},
        ],
    )
    await ix.wait_for(lambda i: i.autocomplete_choices is not None, timeout=5)
    values = {c["value"] for c in ix.autocomplete_choices}
    assert {"1:4", "1:8", "1:1"} <= values


async def test_status_message_goes_queued_generating_done(tmp_path: Path) -> None:
    # One ListenHub slot, taken by a first job: the second one must wait in line, then generate.
    async with running_palette(tmp_path, listenhub_concurrency=1, user_max_concurrent=0) as palette:
        palette.listenhub.processing_delay = 0.3
        first = await palette.imagine(palette.bob, "the first in line")
        await first.wait_for(lambda i: bool(i.original and "Generating" in (i.original.content or "")), 10)
        ix = await palette.imagine(palette.alice, "a slow sunrise")
        message = await palette.result_message(ix)
        contents = [edit.get("content") for edit in message.edits if "content" in edit]
        assert any(c and c.startswith("⏳ Queued (position 1 in line)") for c in contents), contents
        assert any(c and c.startswith("🎨 Generating") for c in contents), contents
        queued = next(i for i, c in enumerate(contents) if c and c.startswith("⏳"))
        generating = next(i for i, c in enumerate(contents) if c and c.startswith("🎨"))
        assert queued < generating
        assert message.files and not message.content


async def test_server_managers_do_not_see_provider_balances(palette: Palette) -> None:
    """The operator's balances are not a server's business (issue 13; the owner: test_operator_only)."""
    manager = palette.fake.add_user(name="manager")
    managers = palette.fake.add_role(palette.guild, "Managers", discord.Permissions(manage_guild=True).value)
    palette.fake.add_member(palette.guild, manager, roles=[managers.id])
    for user in (manager, palette.alice):
        ix = await palette.fake.invoke_slash(user, palette.channel, "quota")
        await ix.wait_for(lambda i: bool(i.original and i.original.embeds), timeout=10)
        names = {f["name"] for f in ix.original.embeds[0]["fields"]}
        assert "Today (24 h)" in names and "Provider balances" not in names


async def test_sync_command_pushes_commands_even_when_unchanged_and_exits(tmp_path: Path) -> None:
    async with running_palette(tmp_path) as palette:
        settings = palette.bot.settings
        puts = palette.fake.command_puts
        sync_bot = await create_bot(settings, sync_only=True, guild_ready_timeout=0.05)
        try:
            await asyncio.wait_for(sync_bot.start(settings.discord_token.get_secret_value()), 15)
        finally:
            await shutdown(sync_bot)
        assert sync_bot.synced is True
        assert palette.fake.command_puts == puts + 1
