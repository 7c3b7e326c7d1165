"""A loopback fake of Discord (REST API v10 + gateway) for end-to-end tests with real discord.py.

Typical use::

    async with FakeDiscord() as fake:
        guild = fake.add_guild()
        alice = fake.add_user("alice")
        fake.add_member(guild, alice)
        client = make_bot()  # discord.Client / commands.Bot, ideally guild_ready_timeout=0.05
        async with running_client(fake, client):
            await client.tree.sync(guild=discord.Object(guild.id))
            ix = await fake.invoke_slash(alice, guild.default_channel, "imagine", {"prompt": "a cat"})
            msg = await ix.wait_for_message(lambda m: m.files)
"""

from .client import point_discord_at, running_client
from .errors import ApiError
from .gateway import GatewaySession
from .messages import Upload
from .models import (
    ALL_PERMISSIONS,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DM_APP_PERMISSIONS,
    Channel,
    Guild,
    Interaction,
    Member,
    Message,
    MessageFlag,
    MultipartPart,
    Overwrite,
    Permission,
    RecordedRequest,
    Role,
    User,
)
from .server import FakeDiscord

__all__ = [
    "ALL_PERMISSIONS",
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "DM_APP_PERMISSIONS",
    "ApiError",
    "Channel",
    "FakeDiscord",
    "GatewaySession",
    "Guild",
    "Interaction",
    "Member",
    "Message",
    "MessageFlag",
    "MultipartPart",
    "Overwrite",
    "Permission",
    "RecordedRequest",
    "Role",
    "Upload",
    "User",
    "point_discord_at",
    "running_client",
]
