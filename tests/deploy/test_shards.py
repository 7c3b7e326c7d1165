"""A sharded deployment: two gateway processes with one shard each (SHARD_COUNT=2, SHARD_IDS=0 / 1) and a
worker, against a fake Discord that routes every server's events to its shard and refuses identifies
that come faster than ``max_concurrency`` allows (as Discord does)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import LISTENHUB_MODEL, Deployment, deployment, final
from tests.fakes.discord import Interaction
from tests.fakes.http import png_bytes

pytestmark = pytest.mark.timeout(150)


def text_inputs(modal: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for row in modal.get("components", []):
        for component in row.get("components", []) or [row.get("component") or {}]:
            if component.get("type") == 4:
                found.append(component)
    return found


async def imagine_everything(d: Deployment, guild: Any, user: Any) -> None:
    """In ``guild``: /imagine, its reroll button, the "Edit with Palette" context menu and its modal."""
    channel = guild.channels[0]
    fake = d.fake
    ix = await fake.invoke_slash(
        user, channel, "imagine", options={"prompt": f"in {guild.name}", "model": LISTENHUB_MODEL}
    )
    await ix.wait_for(final, timeout=60)
    result = ix.original
    assert result.files, result.content

    reroll = await fake.click_button(user, result, d.button(result, "reroll"))
    again = await reroll.wait_for_message(lambda m: bool(m.files), timeout=60)
    assert again.id != result.id

    photo = fake.add_attachment(png_bytes(24, 24), "photo.png", "image/png")
    target = fake.post_user_message(user, channel, "edit this", attachments=[photo])
    menu = await fake.invoke_message_command(user, channel, "Edit with Palette", target)
    await menu.wait_for(lambda i: i.modal is not None, timeout=15)
    values = {text_inputs(menu.modal)[0]["custom_id"]: f"night in {guild.name}"}
    submitted = await fake.submit_modal(user, channel, menu.modal["custom_id"], values)
    await submitted.wait_for(final, timeout=60)
    assert submitted.original.files


async def test_two_gateway_processes_one_shard_each_serve_every_server(
    tmp_path: Path, database_url: str
) -> None:
    async with deployment(tmp_path, database_url, users=1) as d:
        fake = d.fake
        hub = fake.gateway
        hub.max_concurrency = 1  # both shards in one bucket: their identifies must be 5 s apart
        hub.identify_window = 5.0
        user = d.users[0]
        # The bot's owner owns both servers (so /palette status shows them the deployment).
        owner = fake.app_owner
        guilds = [fake.add_guild(name=f"shard {i} server", owner_id=owner.id, shard=(i, 2)) for i in (0, 1)]
        for guild in guilds:
            fake.add_member(guild, user)
        a = d.process("gateway", "gateway-a", SHARD_COUNT=2, SHARD_IDS="0")
        b = d.process("gateway", "gateway-b", SHARD_COUNT=2, SHARD_IDS="1")
        await asyncio.gather(a.start(90), b.start(90), d.workers(1))

        # Each process identified only its own shard, once, in turns the fake accepted.
        accepted = [(at, shard) for at, shard, ok in hub.identify_log if ok]
        assert sorted(shard for _, shard in accepted) == [[0, 2], [1, 2]], hub.identify_log
        assert hub.identify_refusals == 0
        assert abs(accepted[1][0] - accepted[0][0]) >= 5.0
        assert "shard 0: identifying" in a.log_text() and "shard 1:" not in a.log_text()
        assert "shard 1: identifying" in b.log_text() and "shard 0:" not in b.log_text()
        # The commands were synced once, by one of them.
        assert fake.command_puts == 1, fake.command_puts
        synced = [
            p.name for p in (a, b) if "synced" in p.log_text() and "another gateway" not in p.log_text()
        ]
        assert len(synced) == 1, synced

        for guild in guilds:
            await imagine_everything(d, guild, user)
        # A DM goes to shard 0 (gateway-a) and works too.
        dm = await fake.invoke_slash(
            user,
            fake.add_dm_channel(user),
            "imagine",
            options={"prompt": "in a DM", "model": LISTENHUB_MODEL},
        )
        await dm.wait_for(final, timeout=60)
        assert dm.original.files

        # /palette status (the bot's owner) shows both shards and which process runs each.
        def shard_field(ix: Interaction) -> str | None:
            for message in ix.followups:
                for embed in message.embeds:
                    for field in embed.get("fields", []):
                        if (
                            field["name"] == "Gateway shards"
                            and "shard 0/2" in field["value"]
                            and "shard 1/2" in field["value"]
                        ):
                            return str(field["value"])
            return None

        # (Each process writes its shards' heartbeat every 5 s.)
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            status = await fake.invoke_slash(
                fake.app_owner, guilds[1].channels[0], "palette", subcommand="status"
            )
            value = await status.wait_for(lambda i: i.followups and (shard_field(i) or "none"), timeout=15)
            if value != "none" or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(1)
        assert "shard 0/2" in value and f"(pid {a.pid})" in value, value
        assert f"(pid {b.pid})" in value, value
        await d.check_ledger()
        d.assert_clean_logs()
