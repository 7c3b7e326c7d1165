"""Proves :class:`FakeDiscord` against the real, unmodified discord.py 2.7 client."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakes.discord import (
    FakeDiscord,
    Guild,
    MessageFlag,
    Permission,
    User,
    point_discord_at,
    running_client,
)

PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e5273de0"
    "0000000049454e44ae426082"
)


@dataclass
class World:
    fake: FakeDiscord
    guild: Guild
    alice: User

    @property
    def channel(self) -> Any:
        return self.guild.default_channel


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def world(fake: FakeDiscord) -> World:
    guild = fake.add_guild(name="Test Guild")
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    return World(fake, guild, alice)


@pytest.fixture(autouse=True)
def _discord_globals_restored() -> Any:
    base = discord.http.Route.BASE
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    yield
    assert base == discord.http.Route.BASE
    assert gateway == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


def make_client(*, members: bool = False, message_content: bool = False) -> discord.Client:
    intents = discord.Intents.default()
    intents.members = members
    intents.message_content = message_content
    return discord.Client(intents=intents, guild_ready_timeout=0.05)


async def sync_to(tree: app_commands.CommandTree[Any], guild: Guild) -> list[app_commands.AppCommand]:
    target = discord.Object(id=guild.id)
    tree.copy_global_to(guild=target)
    return await tree.sync(guild=target)


# ---------------------------------------------------------------------------------------------
# connection, cache, commands
# ---------------------------------------------------------------------------------------------


async def test_connect_ready_and_guild_cache(world: World) -> None:
    fake = world.fake
    mods = fake.add_role(world.guild, name="Mods", permissions=int(Permission.MANAGE_MESSAGES))
    bob = fake.add_user("bob")
    fake.add_member(world.guild, bob, roles=[mods.id])
    art = fake.add_channel(world.guild, name="art", nsfw=True)
    client = make_client(members=True)

    async with running_client(fake, client):
        await fake.wait_until_identified()
        assert client.user is not None and client.user.id == fake.bot_user.id
        assert client.application_id == fake.application_id
        guild = client.get_guild(world.guild.id)
        assert guild is not None and guild.name == "Test Guild"
        assert guild.chunked and guild.member_count == 4
        channel = guild.get_channel(art.id)
        assert isinstance(channel, discord.TextChannel) and channel.nsfw and channel.name == "art"
        role = guild.get_role(mods.id)
        assert role is not None and role.permissions.manage_messages
        member = guild.get_member(bob.id)
        assert member is not None and mods.id in [r.id for r in member.roles]
        assert guild.me.guild_permissions.attach_files
        assert guild.default_role.id == world.guild.id
        fetched = await client.fetch_channel(art.id)
        assert fetched.id == art.id
        fetched_member = await guild.fetch_member(bob.id)
        assert fetched_member.name == "bob" and fetched_member.get_role(mods.id) is not None
        assert {c.name for c in await guild.fetch_channels()} == {"general", "art"}
        assert {r.name for r in await guild.fetch_roles()} == {"@everyone", "Palette", "Mods"}
        assert (await client.fetch_user(bob.id)).name == "bob"
        assert (await client.fetch_guild(guild.id)).approximate_member_count == 4
        with pytest.raises(discord.NotFound) as unknown_member:
            await guild.fetch_member(12345)
        assert unknown_member.value.code == 10007

    assert fake.identify_count == 1 and fake.gateway_connections == 1
    assert fake.unhandled == []
    paths = [r.path for r in fake.requests]
    assert "/users/@me" in paths and "/oauth2/applications/@me" in paths
    hello_query = fake.gateway.connections[0].query
    assert hello_query["v"] == "10" and hello_query["encoding"] == "json"


async def test_world_changes_are_dispatched_live(world: World) -> None:
    fake = world.fake
    client = make_client(members=True)
    joined = asyncio.Event()

    @client.event
    async def on_guild_join(guild: discord.Guild) -> None:
        joined.set()

    async with running_client(fake, client):
        guild = client.get_guild(world.guild.id)
        assert guild is not None
        channel = fake.add_channel(world.guild, name="late")
        role = fake.add_role(world.guild, name="Artists")
        carol = fake.add_user("carol")
        fake.add_member(world.guild, carol, roles=[role.id])
        fake.set_bot_permissions(world.channel, int(Permission.VIEW_CHANNEL))
        second = fake.add_guild(name="Second Guild")
        await asyncio.wait_for(joined.wait(), 5)
        assert guild.get_channel(channel.id) is not None and guild.get_role(role.id) is not None
        member = guild.get_member(carol.id)
        assert member is not None and member.get_role(role.id) is not None
        text = guild.get_channel(world.channel.id)
        assert isinstance(text, discord.TextChannel)
        assert not text.permissions_for(guild.me).send_messages
        assert client.get_guild(second.id) is not None


async def test_bad_token_is_a_login_failure(fake: FakeDiscord) -> None:
    client = make_client()
    with point_discord_at(fake), pytest.raises(discord.LoginFailure):
        await client.login("wrong-token")
    await client.close()
    assert fake.requests[-1].status == 401 and fake.requests[-1].response == {
        "message": "401: Unauthorized",
        "code": 0,
    }


async def test_sync_commands_to_guild(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)

    @tree.command(name="imagine", description="Generate an image")
    @app_commands.describe(prompt="What to draw")
    async def imagine(
        interaction: discord.Interaction, prompt: str, image: discord.Attachment | None = None
    ) -> None:
        await interaction.response.send_message(prompt)

    @tree.context_menu(name="Edit with Palette")
    async def edit(interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.send_message("ok")

    async with running_client(fake, client):
        synced = await sync_to(tree, world.guild)
        assert {c.name for c in synced} == {"imagine", "Edit with Palette"}
        assert fake.command_puts == 1
        stored = fake.find_command("imagine", world.guild)
        assert stored is not None and stored["guild_id"] == str(world.guild.id)
        assert [o["name"] for o in stored["options"]] == ["prompt", "image"]
        assert fake.find_command("Edit with Palette", world.guild, type=3) is not None
        # syncing again keeps ids (Discord's bulk overwrite matches by name + type)
        again = await tree.sync(guild=discord.Object(id=world.guild.id))
        assert {c.id for c in again} == {c.id for c in synced}
        fetched = await tree.fetch_commands(guild=discord.Object(id=world.guild.id))
        assert len(fetched) == 2
    assert fake.unhandled == []


# ---------------------------------------------------------------------------------------------
# interactions
# ---------------------------------------------------------------------------------------------


async def test_defer_then_followup_file_replaces_original(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    image = PNG_1X1 + b"\x00" * 1000
    result: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

    @tree.command(name="imagine", description="Generate an image")
    async def imagine(interaction: discord.Interaction, prompt: str) -> None:
        callback = await interaction.response.defer(thinking=True)
        assert callback is not None
        placeholder_id = callback.message_id
        embed = discord.Embed(title=prompt).set_image(url="attachment://out.png")
        sent = await interaction.followup.send(
            file=discord.File(io.BytesIO(image), "out.png"), embed=embed, wait=True
        )
        original = await interaction.original_response()
        result.set_result((placeholder_id or 0, sent.id))
        assert original.id == sent.id

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(
            world.alice, world.channel, "imagine", options=[{"name": "prompt", "type": 3, "value": "a cat"}]
        )
        msg = await ix.wait_for_message(lambda m: bool(m.files))
        placeholder_id, sent_id = await asyncio.wait_for(result, 5)

    assert ix.response_type == 5 and ix.deferred and not ix.ephemeral
    assert ix.original is msg and msg.id == placeholder_id == sent_id
    assert ix.followups == [msg]
    assert msg.edits[0]["flags"] & MessageFlag.LOADING and not msg.loading
    assert msg.files == [("out.png", image, "image/png")]
    assert msg.attachments[0]["width"] == 1 and msg.attachments[0]["size"] == len(image)
    assert msg.embeds[0]["image"]["url"] == msg.attachments[0]["url"]
    assert msg.interaction_metadata is not None and msg.interaction_metadata["name"] == "imagine"
    assert ix.acked_at is not None and ix.acked_at - ix.created_at < 3
    async with aiohttp.ClientSession() as session, session.get(msg.attachments[0]["url"]) as resp:
        assert resp.status == 200 and await resp.read() == image
    assert [m.id for m in fake.channel_messages(world.channel.id)] == [msg.id]


async def test_attachment_option_is_resolved_and_readable(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    got: asyncio.Future[tuple[str, bytes, int]] = asyncio.get_running_loop().create_future()

    @tree.command(name="edit", description="Edit an image")
    async def edit(interaction: discord.Interaction, image: discord.Attachment, prompt: str) -> None:
        await interaction.response.defer()
        got.set_result((image.filename, await image.read(), interaction.filesize_limit))
        await interaction.followup.send(f"edited {prompt}")

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        att = fake.add_attachment(PNG_1X1, "in.png")
        ix = await fake.invoke_slash(
            world.alice,
            world.channel,
            "edit",
            options=[{"name": "image", "type": 11, "value": att["id"]}, {"name": "prompt", "value": "blue"}],
            attachments=[att],
            attachment_size_limit=25 * 1024 * 1024,
        )
        await ix.wait_for_message(lambda m: m.content == "edited blue")
    assert await got == ("in.png", PNG_1X1, 25 * 1024 * 1024)


async def test_ephemeral_response_is_not_broadcast(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    seen = Seen()
    client.event(seen.on_message)

    @tree.command(name="settings", description="Show settings")
    async def settings(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("only you can see this", ephemeral=True)

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "settings")
        msg = await ix.wait_for_message()
        marker = fake.post_user_message(world.alice, world.channel, "marker")
        await seen.wait_for_id(marker.id)

    assert ix.response_type == 4 and ix.ephemeral and msg.flags & MessageFlag.EPHEMERAL
    assert all(m.id != msg.id for m in seen.messages)
    assert msg not in fake.channel_messages(world.channel.id, include_ephemeral=False)


async def test_modal_round_trip(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)

    class PromptModal(discord.ui.Modal, title="Describe your image"):
        prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
            label="Prompt", custom_id="prompt", max_length=200
        )
        style: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
            label="Style", custom_id="style", required=False
        )

        async def on_submit(self, interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"prompt={self.prompt.value} style={self.style.value}")

    @tree.command(name="compose", description="Open the composer")
    async def compose(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(PromptModal(custom_id="composer"))

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "compose")
        await ix.wait_for_response()
        assert ix.response_type == 9 and ix.modal is not None and ix.modal["title"] == "Describe your image"
        submit = await fake.submit_modal(world.alice, world.channel, "composer", {"prompt": "a red fox"})
        msg = await submit.wait_for_message()
        with pytest.raises(AssertionError, match="never showed a modal"):
            await fake.submit_modal(world.alice, world.channel, "nope", {})

    assert submit.type == 5 and submit.response_type == 4
    assert msg.content == "prompt=a red fox style="


async def test_modal_submit_silent_defer_then_followup(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)

    class Quick(discord.ui.Modal, title="Quick"):
        text: discord.ui.TextInput[Quick] = discord.ui.TextInput(label="Text", custom_id="text")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            await interaction.response.defer()  # discord.py sends type 6 for modal submits
            await interaction.followup.send(f"queued {self.text.value}")

    @tree.command(name="quick", description="Quick")
    async def quick(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(Quick(custom_id="quick"))

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "quick")
        await ix.wait_for_response()
        submit = await fake.submit_modal(world.alice, world.channel, "quick", {"text": "job-1"})
        msg = await submit.wait_for_message()
    assert submit.response_type == 6 and submit.deferred and submit.original is None
    assert msg.content == "queued job-1" and submit.followups == [msg]


async def test_modal_with_labels_and_file_upload(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)

    class EditModal(discord.ui.Modal, title="Edit image"):
        prompt: discord.ui.Label[Any] = discord.ui.Label(
            text="Prompt", component=discord.ui.TextInput(custom_id="prompt")
        )
        image: discord.ui.Label[Any] = discord.ui.Label(
            text="Image", component=discord.ui.FileUpload(custom_id="image")
        )

        async def on_submit(self, interaction: discord.Interaction) -> None:
            assert isinstance(self.prompt.component, discord.ui.TextInput)
            assert isinstance(self.image.component, discord.ui.FileUpload)
            data = await self.image.component.values[0].read()
            await interaction.response.send_message(f"{self.prompt.component.value}: {len(data)} bytes")

    @tree.command(name="edit", description="Edit")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(EditModal(custom_id="edit-modal"))

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "edit")
        await ix.wait_for_response()
        assert ix.modal is not None and [c["type"] for c in ix.modal["components"]] == [18, 18]
        att = fake.add_attachment(PNG_1X1, "src.png")
        submit = await fake.submit_modal(
            world.alice, world.channel, "edit-modal", {"prompt": "sepia", "image": [att]}
        )
        msg = await submit.wait_for_message()
    assert msg.content == f"sepia: {len(PNG_1X1)} bytes"
    prompt_row, image_row = submit.data["components"]
    assert prompt_row["type"] == 18 and prompt_row["component"] == {
        "type": 4,
        "custom_id": "prompt",
        "value": "sepia",
    }
    assert image_row["component"] == {"type": 19, "custom_id": "image", "values": [att["id"]]}
    assert submit.data["resolved"]["attachments"][att["id"]]["filename"] == "src.png"


async def test_persistent_button_click_edits_message(world: World) -> None:
    fake = world.fake
    clicks: list[int] = []

    class Regenerate(discord.ui.View):
        def __init__(self) -> None:
            super().__init__(timeout=None)

        @discord.ui.button(label="Regenerate", custom_id="palette:regen", style=discord.ButtonStyle.primary)
        async def regen(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
            clicks.append(interaction.user.id)
            new_file = discord.File(io.BytesIO(PNG_1X1), "v2.png")
            await interaction.response.edit_message(
                content="regenerating…", view=None, attachments=[new_file]
            )

    class Bot(commands.Bot):
        async def setup_hook(self) -> None:
            self.add_view(Regenerate())

    bot = Bot(command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.05)

    @bot.tree.command(name="imagine", description="Generate")
    async def imagine(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.send_message(f"here is {prompt}", view=Regenerate())

    async with running_client(fake, bot):
        await sync_to(bot.tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "imagine", {"prompt": "a dog"})
        msg = await ix.wait_for_message()
        assert [c.get("custom_id") for c in msg.iter_components()] == [None, "palette:regen"]
        click = await fake.click_button(world.alice, msg, "palette:regen")
        await click.wait_for(lambda c: c.responses)
        await click.wait_for_message(lambda m: m.content == "regenerating…")

    assert clicks == [world.alice.id]
    assert click.response_type == 7 and click.original is msg
    assert msg.components == [] and msg.edits[-1]["content"] == "here is a dog"
    assert msg.files == [("v2.png", PNG_1X1, "image/png")]


async def test_select_menu_deferred_update_then_edit_original(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)

    class ModelPicker(discord.ui.View):
        @discord.ui.select(
            custom_id="pick-model",
            options=[discord.SelectOption(label="Nano Banana"), discord.SelectOption(label="GPT Image 2")],
        )
        async def pick(self, interaction: discord.Interaction, select: discord.ui.Select[Any]) -> None:
            await interaction.response.defer()  # type 6: acknowledge without a new message
            await interaction.edit_original_response(content=f"model: {select.values[0]}", view=None)

    @tree.command(name="models", description="Pick a model")
    async def models(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("choose a model", view=ModelPicker())

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "models")
        msg = await ix.wait_for_message()
        choice = await fake.click_button(world.alice, msg, "pick-model", values=["GPT Image 2"])
        await choice.wait_for_message(lambda m: m.content.startswith("model:"))
    assert choice.response_type == 6 and choice.deferred and choice.original is msg
    assert msg.content == "model: GPT Image 2" and msg.components == []
    assert choice.payload["message"]["id"] == str(msg.id)


async def test_autocomplete(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    models = ["nano-banana", "gpt-image-2", "nano-banana-pro"]

    async def model_autocomplete(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=m, value=m) for m in models if current in m]

    @tree.command(name="imagine", description="Generate")
    @app_commands.autocomplete(model=model_autocomplete)
    async def imagine(interaction: discord.Interaction, prompt: str, model: str | None = None) -> None:
        await interaction.response.send_message("ok")

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.autocomplete(
            world.alice,
            world.channel,
            "imagine",
            options=[
                {"name": "prompt", "value": "x"},
                {"name": "model", "type": 3, "value": "nan", "focused": True},
            ],
        )
        await ix.wait_for_response()
    assert ix.response_type == 8
    assert ix.autocomplete_choices == [
        {"name": "nano-banana", "value": "nano-banana"},
        {"name": "nano-banana-pro", "value": "nano-banana-pro"},
    ]


async def test_double_acknowledgement(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    outcome: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

    @tree.command(name="twice", description="Ack twice")
    async def twice(interaction: discord.Interaction) -> None:
        # Two concurrent defers both pass discord.py's local is_done() check, so the second
        # reaches Discord, which rejects it.
        results: list[Any] = list(
            await asyncio.gather(
                interaction.response.defer(), interaction.response.defer(), return_exceptions=True
            )
        )
        try:
            await interaction.response.defer()
        except discord.InteractionResponded as exc:
            results.append(exc)
        outcome.set_result(results)

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "twice")
        results = await asyncio.wait_for(outcome, 5)

    errors = [r for r in results if isinstance(r, discord.HTTPException)]
    assert len(errors) == 1 and errors[0].status == 400 and errors[0].code == 40060
    assert "already been acknowledged" in errors[0].text
    assert isinstance(results[-1], discord.InteractionResponded)
    assert len(ix.responses) == 1 and ix.errors == [
        {"message": "Interaction has already been acknowledged.", "code": 40060}
    ]


async def test_late_acknowledgement_is_unknown_interaction(world: World) -> None:
    fake = world.fake
    fake.interaction_ack_deadline = 0.2
    client = make_client()
    tree = app_commands.CommandTree(client)
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    @tree.command(name="slow", description="Too slow")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.4)
        try:
            await interaction.response.defer()
        except discord.HTTPException as exc:
            outcome.set_result(exc)

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "slow")
        exc = await asyncio.wait_for(outcome, 5)
    assert isinstance(exc, discord.NotFound) and exc.code == 10062
    assert not ix.acknowledged and ix.response_type is None


async def test_expire_interaction(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    gate = asyncio.Event()
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    @tree.command(name="gated", description="Waits")
    async def gated(interaction: discord.Interaction) -> None:
        await gate.wait()
        try:
            await interaction.response.send_message("late")
        except discord.HTTPException as exc:
            outcome.set_result(exc)

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "gated")
        fake.expire_interaction(ix)
        gate.set()
        exc = await asyncio.wait_for(outcome, 5)
    assert isinstance(exc, discord.NotFound) and exc.code == 10062
    assert ix.errors == [{"message": "Unknown interaction", "code": 10062}]


async def test_expired_token_on_followup(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    proceed = asyncio.Event()
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    @tree.command(name="long", description="Long job")
    async def long(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await proceed.wait()
        try:
            await interaction.followup.send("finally done")
        except discord.HTTPException as exc:
            outcome.set_result(exc)

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "long")
        await ix.wait_for(lambda i: i.deferred)
        fake.expire_token(ix)
        proceed.set()
        exc = await asyncio.wait_for(outcome, 5)
    assert isinstance(exc, discord.HTTPException) and exc.status == 401 and exc.code == 50027
    assert ix.original is not None and ix.original.loading and ix.followups == []


async def test_upload_above_interaction_limit(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    @tree.command(name="big", description="Big upload")
    async def big(interaction: discord.Interaction) -> None:
        payload = b"x" * (interaction.filesize_limit + 1)
        try:
            await interaction.response.send_message(file=discord.File(io.BytesIO(payload), "big.png"))
        except discord.HTTPException as exc:
            outcome.set_result(exc)
            await interaction.response.send_message("too big", ephemeral=True)

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "big", attachment_size_limit=64 * 1024)
        exc = await asyncio.wait_for(outcome, 5)
        await ix.wait_for_message(lambda m: m.content == "too big")
    assert isinstance(exc, discord.HTTPException) and exc.status == 413 and exc.code == 40005
    assert ix.response_type == 4 and ix.ephemeral


async def test_channel_send_permissions(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    fake.set_bot_permissions(world.channel, int(Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES))

    @tree.command(name="perms", description="Show app permissions")
    async def perms(interaction: discord.Interaction) -> None:
        await interaction.response.send_message(str(interaction.app_permissions.value))

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "perms")
        assert (await ix.wait_for_message()).content == str(fake.bot_permissions_in(world.channel))
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        cached = channel.permissions_for(channel.guild.me)
        assert cached.send_messages and not cached.attach_files
        sent = await channel.send("text is fine")
        with pytest.raises(discord.Forbidden) as excinfo:
            await channel.send(file=discord.File(io.BytesIO(PNG_1X1), "a.png"))
        assert excinfo.value.code == 50013 and excinfo.value.status == 403
        fake.set_bot_permissions(world.channel, int(Permission.VIEW_CHANNEL))
        with pytest.raises(discord.Forbidden) as excinfo:
            await channel.send("no longer allowed")
        assert excinfo.value.code == 50013
        fake.upload_limit = 100
        fake.set_bot_permissions(
            world.channel, int(Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES | Permission.ATTACH_FILES)
        )
        with pytest.raises(discord.HTTPException) as too_big:
            await channel.send(file=discord.File(io.BytesIO(b"y" * 101), "b.bin"))
        assert too_big.value.status == 413 and too_big.value.code == 40005
        with pytest.raises(discord.Forbidden) as no_history:
            await channel.fetch_message(sent.id)
        assert no_history.value.code == 50001
        fake.set_bot_permissions(
            world.channel, int(Permission.VIEW_CHANNEL | Permission.READ_MESSAGE_HISTORY)
        )
        assert (await channel.fetch_message(sent.id)).content == "text is fine"
        with pytest.raises(discord.NotFound) as unknown:
            await channel.fetch_message(1234)
        assert unknown.value.code == 10008

    assert [m.content for m in fake.channel_messages(world.channel.id)][-1] == "text is fine"
    assert fake.messages[sent.id].author_id == fake.bot_user.id


async def test_message_command_and_user_messages(world: World) -> None:
    fake = world.fake
    client = make_client(message_content=True)
    tree = app_commands.CommandTree(client)
    seen = Seen()
    client.event(seen.on_message)

    @tree.context_menu(name="Edit with Palette")
    async def edit(interaction: discord.Interaction, message: discord.Message) -> None:
        data = await message.attachments[0].read()
        await interaction.response.send_message(f"{len(data)} bytes from {message.author.name}")

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        att = fake.add_attachment(PNG_1X1, "photo.png")
        posted = fake.post_user_message(world.alice, world.channel, "look", attachments=[att])
        received = await seen.wait_for_id(posted.id)
        assert received.content == "look" and received.attachments[0].filename == "photo.png"
        ix = await fake.invoke_message_command(world.alice, world.channel, "Edit with Palette", posted)
        msg = await ix.wait_for_message()
    assert msg.content == f"{len(PNG_1X1)} bytes from alice"
    assert msg.type == 23


async def test_message_content_is_stripped_without_the_intent(world: World) -> None:
    fake = world.fake
    client = make_client(message_content=False)
    seen = Seen()
    client.event(seen.on_message)

    async with running_client(fake, client):
        plain = fake.post_user_message(world.alice, world.channel, "secret")
        mention = fake.post_user_message(world.alice, world.channel, f"<@{fake.bot_user.id}> hi")
        await seen.wait_for_id(plain.id)
        await seen.wait_for_id(mention.id)
    by_id = {m.id: m for m in seen.messages}
    assert by_id[plain.id].content == ""
    assert by_id[mention.id].content == f"<@{fake.bot_user.id}> hi"


async def test_rate_limit_with_via_header_is_retried(world: World) -> None:
    fake = world.fake
    client = make_client()
    async with running_client(fake, client):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        fake.rate_limit_next("POST", r"/channels/\d+/messages$", retry_after=0.05)
        await channel.send("after a 429")
        fake.fail_next("POST", r"/channels/\d+/messages$", 429, {"message": "blocked", "retry_after": 1})
        with pytest.raises(discord.HTTPException) as excinfo:
            await channel.send("no Via header -> not retried")
        assert excinfo.value.status == 429
    posts = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert [r.status for r in posts] == [429, 200, 429]


async def test_unknown_routes_are_recorded(world: World) -> None:
    fake = world.fake
    headers = {"Authorization": f"Bot {fake.bot_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fake.api_base}/guilds/{world.guild.id}/bans", headers=headers) as resp:
            assert resp.status == 404
            assert "does not implement GET /guilds" in (await resp.json())["message"]
        async with session.get(f"{fake.api_base}/channels/{world.channel.id}") as resp:
            assert resp.status == 401
        async with session.get(f"{fake.api_base}/channels/1", headers=headers) as resp:
            assert resp.status == 404 and (await resp.json())["code"] == 10003
            assert resp.headers["Content-Type"] == "application/json"
    assert [r.path for r in fake.unhandled] == [f"/guilds/{world.guild.id}/bans"]


async def test_ephemeral_deferral_followups_and_webhook_edits(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)
    done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

    @tree.command(name="secret", description="Private generation")
    async def secret(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        first = await interaction.followup.send(
            "first", wait=True
        )  # replaces the placeholder, stays ephemeral
        second = await interaction.followup.send("second", wait=True)  # a new, public message
        third = await interaction.followup.send("third", ephemeral=True, wait=True)
        await second.edit(content="second (edited)")
        await third.delete()
        await interaction.edit_original_response(content="first (edited)")
        original = await interaction.original_response()
        done.set_result([first.id, second.id, third.id, original.id])

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        ix = await fake.invoke_slash(world.alice, world.channel, "secret")
        first_id, second_id, third_id, original_id = await asyncio.wait_for(done, 5)

    assert ix.deferred and ix.ephemeral and ix.original is not None
    assert ix.original.id == first_id == original_id
    assert ix.original.flags == MessageFlag.EPHEMERAL and ix.original.content == "first (edited)"
    second, third = fake.messages[second_id], fake.messages[third_id]
    assert second.flags == 0 and second.content == "second (edited)" and second.edited_timestamp
    assert second.interaction_metadata is not None
    assert second.interaction_metadata["original_response_message_id"] == str(first_id)
    assert third.ephemeral and third.deleted
    assert [m.id for m in ix.followups] == [first_id, second_id, third_id]
    assert fake.channel_messages(world.channel.id, include_ephemeral=False) == [second]


async def test_dm_slash_command_and_direct_message(fake: FakeDiscord) -> None:
    alice = fake.add_user("alice")
    dm = fake.add_dm_channel(alice)
    client = make_client()
    tree = app_commands.CommandTree(client)

    @tree.command(name="help", description="Help")
    async def help_(interaction: discord.Interaction) -> None:
        kind = type(interaction.channel).__name__
        await interaction.response.send_message(
            f"{kind} guild={interaction.guild} user={interaction.user.name}"
        )
        await interaction.user.send("sent via DM channel")

    async with running_client(fake, client):
        await tree.sync()
        assert fake.find_command("help") is not None
        ix = await fake.invoke_slash(alice, dm, "help")
        msg = await ix.wait_for_message()
        direct = await fake.wait_for_message(lambda m: m.content == "sent via DM channel", existing=True)
    assert ix.payload["context"] == 1 and "user" in ix.payload and "member" not in ix.payload
    assert msg.content == "DMChannel guild=None user=alice"
    assert direct.channel_id == dm.id and direct.interaction_id is None


async def test_history_edit_and_bulk_delete(world: World) -> None:
    fake = world.fake
    client = make_client()
    async with running_client(fake, client):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        sent = [await channel.send(f"m{i}") for i in range(3)]
        history = [m.content async for m in channel.history(limit=10)]
        assert history == ["m2", "m1", "m0"]
        older = [m.content async for m in channel.history(limit=10, before=sent[2])]
        assert older == ["m1", "m0"]
        await sent[0].edit(content="m0 (edited)")
        with pytest.raises(discord.Forbidden):
            await channel.delete_messages(sent[1:])
        role = fake.bot_role(world.guild)
        role.permissions |= Permission.MANAGE_MESSAGES
        await channel.delete_messages(sent[1:])
    assert [m.content for m in fake.channel_messages(world.channel.id)] == ["m0 (edited)"]
    assert fake.messages[sent[0].id].edits[0]["content"] == "m0"


async def test_raw_rest_validation(world: World) -> None:
    fake = world.fake
    url = f"{fake.api_base}/channels/{world.channel.id}/messages"
    headers = {"Authorization": f"Bot {fake.bot_token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("payload_json", "{}")
        for i in range(11):
            form.add_field(f"files[{i}]", b"x", filename=f"{i}.txt")
        async with session.post(url, data=form) as resp:
            body = await resp.json()
            assert resp.status == 400 and body["code"] == 50035 and "files" in body["errors"]
        async with session.post(url, json={"content": ""}) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 50006
        async with session.post(url, json={"content": "x" * 2001}) as resp:
            assert resp.status == 400 and "content" in (await resp.json())["errors"]
        async with session.post(url, json={"embeds": [{"description": "d" * 4097}]}) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 50035
    assert fake.channel_messages(world.channel.id) == []


async def test_allowed_mentions_decide_who_is_pinged(world: World) -> None:
    fake = world.fake
    role = fake.add_role(world.guild, "artists")
    text = f"@everyone <@&{role.id}> <@{world.alice.id}> hello"
    url = f"{fake.api_base}/channels/{world.channel.id}/messages"
    headers = {"Authorization": f"Bot {fake.bot_token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        # No allowed_mentions: Discord parses every kind.
        async with session.post(url, json={"content": text}) as resp:
            everything = fake.messages[int((await resp.json())["id"])]
        async with session.post(url, json={"content": text, "allowed_mentions": {"parse": []}}) as resp:
            body = await resp.json()
            assert body["mentions"] == [] and body["mention_roles"] == [] and not body["mention_everyone"]
            nothing = fake.messages[int(body["id"])]
        only_alice = {"parse": [], "users": [str(world.alice.id)]}
        async with session.post(url, json={"content": text, "allowed_mentions": only_alice}) as resp:
            alice = fake.messages[int((await resp.json())["id"])]
        both = {"parse": ["users"], "users": [str(world.alice.id)]}
        async with session.post(url, json={"content": text, "allowed_mentions": both}) as resp:
            assert resp.status == 400 and "allowed_mentions" in (await resp.json())["errors"]
        async with session.post(url, json={"content": text, "allowed_mentions": {"parse": ["all"]}}) as resp:
            assert resp.status == 400
    assert everything.allowed_mentions is None and everything.mention_everyone
    assert everything.mention_roles == [str(role.id)] and len(everything.mentions) == 1
    assert nothing.allowed_mentions == {"parse": []} and not nothing.mention_everyone
    assert [int(u["id"]) for u in alice.mentions] == [world.alice.id] and alice.mention_roles == []
    assert not alice.mention_everyone
    # discord.py's client-wide default reaches message sends (and is merged with per-call mentions).
    client = discord.Client(
        intents=discord.Intents.none(),
        guild_ready_timeout=0.05,
        allowed_mentions=discord.AllowedMentions.none(),
    )
    async with running_client(fake, client):
        channel = await client.fetch_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        quiet = await channel.send(text)
        ping = await channel.send(text, allowed_mentions=discord.AllowedMentions(users=[world.alice]))
    assert fake.messages[quiet.id].allowed_mentions == {"parse": []}
    assert fake.messages[quiet.id].mentions == [] and not fake.messages[quiet.id].mention_everyone
    assert [int(u["id"]) for u in fake.messages[ping.id].mentions] == [world.alice.id]


async def test_auto_sharded_client_gets_shard_in_ready(world: World) -> None:
    fake = world.fake
    client = discord.AutoShardedClient(intents=discord.Intents.default(), guild_ready_timeout=0.05)
    async with running_client(fake, client):
        assert client.shard_count == 1 and client.get_guild(world.guild.id) is not None
    assert fake.session is not None and fake.session.shard == [0, 1]
    assert "/gateway/bot" in [r.path for r in fake.requests]


class PingCounter:
    """A client whose ``/ping`` answers with its own name (and records what it saw and what failed)."""

    def __init__(self, name: str, **options: Any) -> None:
        self.name = name
        self.client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05, **options)
        self.tree = app_commands.CommandTree(self.client)
        self.seen: list[int] = []
        self.errors: list[int] = []

        @self.tree.command(name="ping", description="Ping")
        async def ping(interaction: discord.Interaction) -> None:
            self.seen.append(interaction.id)
            try:
                await interaction.response.send_message(f"pong from {self.name}")
            except discord.HTTPException as exc:
                self.errors.append(exc.code)


async def test_two_processes_with_one_token_each_get_a_session(world: World) -> None:
    fake = world.fake
    a, b = PingCounter("a"), PingCounter("b")
    async with running_client(fake, a.client):
        await sync_to(a.tree, world.guild)
        session_a = fake.session
        async with running_client(fake, b.client):
            session_b = fake.session
            assert session_a is not None and session_b is not None and session_a is not session_b
            assert session_a.valid and fake.gateway.live_sessions() == [session_a, session_b]
            assert b.client.get_guild(world.guild.id) is not None
            # Without a choice both sessions get it, as on Discord: one answers, the other is refused.
            both = await fake.invoke_slash(world.alice, world.channel, "ping")
            for _ in range(250):  # the clients' lists do not wake the fake's waiters: poll them
                if len(a.seen) + len(b.seen) == 2 and a.errors + b.errors:
                    break
                await asyncio.sleep(0.02)
            assert (await both.wait_for_message()).content in ("pong from a", "pong from b")
            assert a.errors + b.errors == [40060]
            # A test may say which session receives an interaction.
            to_b = await fake.invoke_slash(world.alice, world.channel, "ping", via=session_b)
            assert (await to_b.wait_for_message()).content == "pong from b"
            to_a = await fake.invoke_slash(world.alice, world.channel, "ping", via=session_a)
            assert (await to_a.wait_for_message()).content == "pong from a"
            assert a.seen.count(to_b.id) == 0 and b.seen.count(to_a.id) == 0
        # Still connected after the other process left.
        again = await fake.invoke_slash(world.alice, world.channel, "ping")
        assert (await again.wait_for_message()).content == "pong from a"
    assert fake.identify_count == 2


async def test_shards_get_only_their_guilds_events(fake: FakeDiscord) -> None:
    guilds: dict[int, Guild] = {}
    while len(guilds) < 2:  # snowflakes carry a millisecond clock: make one guild for each of 2 shards
        guild = fake.add_guild(name="G")
        guilds.setdefault((guild.id >> 22) % 2, guild)
        await asyncio.sleep(0.002)
    alice = fake.add_user("alice")
    for guild in guilds.values():
        fake.add_member(guild, alice)
    shard0 = PingCounter("s0", shard_id=0, shard_count=2)
    shard1 = PingCounter("s1", shard_id=1, shard_count=2)
    async with running_client(fake, shard0.client), running_client(fake, shard1.client):
        await sync_to(shard0.tree, guilds[0])
        await sync_to(shard0.tree, guilds[1])
        for shard, counter in ((0, shard0), (1, shard1)):
            seen = {g.id for g in counter.client.guilds}
            assert guilds[shard].id in seen and {(g >> 22) % 2 for g in seen} == {shard}
        for shard, counter in ((0, shard0), (1, shard1)):
            ix = await fake.invoke_slash(alice, guilds[shard].channels[0], "ping")
            assert (await ix.wait_for_message()).content == f"pong from {counter.name}"
        assert len(shard0.seen) == len(shard1.seen) == 1


# ---------------------------------------------------------------------------------------------
# gateway
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [4000, None])
async def test_gateway_disconnect_resumes_and_replays(world: World, code: int | None) -> None:
    fake = world.fake
    client = make_client(message_content=True)
    tree = app_commands.CommandTree(client)
    seen = Seen()
    client.event(seen.on_message)
    resumed = asyncio.Event()

    @client.event
    async def on_resumed() -> None:
        resumed.set()

    @tree.command(name="ping", description="Ping")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        await fake.disconnect_gateway(code)
        missed = fake.post_user_message(world.alice, world.channel, "sent while disconnected")
        await fake.wait_until_resumed()
        await asyncio.wait_for(resumed.wait(), 5)
        await seen.wait_for_id(missed.id)
        ix = await fake.invoke_slash(world.alice, world.channel, "ping")
        msg = await ix.wait_for_message()
    assert msg.content == "pong"
    assert fake.identify_count == 1 and fake.resume_count == 1 and fake.gateway_connections == 2


async def test_gateway_invalid_session_reidentifies(world: World) -> None:
    fake = world.fake
    client = make_client()
    tree = app_commands.CommandTree(client)

    async def no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every non-initial IDENTIFY; skip that here."""

    client.before_identify_hook = no_identify_delay  # type: ignore[method-assign]

    @tree.command(name="ping", description="Ping")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    async with running_client(fake, client):
        await sync_to(tree, world.guild)
        await fake.disconnect_gateway(4009)
        await fake.wait_until_identified(count=2)
        ix = await fake.invoke_slash(world.alice, world.channel, "ping")
        assert (await ix.wait_for_message()).content == "pong"
    assert fake.identify_count == 2 and fake.resume_count == 0


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class Seen:
    """Collects ``on_message`` events of a client."""

    def __init__(self) -> None:
        self.messages: list[discord.Message] = []
        self._changed = asyncio.Event()

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message)
        self._changed.set()

    async def wait_for_id(self, message_id: int, limit: float = 5) -> discord.Message:
        async with asyncio.timeout(limit):
            while True:
                found = next((m for m in self.messages if m.id == message_id), None)
                if found is not None:
                    return found
                self._changed.clear()
                await self._changed.wait()


# ---------------------------------------------------------------------------------------------
# application owner / team, member permissions, forged component clicks
# ---------------------------------------------------------------------------------------------


async def test_application_owner_and_team_as_discord_reports_them(world: World) -> None:
    fake = world.fake
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.none(), guild_ready_timeout=0.05)
    async with running_client(fake, bot):
        info = await bot.application_info()
        assert info.owner.id == fake.app_owner.id and info.team is None
        lead, dev, viewer = (fake.add_user(n) for n in ("lead", "dev", "viewer"))
        fake.set_team(lead, [(dev, "developer"), (viewer, "read_only")], name="Crew")
        info = await bot.application_info()
        assert info.team is not None and info.team.name == "Crew" and info.team.owner_id == lead.id
        assert info.owner.id == info.team.id and info.owner.name == f"team{info.team.id}"
        roles = {m.id: m.role for m in info.team.members}
        assert roles == {
            lead.id: discord.TeamMemberRole.admin,
            dev.id: discord.TeamMemberRole.developer,
            viewer.id: discord.TeamMemberRole.read_only,
        }
        assert await bot.is_owner(lead) and await bot.is_owner(dev) and not await bot.is_owner(viewer)
        assert not await bot.is_owner(fake.app_owner)


async def test_member_permissions_are_a_role_the_client_sees(world: World) -> None:
    fake = world.fake
    bob = fake.add_user("bob")
    fake.add_member(world.guild, bob, permissions=int(Permission.MANAGE_MESSAGES))
    log = fake.add_channel(world.guild, name="mod-log")
    carol = fake.add_user("carol")
    fake.add_member(world.guild, carol)
    fake.set_channel_overwrite(log, carol, allow=int(Permission.MANAGE_MESSAGES))
    client = make_client(members=True)
    async with running_client(fake, client):
        await fake.wait_until_identified()
        guild = client.get_guild(world.guild.id)
        assert guild is not None
        member = guild.get_member(bob.id)
        assert member is not None and member.guild_permissions.manage_messages
        overwritten = guild.get_member(carol.id)
        assert overwritten is not None and not overwritten.guild_permissions.manage_messages
        channel = guild.get_channel(log.id)
        assert isinstance(channel, discord.TextChannel)
        assert channel.permissions_for(overwritten).manage_messages
        assert fake.member_permissions_in(log, carol) & Permission.MANAGE_MESSAGES


async def test_a_forged_component_click_reaches_the_client_but_no_view_handles_it(world: World) -> None:
    fake = world.fake
    client = make_client()
    seen: list[str] = []

    class Press(discord.ui.View):
        @discord.ui.button(label="Press", custom_id="real")
        async def press(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
            await interaction.response.send_message("pressed", ephemeral=True)

    @client.event
    async def on_interaction(interaction: discord.Interaction) -> None:
        seen.append(str((interaction.data or {}).get("custom_id")))

    async with running_client(fake, client):
        await fake.wait_until_identified()
        view = Press(timeout=None)
        client.add_view(view)
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send("buttons", view=view)
        message = fake.messages[sent.id]
        with pytest.raises(AssertionError, match="has no component"):
            await fake.click_button(world.alice, message, "forged")
        forged = await fake.forge_component_click(world.alice, message, "forged")
        real = await fake.click_button(world.alice, message, "real")
        await real.wait_for_response()
        assert seen == ["forged", "real"]
        assert forged.payload["data"] == {"custom_id": "forged", "component_type": 2}
        assert not forged.responses
