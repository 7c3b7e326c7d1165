"""``FakeDiscord``: an in-process stand-in for Discord's REST API v10 and gateway.

The real, unmodified discord.py client talks to it over loopback HTTP and websockets; see the
package docstring for how to point discord.py at it.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from aiohttp import web

from . import errors, rest
from .gateway import (
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGES,
    INTENT_MESSAGE_CONTENT,
    GatewayHub,
    GatewaySession,
)
from .messages import Upload, apply_body, fill_mentions, make_attachment
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
    Notifier,
    Overwrite,
    RecordedRequest,
    Role,
    User,
    next_snowflake,
    unique_suffix,
    walk_components,
)
from .permissions import base_permissions, channel_permissions

T = TypeVar("T")

MIB = 1024 * 1024
#: ``GATEWAY_GUILD_MEMBERS_LIMITED | GATEWAY_MESSAGE_CONTENT_LIMITED | APPLICATION_COMMAND_BADGE``
APPLICATION_FLAGS = (1 << 15) | (1 << 19) | (1 << 23)

# Interaction types
PING = 1
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
APPLICATION_COMMAND_AUTOCOMPLETE = 4
MODAL_SUBMIT = 5

# Interaction callback types
CB_PONG = 1
CB_CHANNEL_MESSAGE = 4
CB_DEFERRED_CHANNEL_MESSAGE = 5
CB_DEFERRED_UPDATE_MESSAGE = 6
CB_UPDATE_MESSAGE = 7
CB_AUTOCOMPLETE_RESULT = 8
CB_MODAL = 9

_ALLOWED_CALLBACKS: dict[int, set[int]] = {
    PING: {CB_PONG},
    APPLICATION_COMMAND: {CB_CHANNEL_MESSAGE, CB_DEFERRED_CHANNEL_MESSAGE, CB_MODAL},
    MESSAGE_COMPONENT: {
        CB_CHANNEL_MESSAGE,
        CB_DEFERRED_CHANNEL_MESSAGE,
        CB_DEFERRED_UPDATE_MESSAGE,
        CB_UPDATE_MESSAGE,
        CB_MODAL,
    },
    APPLICATION_COMMAND_AUTOCOMPLETE: {CB_AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {
        CB_CHANNEL_MESSAGE,
        CB_DEFERRED_CHANNEL_MESSAGE,
        CB_DEFERRED_UPDATE_MESSAGE,
        CB_UPDATE_MESSAGE,
    },
}

# Option types that reference resolvable entities
OPT_SUB_COMMAND = 1
OPT_SUB_COMMAND_GROUP = 2
OPT_USER = 6
OPT_CHANNEL = 7
OPT_ROLE = 8
OPT_MENTIONABLE = 9
OPT_ATTACHMENT = 11


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]


class FakeDiscord:
    """A loopback fake of Discord's REST API v10 and gateway for the real discord.py client.

    Create it, ``await start()``, point discord.py at ``api_base``/``gateway_url`` (see
    :func:`tests.fakes.discord.running_client`), populate guilds/users, then drive the bot with
    :meth:`invoke_slash`, :meth:`click_button`, :meth:`submit_modal`, ... and inspect the
    resulting :class:`Interaction` / :class:`Message` records.
    """

    def __init__(self, *, bot_name: str = "Palette", bot_token: str = "fake-token") -> None:
        self.bot_user = User(id=next_snowflake(), username=bot_name, global_name=bot_name, bot=True)
        #: The application id; equal to the bot user id, as for every application created since 2020.
        self.application_id: int = self.bot_user.id
        self.app_owner = User(id=next_snowflake(), username="palette-owner")
        #: Set by :meth:`set_team`: the application is team-owned (``owner`` is then a pseudo user).
        self.app_team: dict[str, Any] | None = None
        #: Accepted in ``Authorization: Bot <token>`` and in gateway IDENTIFY/RESUME.
        self.bot_token = bot_token
        self.users: dict[int, User] = {self.bot_user.id: self.bot_user, self.app_owner.id: self.app_owner}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        #: Registered application commands by id (guild commands carry ``guild_id``).
        self.commands: dict[int, dict[str, Any]] = {}
        #: Number of bulk-overwrite (``PUT``) calls on command lists.
        self.command_puts = 0
        self.interactions: dict[int, Interaction] = {}
        #: Every HTTP request received, in order.
        self.requests: list[RecordedRequest] = []
        #: Requests to routes the fake does not implement (answered 404).
        self.unhandled: list[RecordedRequest] = []
        #: Attachment bytes served at ``{base_url}/attachments/{id}/{filename}``.
        self.cdn: dict[int, tuple[str, bytes, str | None]] = {}
        #: Attachment objects by id (everything uploaded by the bot or added with :meth:`add_attachment`).
        self.attachments: dict[int, dict[str, Any]] = {}
        #: Max total upload bytes per channel message (``POST /channels/{id}/messages``).
        self.upload_limit = 10 * MIB
        #: Seconds an interaction may stay unacknowledged (``None`` disables the check).
        self.interaction_ack_deadline: float | None = 3.0
        #: Seconds an interaction token (followups/@original) stays valid.
        self.interaction_token_ttl: float = 15 * 60
        #: Strip content/embeds/attachments/components from MESSAGE_CREATE/UPDATE like Discord
        #: does when the bot did not request the MESSAGE_CONTENT intent.
        self.enforce_message_content_intent = True
        self.gateway = GatewayHub(self)
        self.api_base = ""
        self.gateway_url = ""
        self.base_url = ""
        self._faults: list[_Fault] = []
        self._notifier = Notifier()
        self._message_log: list[Message] = []
        self._by_token: dict[str, Interaction] = {}
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind ``127.0.0.1`` on a free port and set ``api_base``, ``gateway_url`` and ``base_url``."""
        app = web.Application(middlewares=[rest.make_middleware(self)], client_max_size=1024**3)
        rest.add_routes(app, self)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/", self.gateway.handle)
        app.on_shutdown.append(self._on_shutdown)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        self.api_base = f"{self.base_url}/api/v10"
        self.gateway_url = f"ws://{host}:{port}/gateway"

    async def stop(self) -> None:
        """Close every gateway connection and the HTTP server."""
        if self._runner is not None:
            await self.gateway.close_all()
            await self._runner.cleanup()
            self._runner = None

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.gateway.close_all()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------
    # gateway controls / counters
    # ------------------------------------------------------------------------------------

    @property
    def gateway_connections(self) -> int:
        """How many websocket connections were opened to ``/gateway``."""
        return self.gateway.connection_count

    @property
    def identify_count(self) -> int:
        """How many successful IDENTIFYs were received."""
        return self.gateway.identify_count

    @property
    def resume_count(self) -> int:
        """How many successful RESUMEs were received."""
        return self.gateway.resume_count

    @property
    def heartbeat_interval(self) -> int:
        """``heartbeat_interval`` (ms) sent in HELLO."""
        return self.gateway.heartbeat_interval_ms

    @heartbeat_interval.setter
    def heartbeat_interval(self, value: int) -> None:
        self.gateway.heartbeat_interval_ms = value

    @property
    def session(self) -> GatewaySession | None:
        """The current gateway session (``None`` before the first IDENTIFY)."""
        return self.gateway.session

    async def wait_until_identified(self, timeout: float = 10, *, count: int = 1) -> None:
        """Wait until ``count`` IDENTIFYs happened and READY + GUILD_CREATEs were written to the socket."""

        def done() -> bool:
            session = self.gateway.session
            conn = self.gateway.current_connection
            return (
                self.identify_count >= count
                and session is not None
                and conn is not None
                and conn.sent_seq >= session.ready_seq
            )

        await self.wait_for_state(done, timeout, "IDENTIFY + READY")

    async def wait_until_resumed(self, timeout: float = 10, *, count: int = 1) -> None:
        """Wait until ``count`` RESUMEs were accepted and the replay + RESUMED was written."""

        def done() -> bool:
            session = self.gateway.session
            conn = self.gateway.current_connection
            return (
                self.resume_count >= count
                and session is not None
                and conn is not None
                and conn.sent_seq >= session.seq
            )

        await self.wait_for_state(done, timeout, f"{count} RESUME(s)")

    async def wait_for_state(self, predicate: Callable[[], T], timeout: float = 10, what: str = "") -> T:
        """Wait until ``predicate()`` is truthy; re-checked on every state change of the fake."""
        return await self._notifier.wait_for(predicate, timeout, lambda: what or repr(predicate))

    async def disconnect_gateway(self, code: int | None = 4000) -> None:
        """Close the bot's websocket with ``code`` (``None``: drop TCP without a close frame).

        discord.py RESUMEs after resumable codes (e.g. 4000, 1001, abrupt drops); for 4007/4009
        the fake also invalidates the session, so the RESUME gets INVALID_SESSION and the client
        re-IDENTIFIEs.
        """
        await self.gateway.disconnect(code)

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT (discord.py closes and RESUMEs)."""
        await self.gateway.send_op(7)

    async def invalidate_session(self, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION (``resumable=False`` forces a new IDENTIFY)."""
        if not resumable and self.gateway.session is not None:
            self.gateway.session.valid = False
        await self.gateway.send_op(9, resumable)

    def dispatch(self, event: str, data: Any) -> int | None:
        """Send an arbitrary gateway dispatch (returns its sequence number, ``None`` if no session)."""
        return self.gateway.dispatch(event, data)

    # ------------------------------------------------------------------------------------
    # fault injection
    # ------------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        json_body: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next request matching ``method`` and ``path_regex`` with the given error (once).

        ``path_regex`` is searched in the path relative to ``/api/v10`` (e.g.
        ``r"/channels/\\d+/messages$"``). Note discord.py only retries a 429 that carries a ``Via``
        header, and it retries 500/502/504 itself.
        """
        self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, json_body, headers or {}))

    def rate_limit_next(
        self, method: str, path_regex: str, retry_after: float = 0.05, *, is_global: bool = False
    ) -> None:
        """One-shot 429 that discord.py will honour and retry (it carries ``Via``)."""
        self.fail_next(
            method,
            path_regex,
            429,
            {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global},
            {"Via": "1.1 google", "Retry-After": str(max(1, round(retry_after)))},
        )

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method == method and fault.path.search(path):
                self._faults.remove(fault)
                return fault
        return None

    # ------------------------------------------------------------------------------------
    # world building
    # ------------------------------------------------------------------------------------

    def add_user(self, name: str = "alice", *, global_name: str | None = None, bot: bool = False) -> User:
        """Create a user."""
        user = User(id=next_snowflake(), username=name, global_name=global_name, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str = "Test Guild",
        owner_id: int | None = None,
        *,
        channel_name: str = "general",
        preferred_locale: str = "en-US",
        premium_tier: int = 0,
        shard: tuple[int, int] | None = None,
    ) -> Guild:
        """Create a guild the bot is in: ``@everyone``, the bot's managed role, one text channel.

        The owner (a new user unless ``owner_id`` is given) and the bot are members. If a bot is
        connected it receives GUILD_CREATE. ``shard=(i, n)``: its id is on shard ``i`` of ``n``
        (``(guild_id >> 22) % n == i``).
        """
        guild_id = next_snowflake()
        while shard is not None and (guild_id >> 22) % shard[1] != shard[0]:
            guild_id = next_snowflake()  # the timestamp part moves on every millisecond
        if owner_id is None:
            owner = self.add_user(f"owner{unique_suffix()}")
        else:
            owner = self.users.get(owner_id) or User(id=owner_id, username=f"owner{unique_suffix()}")
            self.users[owner.id] = owner
        guild = Guild(
            id=guild_id,
            name=name,
            owner_id=owner.id,
            preferred_locale=preferred_locale,
            premium_tier=premium_tier,
        )
        everyone = Role(
            id=guild_id, guild_id=guild_id, name="@everyone", permissions=DEFAULT_EVERYONE_PERMISSIONS
        )
        bot_role = Role(
            id=next_snowflake(),
            guild_id=guild_id,
            name=self.bot_user.username,
            permissions=DEFAULT_BOT_PERMISSIONS,
            position=1,
            managed=True,
            bot_id=self.bot_user.id,
        )
        guild.roles = [everyone, bot_role]
        guild.members[owner.id] = Member(guild_id=guild_id, user=owner)
        guild.members[self.bot_user.id] = Member(guild_id=guild_id, user=self.bot_user, roles=[bot_role.id])
        channel = Channel(id=next_snowflake(), type=0, name=channel_name, guild_id=guild_id)
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        guild.system_channel_id = channel.id
        self.guilds[guild_id] = guild
        self.gateway.dispatch(
            "GUILD_CREATE",
            lambda session: self._guild_create_payload(guild, session, joined=True),
            guild_id=guild.id,
        )
        return guild

    def set_team(
        self, owner: User, members: Sequence[tuple[User, str]] = (), *, name: str = "Palette Team"
    ) -> None:
        """Make the application team-owned, reported the way Discord does.

        ``GET /oauth2/applications/@me`` then carries a ``team`` object (``owner_user_id`` =
        ``owner``) and, as ``owner``, the team's pseudo user (``team<id>``, flag TEAM_PSEUDO_USER
        = 1 << 10) instead of a person. ``members`` are ``(user, role)`` with role ``"admin"``,
        ``"developer"`` or ``"read_only"``; the team owner is listed with role ``"admin"`` (Discord
        has no ``"owner"`` role value: the owner is known by ``owner_user_id``).
        """
        roles = ("admin", "developer", "read_only")
        listed = [(owner, "admin"), *((u, r) for u, r in members if u.id != owner.id)]
        for user, role in listed:
            if role not in roles:
                raise ValueError(f"team roles are {roles}, not {role!r}")
            self.users.setdefault(user.id, user)
        team_id = next_snowflake()
        self.app_team = {
            "icon": None,
            "id": str(team_id),
            "name": name,
            "owner_user_id": str(owner.id),
            "members": [
                {
                    "membership_state": 2,  # ACCEPTED
                    "permissions": ["*"],
                    "team_id": str(team_id),
                    "user": user.to_payload(),
                    "role": role,
                }
                for user, role in listed
            ],
        }

    def _application_owner_payload(self) -> dict[str, Any]:
        if self.app_team is None:
            return self.app_owner.to_payload()
        team_id = int(self.app_team["id"])
        pseudo = User(id=team_id, username=f"team{team_id}").to_payload()
        pseudo.update(discriminator="0000", public_flags=1 << 10, flags=1 << 10)
        return pseudo

    def bot_role(self, guild: Guild) -> Role:
        """The bot's managed role in ``guild``."""
        return next(r for r in guild.roles if r.bot_id == self.bot_user.id)

    def add_channel(
        self,
        guild: Guild,
        name: str = "general",
        nsfw: bool = False,
        *,
        topic: str | None = None,
        type: int = 0,
    ) -> Channel:
        """Create a guild text channel (type 0) and dispatch CHANNEL_CREATE."""
        channel = Channel(
            id=next_snowflake(),
            type=type,
            name=name,
            guild_id=guild.id,
            nsfw=nsfw,
            topic=topic,
            position=len(guild.channels),
        )
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        self.gateway.dispatch("CHANNEL_CREATE", channel.to_payload())
        return channel

    def add_dm_channel(self, user: User) -> Channel:
        """The DM channel between the bot and ``user`` (created on first use)."""
        for channel in self.channels.values():
            if channel.is_dm and channel.recipients and channel.recipients[0].id == user.id:
                return channel
        channel = Channel(id=next_snowflake(), type=1, recipients=[user])
        self.channels[channel.id] = channel
        return channel

    def add_role(self, guild: Guild, name: str = "role", permissions: int = 0, *, color: int = 0) -> Role:
        """Create a role (positioned above existing roles) and dispatch GUILD_ROLE_CREATE."""
        role = Role(
            id=next_snowflake(),
            guild_id=guild.id,
            name=name,
            permissions=int(permissions),
            position=len(guild.roles),
            color=color,
        )
        guild.roles.append(role)
        self.gateway.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.to_payload()})
        return role

    def add_member(
        self,
        guild: Guild,
        user: User,
        roles: Sequence[int] | None = None,
        permissions: int | None = None,
        *,
        nick: str | None = None,
    ) -> Member:
        """Make ``user`` a member of ``guild`` with ``roles`` (role ids).

        Permissions are computed like Discord does (``@everyone`` | roles, owner/ADMINISTRATOR =
        all, then channel overwrites). Discord has no per-member guild permissions, so
        ``permissions`` gives the member a role of their own carrying those bits (on top of
        ``@everyone``, like any role): the client's role cache then agrees with the fake, e.g. for
        discord.py's ``Member.guild_permissions``. Dispatches GUILD_MEMBER_ADD when the bot has the
        GUILD_MEMBERS intent.
        """
        self.users.setdefault(user.id, user)
        role_ids = list(roles or [])
        if permissions is not None:
            role_ids.append(self.add_role(guild, f"{user.username} permissions", permissions).id)
        member = Member(guild_id=guild.id, user=user, roles=role_ids, nick=nick)
        guild.members[user.id] = member
        payload = {**member.to_payload(), "guild_id": str(guild.id)}
        self.gateway.dispatch(
            "GUILD_MEMBER_ADD",
            lambda session: payload if session.has_intent(INTENT_GUILD_MEMBERS) else None,
            guild_id=guild.id,
        )
        return member

    def set_channel_overwrite(
        self, channel: Channel, target: Role | User | Member, allow: int = 0, deny: int = 0
    ) -> None:
        """Set a permission overwrite on a guild channel and dispatch CHANNEL_UPDATE."""
        if isinstance(target, Role):
            overwrite = Overwrite(id=target.id, type=0, allow=int(allow), deny=int(deny))
        else:
            user = target.user if isinstance(target, Member) else target
            overwrite = Overwrite(id=user.id, type=1, allow=int(allow), deny=int(deny))
        channel.overwrites[overwrite.id] = overwrite
        self.gateway.dispatch("CHANNEL_UPDATE", channel.to_payload())

    def set_bot_permissions(self, channel_or_guild: Channel | Guild, permissions: int) -> None:
        """Make the bot's permissions exactly ``permissions`` in a channel or guild-wide.

        For a channel this is a member overwrite for the bot (allow = ``permissions``, deny =
        everything else), so discord.py's own ``permissions_for`` agrees. For a guild the bot's
        managed role gets ``permissions`` and the fake uses exactly that value as the bot's base
        permissions (discord.py's cache may still OR in ``@everyone``).
        """
        permissions = int(permissions)
        if isinstance(channel_or_guild, Guild):
            guild = channel_or_guild
            guild.bot_permissions_override = permissions
            role = self.bot_role(guild)
            role.permissions = permissions
            self.gateway.dispatch("GUILD_ROLE_UPDATE", {"guild_id": str(guild.id), "role": role.to_payload()})
            return
        if channel_or_guild.is_dm:
            raise ValueError("DM channels have no permission overwrites")
        self.set_channel_overwrite(
            channel_or_guild, self.bot_user, allow=permissions, deny=ALL_PERMISSIONS & ~permissions
        )

    def bot_permissions_in(self, channel: Channel) -> int:
        """The bot's effective permissions in ``channel`` (DM: Discord's DM permission set)."""
        if channel.is_dm:
            return DM_APP_PERMISSIONS
        guild = self.guilds[channel.guild_id or 0]
        return channel_permissions(guild, channel, guild.members[self.bot_user.id], is_bot=True)

    def member_permissions_in(self, channel: Channel, user: User) -> int:
        """A member's effective permissions in a guild channel."""
        guild = self.guilds[channel.guild_id or 0]
        return channel_permissions(guild, channel, guild.members[user.id])

    def add_attachment(self, data: bytes, filename: str, content_type: str | None = None) -> dict[str, Any]:
        """Upload bytes to the fake CDN; returns an attachment object for interactions/user messages."""
        return make_attachment(self, filename, data, content_type)

    def attachment_bytes(self, attachment: dict[str, Any] | int | str) -> bytes:
        """Bytes stored for an attachment (object or id)."""
        attachment_id = int(attachment["id"]) if isinstance(attachment, dict) else int(attachment)
        return self.cdn[attachment_id][1]

    # ------------------------------------------------------------------------------------
    # messages
    # ------------------------------------------------------------------------------------

    def channel_messages(
        self, channel_id: int | Channel, *, include_deleted: bool = False, include_ephemeral: bool = True
    ) -> list[Message]:
        """Messages of a channel, oldest first."""
        cid = channel_id.id if isinstance(channel_id, Channel) else int(channel_id)
        return sorted(
            (
                m
                for m in self.messages.values()
                if m.channel_id == cid
                and (include_deleted or not m.deleted)
                and (include_ephemeral or not m.ephemeral)
            ),
            key=lambda m: m.id,
        )

    async def wait_for_message(
        self,
        predicate: Callable[[Message], bool] = lambda m: True,
        timeout: float = 10,
        *,
        existing: bool = False,
    ) -> Message:
        """Wait for a message create/edit (by anyone, any channel) matching ``predicate``.

        Only creates/edits after the call count unless ``existing=True``, in which case a
        current (non-deleted) matching message is returned immediately. Placeholders of
        ``defer(thinking=True)`` are skipped while loading.
        """
        start = len(self._message_log)

        def find() -> Message | None:
            if existing:
                for msg in sorted(self.messages.values(), key=lambda m: m.id):
                    if not msg.deleted and not msg.loading and predicate(msg):
                        return msg
            for msg in self._message_log[start:]:
                if not msg.deleted and not msg.loading and predicate(msg):
                    return msg
            return None

        result = await self.wait_for_state(find, timeout, "a matching message")
        assert result is not None
        return result

    def post_user_message(
        self,
        user: User,
        channel: Channel,
        content: str = "",
        attachments: Sequence[dict[str, Any]] | None = None,
        embeds: Sequence[dict[str, Any]] | None = None,
        *,
        reply_to: Message | None = None,
    ) -> Message:
        """A user posts a message (``attachments`` from :meth:`add_attachment`); dispatches MESSAGE_CREATE."""
        if channel.guild_id is not None and user.id not in self.guilds[channel.guild_id].members:
            raise AssertionError(f"{user.username} is not a member of guild {channel.guild_id}")
        msg = Message(
            id=next_snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=user.to_payload(),
            content=content,
            embeds=[dict(e) for e in embeds or []],
            attachments=[dict(a) for a in attachments or []],
            files=[self.cdn[int(a["id"])] for a in attachments or []],
        )
        if reply_to is not None:
            self._set_reference(msg, {"message_id": str(reply_to.id)})
        fill_mentions(self, msg)
        self._store_new_message(msg)
        return msg

    def _set_reference(self, msg: Message, reference: dict[str, Any]) -> None:
        target = self.messages.get(int(reference.get("message_id") or 0))
        if target is None or target.deleted:
            if reference.get("fail_if_not_exists", True):
                raise errors.invalid_form_body(
                    "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                )
            return
        msg.type = 19
        msg.message_reference = {
            "type": 0,
            "message_id": str(target.id),
            "channel_id": str(target.channel_id),
            **({"guild_id": str(target.guild_id)} if target.guild_id else {}),
        }
        msg.referenced_message = target.to_payload()

    def create_message(
        self,
        channel: Channel,
        payload: dict[str, Any],
        uploads: Sequence[Upload] = (),
        *,
        size_limit: int | None = None,
        interaction: Interaction | None = None,
        msg_type: int = 0,
        allow_ephemeral: bool = False,
    ) -> Message:
        """Create a message authored by the bot from an API body (validated like Discord)."""
        msg = Message(
            id=next_snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=self.bot_user.to_payload(),
            type=msg_type,
        )
        if interaction is not None:
            msg.webhook_id = self.application_id
            msg.application_id = self.application_id
            msg.interaction_id = interaction.id
            self._set_interaction_metadata(msg, interaction)
        if payload.get("message_reference"):
            self._set_reference(msg, payload["message_reference"])
        apply_body(
            self,
            msg,
            payload,
            list(uploads),
            creating=True,
            size_limit=self.upload_limit if size_limit is None else size_limit,
        )
        if not allow_ephemeral:
            msg.flags &= ~MessageFlag.EPHEMERAL
        self._store_new_message(msg)
        return msg

    def edit_message(
        self,
        msg: Message,
        payload: dict[str, Any],
        uploads: Sequence[Upload] = (),
        *,
        size_limit: int | None = None,
    ) -> Message:
        """Apply an edit body to ``msg`` (validated like Discord) and dispatch MESSAGE_UPDATE."""
        apply_body(
            self,
            msg,
            payload,
            list(uploads),
            creating=False,
            size_limit=self.upload_limit if size_limit is None else size_limit,
        )
        self._message_log.append(msg)
        if not msg.ephemeral:
            self._dispatch_message("MESSAGE_UPDATE", msg)
        self._message_changed(msg)
        return msg

    def delete_message(self, msg: Message) -> None:
        """Mark ``msg`` deleted and dispatch MESSAGE_DELETE."""
        msg.deleted = True
        if not msg.ephemeral:
            data: dict[str, Any] = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id is not None:
                data["guild_id"] = str(msg.guild_id)
            self.gateway.dispatch("MESSAGE_DELETE", data)
        self._message_changed(msg)

    def _store_new_message(self, msg: Message) -> None:
        self.messages[msg.id] = msg
        self._message_log.append(msg)
        channel = self.channels.get(msg.channel_id)
        if channel is not None and not msg.ephemeral:
            channel.last_message_id = msg.id
        if not msg.ephemeral:
            self._dispatch_message("MESSAGE_CREATE", msg)
        self._message_changed(msg)

    def _message_changed(self, msg: Message) -> None:
        if msg.interaction_id is not None:
            ix = self.interactions.get(msg.interaction_id)
            if ix is not None:
                ix._changed()
        for ix in self.interactions.values():
            if ix.original is msg and ix.id != msg.interaction_id:
                ix._changed()
        self._state_changed()

    def _dispatch_message(self, event: str, msg: Message) -> None:
        if not self.gateway.sessions:
            return
        # Like Discord: message events only reach a client that asked for the matching intent.
        needed = INTENT_GUILD_MESSAGES if msg.guild_id is not None else INTENT_DIRECT_MESSAGES
        data = msg.to_payload()
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
            guild = self.guilds.get(msg.guild_id)
            member = guild.members.get(msg.author_id) if guild else None
            if member is not None and msg.webhook_id is None:
                data["member"] = member.to_payload(include_user=False)

        def payload(session: GatewaySession) -> dict[str, Any] | None:
            if session.intents is not None and not session.has_intent(needed):
                return None
            if msg.guild_id is not None and self._strip_content(session, msg):
                stripped = {**data, "content": "", "embeds": [], "attachments": [], "components": []}
                stripped.pop("poll", None)
                return stripped
            return data

        self.gateway.dispatch(event, payload, guild_id=msg.guild_id)

    def _strip_content(self, session: GatewaySession, msg: Message) -> bool:
        if not self.enforce_message_content_intent or session.intents is None:
            return False
        if session.has_intent(INTENT_MESSAGE_CONTENT) or msg.guild_id is None:
            return False
        if msg.author_id == self.bot_user.id:
            return False
        return not any(int(u["id"]) == self.bot_user.id for u in msg.mentions)

    def _state_changed(self) -> None:
        self._notifier.notify()

    # ------------------------------------------------------------------------------------
    # gateway payloads
    # ------------------------------------------------------------------------------------

    def _me_payload(self) -> dict[str, Any]:
        payload = self.bot_user.to_payload()
        payload.update(
            verified=True, mfa_enabled=False, email=None, locale="en-US", flags=0, bio="", banner=None
        )
        return payload

    def _application_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self._application_owner_payload(),
            "team": self.app_team,
            "flags": APPLICATION_FLAGS,
            "bot": self.bot_user.to_payload(),
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "tags": [],
            "approximate_guild_count": len(self.guilds),
            "integration_types_config": {"0": {}},
        }

    def _ready_payload(self, session: GatewaySession) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "v": 10,
            "user": self._me_payload(),
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds if session.covers(g)],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": APPLICATION_FLAGS},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["us-east"],
            "user_settings": {},
            "auth": {},
            "_trace": ['["fake-discord-gateway",{"micros":0}]'],
        }
        if session.shard is not None:
            payload["shard"] = session.shard
        return payload

    def _guild_create_payload(
        self, guild: Guild, session: GatewaySession, *, joined: bool = False
    ) -> dict[str, Any]:
        """GUILD_CREATE; ``unavailable: false`` marks lazy loading after READY, a join omits it."""
        if session.intents is None or session.has_intent(INTENT_GUILD_MEMBERS):
            members = list(guild.members.values())
        else:
            members = [guild.members[self.bot_user.id]]
        payload = guild.to_gateway_payload(members)
        if joined:
            del payload["unavailable"]
        return payload

    # ------------------------------------------------------------------------------------
    # interactions: creating them
    # ------------------------------------------------------------------------------------

    def find_command(self, name: str, guild: Guild | None = None, type: int = 1) -> dict[str, Any] | None:
        """A registered command by name (guild commands of ``guild`` win over global ones)."""
        matches = [c for c in self.commands.values() if c["name"] == name and c.get("type", 1) == type]
        if guild is not None:
            for cmd in matches:
                if cmd.get("guild_id") == str(guild.id):
                    return cmd
        for cmd in matches:
            if cmd.get("guild_id") is None:
                return cmd
        return None

    def _require_command(self, name: str, channel: Channel, type: int) -> dict[str, Any]:
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        cmd = self.find_command(name, guild, type)
        if cmd is None:
            known = sorted(
                f"{c['name']} (type {c.get('type', 1)}, guild {c.get('guild_id') or 'global'})"
                for c in self.commands.values()
            )
            raise AssertionError(
                f"application command {name!r} (type {type}) is not registered for "
                f"{'guild ' + str(guild.id) if guild else 'DMs'}; registered: {known or 'none'} "
                "(did the bot sync its command tree?)"
            )
        if guild is None:
            contexts = cmd.get("contexts")
            if cmd.get("guild_id") is not None or (contexts is not None and 1 not in contexts):
                raise AssertionError(f"command {name!r} is not available in bot DMs (contexts={contexts})")
            if cmd.get("dm_permission") is False:
                raise AssertionError(f"command {name!r} has dm_permission=false")
        elif cmd.get("contexts") is not None and 0 not in cmd["contexts"]:
            raise AssertionError(f"command {name!r} is not available in guilds (contexts={cmd['contexts']})")
        return cmd

    def _new_interaction(
        self,
        type: int,
        user: User,
        channel: Channel,
        data: dict[str, Any] | None,
        *,
        attachment_size_limit: int,
        locale: str,
        app_permissions: int | None,
        message: Message | None = None,
        via: GatewaySession | None = None,
    ) -> Interaction:
        if self.gateway.session is None:
            raise AssertionError("no bot has IDENTIFIED on the gateway; start the client first")
        if via is not None and not via.valid:
            raise AssertionError(f"session {via.id} is no longer valid")
        interaction_id = next_snowflake()
        token = f"aW50ZXJhY3Rpb246{interaction_id}_{secrets.token_urlsafe(32)}"
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        app_perms = app_permissions if app_permissions is not None else self.bot_permissions_in(channel)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": type,
            "token": token,
            "version": 1,
            "channel_id": str(channel.id),
            "channel": channel.to_payload(),
            "locale": locale,
            "app_permissions": str(app_perms),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": attachment_size_limit,
        }
        if data is not None:
            payload["data"] = data
        if guild is not None:
            member = guild.members.get(user.id)
            if member is None:
                raise AssertionError(
                    f"user {user.username} is not a member of guild {guild.name!r}; "
                    "call fake.add_member first"
                )
            user_perms = channel_permissions(guild, channel, member)
            payload["channel"]["permissions"] = str(user_perms)
            member_payload = member.to_payload()
            member_payload["permissions"] = str(user_perms)
            payload.update(
                guild_id=str(guild.id),
                guild={
                    "id": str(guild.id),
                    "locale": guild.preferred_locale,
                    "features": list(guild.features),
                },
                guild_locale=guild.preferred_locale,
                member=member_payload,
                context=0,
                authorizing_integration_owners={"0": str(guild.id)},
            )
        else:
            payload.update(user=user.to_payload(), context=1, authorizing_integration_owners={"0": "0"})
            payload["channel"]["permissions"] = str(DM_APP_PERMISSIONS)
        if message is not None:
            payload["message"] = message.to_payload()
        ix = Interaction(
            id=interaction_id,
            token=token,
            type=type,
            payload=payload,
            user=user,
            channel_id=channel.id,
            guild_id=guild.id if guild else None,
            attachment_size_limit=attachment_size_limit,
            source_message_id=message.id if message is not None else None,
        )
        self.interactions[interaction_id] = ix
        self._by_token[token] = ix
        self.gateway.dispatch(
            "INTERACTION_CREATE", payload, sessions=None if via is None else [via], guild_id=ix.guild_id
        )
        return ix

    def _build_options(
        self,
        cmd: dict[str, Any],
        options: Sequence[dict[str, Any]] | dict[str, Any] | None,
        subcommand: str | None,
        attachments: Sequence[dict[str, Any]],
        guild: Guild | None,
        *,
        autocomplete: bool,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        definitions: list[dict[str, Any]] = cmd.get("options") or []
        path = subcommand.split() if subcommand else []
        wrappers: list[tuple[str, int]] = []
        for part in path:
            found = next(
                (
                    d
                    for d in definitions
                    if d["name"] == part and d["type"] in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP)
                ),
                None,
            )
            if found is None:
                raise AssertionError(f"command {cmd['name']!r} has no subcommand {part!r}")
            wrappers.append((part, found["type"]))
            definitions = found.get("options") or []
        if any(d["type"] in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP) for d in definitions):
            raise AssertionError(
                f"command {cmd['name']!r} needs a subcommand (subcommand='group sub' or 'sub')"
            )

        if isinstance(options, dict):
            options = [{"name": k, "value": v} for k, v in options.items()]
        resolved: dict[str, dict[str, Any]] = {}
        for att in attachments:
            resolved.setdefault("attachments", {})[str(att["id"])] = dict(att)
        by_name = {d["name"]: d for d in definitions}
        built: list[dict[str, Any]] = []
        for raw in options or []:
            option = dict(raw)
            definition = by_name.get(option["name"])
            if definition is None:
                raise AssertionError(
                    f"command {cmd['name']!r} has no option {option['name']!r}; options: {sorted(by_name)}"
                )
            option.setdefault("type", definition["type"])
            if option["type"] != definition["type"]:
                raise AssertionError(
                    f"option {option['name']!r} is registered with type {definition['type']}, "
                    f"got {option['type']}"
                )
            option["value"] = self._option_value(option, resolved, guild)
            choices = definition.get("choices")
            if choices and not option.get("focused") and option["value"] not in [c["value"] for c in choices]:
                raise AssertionError(f"{option['value']!r} is not a valid choice for {option['name']!r}")
            built.append(option)
        if not autocomplete:
            given = {o["name"] for o in built}
            missing = [d["name"] for d in definitions if d.get("required") and d["name"] not in given]
            if missing:
                raise AssertionError(f"required option(s) {missing} missing for command {cmd['name']!r}")
        elif sum(1 for o in built if o.get("focused")) != 1:
            raise AssertionError("autocomplete needs exactly one option with focused=True")
        for name, opt_type in reversed(wrappers):
            built = [{"name": name, "type": opt_type, "options": built}]
        return built, resolved

    def _option_value(
        self, option: dict[str, Any], resolved: dict[str, dict[str, Any]], guild: Guild | None
    ) -> Any:
        value = option.get("value")
        opt_type = option["type"]
        if opt_type == OPT_ATTACHMENT:
            if not isinstance(value, dict | int | str):
                raise AssertionError(f"attachment option {option['name']!r} needs an attachment or its id")
            att = self.attachment_object(value)
            resolved.setdefault("attachments", {})[str(att["id"])] = att
            return str(att["id"])
        if opt_type in (OPT_USER, OPT_MENTIONABLE) and isinstance(value, User | Member):
            value = value.user if isinstance(value, Member) else value
        if opt_type in (OPT_USER, OPT_CHANNEL, OPT_ROLE, OPT_MENTIONABLE) and isinstance(
            value, User | Channel | Role
        ):
            value = str(value.id)
        if opt_type in (OPT_USER, OPT_MENTIONABLE) and value is not None and int(value) in self.users:
            user = self.users[int(value)]
            resolved.setdefault("users", {})[str(user.id)] = user.to_payload()
            if guild is not None and user.id in guild.members:
                member = guild.members[user.id].to_payload(include_user=False)
                member["permissions"] = str(base_permissions(guild, guild.members[user.id]))
                resolved.setdefault("members", {})[str(user.id)] = member
        elif opt_type == OPT_CHANNEL and value is not None and int(value) in self.channels:
            channel = self.channels[int(value)]
            resolved.setdefault("channels", {})[str(channel.id)] = {
                **channel.to_payload(),
                "permissions": str(self.bot_permissions_in(channel)),
            }
        elif opt_type in (OPT_ROLE, OPT_MENTIONABLE) and guild is not None and value is not None:
            with contextlib.suppress(KeyError, ValueError):
                resolved.setdefault("roles", {})[str(value)] = guild.get_role(int(value)).to_payload()
        return value

    def _command_data(self, cmd: dict[str, Any], **extra: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": cmd.get("type", 1)}
        if cmd.get("guild_id") is not None:
            data["guild_id"] = cmd["guild_id"]
        data.update({k: v for k, v in extra.items() if v})
        return data

    async def invoke_slash(
        self,
        user: User,
        channel: Channel,
        name: str,
        options: Sequence[dict[str, Any]] | dict[str, Any] | None = None,
        attachments: Sequence[dict[str, Any]] | None = None,
        subcommand: str | None = None,
        attachment_size_limit: int = 10 * MIB,
        locale: str = "en-US",
        app_permissions: int | None = None,
        via: GatewaySession | None = None,
    ) -> Interaction:
        """Dispatch a CHAT_INPUT command interaction (type 2) for the registered command ``name``.

        ``options`` is a list of Discord option objects (``type`` may be omitted — it is taken
        from the registered definition) or a ``{name: value}`` dict. Attachment option values
        may be attachment objects from :meth:`add_attachment` or their ids; they are put into
        ``data.resolved.attachments``. Users/roles/channels are resolved too.
        ``subcommand`` is ``"sub"`` or ``"group sub"``. ``via``: only that gateway session receives it
        (by default every session on the guild's shard does, as on Discord).
        """
        cmd = self._require_command(name, channel, 1)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        built, resolved = self._build_options(
            cmd, options, subcommand, list(attachments or []), guild, autocomplete=False
        )
        data = self._command_data(cmd, options=built, resolved=resolved)
        return self._new_interaction(
            APPLICATION_COMMAND,
            user,
            channel,
            data,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
            app_permissions=app_permissions,
            via=via,
        )

    async def autocomplete(
        self,
        user: User,
        channel: Channel,
        name: str,
        options: Sequence[dict[str, Any]] | dict[str, Any] | None = None,
        subcommand: str | None = None,
        *,
        locale: str = "en-US",
    ) -> Interaction:
        """Dispatch an APPLICATION_COMMAND_AUTOCOMPLETE interaction (type 4); one option must be focused."""
        cmd = self._require_command(name, channel, 1)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        built, _ = self._build_options(cmd, options, subcommand, [], guild, autocomplete=True)
        data = self._command_data(cmd, options=built)
        return self._new_interaction(
            APPLICATION_COMMAND_AUTOCOMPLETE,
            user,
            channel,
            data,
            attachment_size_limit=10 * MIB,
            locale=locale,
            app_permissions=None,
        )

    async def invoke_message_command(
        self,
        user: User,
        channel: Channel,
        name: str,
        target_message: Message,
        *,
        attachment_size_limit: int = 10 * MIB,
        locale: str = "en-US",
        app_permissions: int | None = None,
    ) -> Interaction:
        """Dispatch a MESSAGE context-menu command (type 2, command type 3) targeting a message."""
        cmd = self._require_command(name, channel, 3)
        target = target_message.to_payload()
        if target_message.guild_id is not None:
            target["guild_id"] = str(target_message.guild_id)
        data = self._command_data(
            cmd, target_id=str(target_message.id), resolved={"messages": {str(target_message.id): target}}
        )
        return self._new_interaction(
            APPLICATION_COMMAND,
            user,
            channel,
            data,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
            app_permissions=app_permissions,
        )

    async def invoke_user_command(
        self,
        user: User,
        channel: Channel,
        name: str,
        target_user: User,
        *,
        attachment_size_limit: int = 10 * MIB,
        locale: str = "en-US",
    ) -> Interaction:
        """Dispatch a USER context-menu command (type 2, command type 2)."""
        cmd = self._require_command(name, channel, 2)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        resolved: dict[str, dict[str, Any]] = {}
        self._option_value({"type": OPT_USER, "value": str(target_user.id)}, resolved, guild)
        data = self._command_data(cmd, target_id=str(target_user.id), resolved=resolved)
        return self._new_interaction(
            APPLICATION_COMMAND,
            user,
            channel,
            data,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
            app_permissions=None,
        )

    async def click_button(
        self,
        user: User,
        message: Message,
        custom_id: str,
        *,
        values: Sequence[str] | None = None,
        attachment_size_limit: int = 10 * MIB,
        locale: str = "en-US",
        via: GatewaySession | None = None,
    ) -> Interaction:
        """Click a button (or choose ``values`` in a select menu) on ``message`` (MESSAGE_COMPONENT).

        ``via``: only that gateway session receives the click (see :meth:`invoke_slash`)."""
        if message.deleted:
            raise AssertionError(f"message {message.id} was deleted")
        component = next((c for c in message.iter_components() if c.get("custom_id") == custom_id), None)
        if component is None:
            ids = [c.get("custom_id") for c in message.iter_components() if c.get("custom_id")]
            raise AssertionError(f"message {message.id} has no component {custom_id!r}; custom_ids: {ids}")
        if component.get("disabled"):
            raise AssertionError(f"component {custom_id!r} is disabled")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] != 2:
            data["values"] = list(values or [])
        elif values is not None:
            raise AssertionError("values= is only for select menus")
        channel = self.channels[message.channel_id]
        return self._new_interaction(
            MESSAGE_COMPONENT,
            user,
            channel,
            data,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
            app_permissions=None,
            message=message,
            via=via,
        )

    async def forge_component_click(
        self, user: User, message: Message, custom_id: str, *, component_type: int = 2
    ) -> Interaction:
        """A MESSAGE_COMPONENT interaction on ``message`` naming a ``custom_id`` it may not carry.

        Discord only sends clicks on components that exist on the message (:meth:`click_button`
        insists on that too); this skips the check, so a test can prove the bot ignores such a
        payload instead of trusting the ``custom_id`` alone.
        """
        if message.deleted:
            raise AssertionError(f"message {message.id} was deleted")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if component_type != 2:
            data["values"] = []
        return self._new_interaction(
            MESSAGE_COMPONENT,
            user,
            self.channels[message.channel_id],
            data,
            attachment_size_limit=10 * MIB,
            locale="en-US",
            app_permissions=None,
            message=message,
        )

    async def submit_modal(
        self,
        user: User,
        channel: Channel,
        custom_id: str,
        values: dict[str, Any],
        message: Message | None = None,
        *,
        attachment_size_limit: int = 10 * MIB,
        locale: str = "en-US",
    ) -> Interaction:
        """Submit the modal ``custom_id`` the bot showed earlier, with ``{component custom_id: value}``.

        Values are strings for text inputs, lists of strings for selects, and lists of attachment
        objects/ids (from :meth:`add_attachment`) for file uploads (type 19).

        The submitted component tree mirrors the modal the bot sent (action rows of text inputs,
        or discord.py 2.6+ label components, type 18). If the modal was opened from a message
        component, the submission carries that message (unless ``message`` overrides it).
        """
        source = next(
            (
                ix
                for ix in reversed(list(self.interactions.values()))
                if ix.modal and ix.modal.get("custom_id") == custom_id
            ),
            None,
        )
        if source is None:
            shown = [ix.modal.get("custom_id") for ix in self.interactions.values() if ix.modal]
            raise AssertionError(f"the bot never showed a modal {custom_id!r}; modals shown: {shown}")
        assert source.modal is not None
        remaining = dict(values)
        resolved: dict[str, dict[str, Any]] = {}

        def mirror(component: dict[str, Any]) -> dict[str, Any] | None:
            ctype = component.get("type")
            out: dict[str, Any] = {"type": ctype}
            if "id" in component:
                out["id"] = component["id"]
            if ctype == 1:
                out["components"] = [c for c in map(mirror, component.get("components", [])) if c]
                return out
            if ctype == 18:
                child = mirror(component["component"])
                if child is None:
                    return None
                out["component"] = child
                return out
            if ctype == 10:
                return out
            cid = component.get("custom_id")
            if cid is None:
                return None
            out["custom_id"] = cid
            if ctype == 4:
                value = remaining.pop(cid, component.get("value") or "")
                if not isinstance(value, str):
                    raise AssertionError(f"text input {cid!r} takes a string")
                if component.get("required", True) and not value:
                    raise AssertionError(f"text input {cid!r} is required")
                if value and len(value) < component.get("min_length", 0):
                    raise AssertionError(f"text input {cid!r} is shorter than min_length")
                if len(value) > component.get("max_length", 4000):
                    raise AssertionError(f"text input {cid!r} is longer than max_length")
                out["value"] = value
            else:
                raw = remaining.pop(cid, [])
                chosen = [raw] if isinstance(raw, str) else list(raw)
                if ctype == 19:
                    objects = [self.attachment_object(att) for att in chosen]
                    for att in objects:
                        resolved.setdefault("attachments", {})[str(att["id"])] = att
                    chosen = [str(att["id"]) for att in objects]
                out["values"] = chosen
            return out

        components = [c for c in map(mirror, source.modal.get("components", [])) if c]
        if remaining:
            raise AssertionError(f"modal {custom_id!r} has no component(s) {sorted(remaining)}")
        data: dict[str, Any] = {"custom_id": custom_id, "components": components}
        if resolved:
            data["resolved"] = resolved
        if message is None and source.source_message_id is not None:
            message = self.messages.get(source.source_message_id)
        return self._new_interaction(
            MODAL_SUBMIT,
            user,
            channel,
            data,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
            app_permissions=None,
            message=message,
        )

    def attachment_object(self, attachment: dict[str, Any] | int | str) -> dict[str, Any]:
        """The attachment object for an object or id previously returned by :meth:`add_attachment`."""
        attachment_id = int(attachment["id"]) if isinstance(attachment, dict) else int(attachment)
        try:
            return dict(self.attachments[attachment_id])
        except KeyError:
            raise AssertionError(f"attachment {attachment_id} unknown; use fake.add_attachment()") from None

    def expire_interaction(self, ix: Interaction) -> None:
        """Make further callbacks for ``ix`` fail with 404 / 10062 Unknown interaction."""
        ix.ack_expired = True
        ix._changed()

    def expire_token(self, ix: Interaction) -> None:
        """Make ``ix``'s webhook token invalid (401 / 50027), as after 15 minutes."""
        ix.token_expired = True
        ix._changed()

    def interaction_by_token(self, token: str) -> Interaction | None:
        """Interaction record for a token."""
        return self._by_token.get(token)

    # ------------------------------------------------------------------------------------
    # interactions: responses (called by the REST layer)
    # ------------------------------------------------------------------------------------

    def _interaction_error(self, ix: Interaction, error: errors.ApiError) -> errors.ApiError:
        ix.errors.append(error.body())
        ix._changed()
        return error

    def _check_token(self, ix: Interaction) -> None:
        expired = time.monotonic() - ix.created_at > self.interaction_token_ttl
        if ix.token_expired or expired:
            raise self._interaction_error(ix, errors.invalid_webhook_token())

    def _message_type_for(self, ix: Interaction) -> int:
        if ix.type == APPLICATION_COMMAND:
            return 20 if ix.data.get("type", 1) == 1 else 23
        return 0

    def _set_interaction_metadata(
        self, msg: Message, ix: Interaction, *, followup_of: Message | None = None
    ) -> None:
        meta: dict[str, Any] = {
            "id": str(ix.id),
            "type": ix.type,
            "user": ix.user.to_payload(),
            "authorizing_integration_owners": ix.payload.get("authorizing_integration_owners", {}),
        }
        if ix.type == APPLICATION_COMMAND:
            meta["name"] = ix.data.get("name")
            meta["command_type"] = ix.data.get("type", 1)
            if ix.data.get("target_id") and ix.data.get("type") == 2:
                meta["target_user"] = self.users[int(ix.data["target_id"])].to_payload()
            elif ix.data.get("target_id"):
                meta["target_message_id"] = ix.data["target_id"]
        if ix.source_message_id is not None and ix.type == MESSAGE_COMPONENT:
            meta["interacted_message_id"] = str(ix.source_message_id)
        if followup_of is not None:
            meta["original_response_message_id"] = str(followup_of.id)
        msg.interaction_metadata = meta
        if ix.type in (APPLICATION_COMMAND, MESSAGE_COMPONENT, MODAL_SUBMIT):
            name = ix.data.get("name") if ix.type == APPLICATION_COMMAND else ix.data.get("custom_id", "")
            msg.interaction = {"id": str(ix.id), "type": ix.type, "name": name, "user": ix.user.to_payload()}

    def handle_callback(
        self, ix: Interaction, body: dict[str, Any], uploads: list[Upload], with_response: bool
    ) -> dict[str, Any] | None:
        """``POST /interactions/{id}/{token}/callback``; returns the callback-response object."""
        deadline = self.interaction_ack_deadline
        if ix.ack_expired or (deadline is not None and time.monotonic() - ix.created_at > deadline):
            raise self._interaction_error(ix, errors.unknown_interaction())
        if ix.acknowledged:
            raise self._interaction_error(ix, errors.already_acknowledged())
        cb_type = body.get("type")
        data = body.get("data") or {}
        allowed = set(_ALLOWED_CALLBACKS.get(ix.type, set()))
        if ix.type == MODAL_SUBMIT and ix.source_message_id is None:
            # A silent type-6 ack is always valid for modal submits; UPDATE_MESSAGE needs a message.
            allowed.discard(CB_UPDATE_MESSAGE)
        if cb_type not in allowed:
            raise self._interaction_error(
                ix,
                errors.invalid_form_body(
                    "type", "INTERACTION_CALLBACK_TYPE_INVALID", f"Callback type {cb_type} is not valid here"
                ),
            )
        channel = self.channels[ix.channel_id]
        message: Message | None = None
        try:
            if cb_type == CB_CHANNEL_MESSAGE:
                message = self.create_message(
                    channel,
                    data,
                    uploads,
                    size_limit=ix.attachment_size_limit,
                    interaction=ix,
                    msg_type=self._message_type_for(ix),
                    allow_ephemeral=True,
                )
            elif cb_type == CB_DEFERRED_CHANNEL_MESSAGE:
                message = Message(
                    id=next_snowflake(),
                    channel_id=channel.id,
                    guild_id=channel.guild_id,
                    author=self.bot_user.to_payload(),
                    type=self._message_type_for(ix),
                    flags=MessageFlag.LOADING | (int(data.get("flags") or 0) & MessageFlag.EPHEMERAL),
                    webhook_id=self.application_id,
                    application_id=self.application_id,
                    interaction_id=ix.id,
                )
                self._set_interaction_metadata(message, ix)
                self._store_new_message(message)
            elif cb_type == CB_DEFERRED_UPDATE_MESSAGE and ix.source_message_id is None:
                message = None
            elif cb_type in (CB_DEFERRED_UPDATE_MESSAGE, CB_UPDATE_MESSAGE):
                message = self.messages.get(ix.source_message_id or 0)
                if message is None or message.deleted:
                    raise errors.unknown_message()
                if cb_type == CB_UPDATE_MESSAGE:
                    self.edit_message(message, data, uploads, size_limit=ix.attachment_size_limit)
            elif cb_type == CB_AUTOCOMPLETE_RESULT:
                choices = data.get("choices") or []
                if len(choices) > 25:
                    raise errors.invalid_form_body(
                        "data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                    )
                ix.autocomplete_choices = list(choices)
            elif cb_type == CB_MODAL:
                self._check_modal(data)
                ix.modal = data
        except errors.ApiError as exc:
            raise self._interaction_error(ix, exc) from None

        ix.responses.append(body)
        ix.acked_at = time.monotonic()
        if cb_type in (CB_DEFERRED_CHANNEL_MESSAGE, CB_DEFERRED_UPDATE_MESSAGE):
            ix.deferred = True
        if message is not None:
            ix.original = message
        if cb_type in (CB_CHANNEL_MESSAGE, CB_DEFERRED_CHANNEL_MESSAGE):
            ix.ephemeral = bool(message and message.ephemeral)
        ix._changed()
        self._state_changed()
        if not with_response:
            return None
        interaction: dict[str, Any] = {"id": str(ix.id), "type": ix.type, "activity_instance_id": None}
        response: dict[str, Any] = {"interaction": interaction}
        if message is not None:
            interaction.update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
            if cb_type != CB_DEFERRED_UPDATE_MESSAGE:
                response["resource"] = {"type": cb_type, "message": message.to_payload()}
        return response

    @staticmethod
    def _check_modal(data: dict[str, Any]) -> None:
        if not data.get("custom_id") or len(data["custom_id"]) > 100:
            raise errors.invalid_form_body(
                "data.custom_id", "BASE_TYPE_REQUIRED", "custom_id is required (1-100)"
            )
        title = data.get("title") or ""
        if not 1 <= len(title) <= 45:
            raise errors.invalid_form_body(
                "data.title", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length."
            )
        components = data.get("components") or []
        if not 1 <= len(components) <= 5:
            raise errors.invalid_form_body(
                "data.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
            )
        for component in walk_components(components):
            if component.get("type") == 4 and len(component.get("label") or "") > 45:
                raise errors.invalid_form_body(
                    "data.components", "BASE_TYPE_MAX_LENGTH", "label must be <= 45"
                )

    def _webhook_interaction(self, app_id: int, token: str) -> Interaction:
        ix = self._by_token.get(token)
        if ix is None or app_id != self.application_id:
            raise errors.unknown_webhook()
        self._check_token(ix)
        return ix

    def handle_followup(
        self, ix: Interaction, body: dict[str, Any], uploads: list[Upload], wait: bool
    ) -> dict[str, Any] | None:
        """``POST /webhooks/{app}/{token}``: the first one after a type-5 deferral replaces @original."""
        if ix.response_type not in (
            CB_CHANNEL_MESSAGE,
            CB_DEFERRED_CHANNEL_MESSAGE,
            CB_DEFERRED_UPDATE_MESSAGE,
            CB_UPDATE_MESSAGE,
        ):
            raise self._interaction_error(ix, errors.unknown_webhook())
        original = ix.original
        try:
            if (
                ix.response_type == CB_DEFERRED_CHANNEL_MESSAGE
                and original is not None
                and original.loading
                and not original.deleted
            ):
                message = self.edit_message(original, body, uploads, size_limit=ix.attachment_size_limit)
            else:
                channel = self.channels[ix.channel_id]
                message = self.create_message(
                    channel,
                    body,
                    uploads,
                    size_limit=ix.attachment_size_limit,
                    interaction=ix,
                    msg_type=self._message_type_for(ix),
                    allow_ephemeral=True,
                )
                if original is not None:
                    self._set_interaction_metadata(message, ix, followup_of=original)
        except errors.ApiError as exc:
            raise self._interaction_error(ix, exc) from None
        ix.followups.append(message)
        ix._changed()
        return message.to_payload() if wait else None

    def _webhook_message(self, ix: Interaction, message_ref: str) -> Message:
        if message_ref == "@original":
            msg = ix.original
        else:
            try:
                wanted = int(message_ref)
            except ValueError:
                raise errors.unknown_message() from None
            msg = next((m for m in ix.messages if m.id == wanted), None)
            if msg is None:
                candidate = self.messages.get(wanted)
                if candidate is not None and candidate.webhook_id == self.application_id:
                    msg = candidate
        if msg is None or msg.deleted:
            raise self._interaction_error(ix, errors.unknown_message())
        return msg

    def handle_webhook_edit(
        self, ix: Interaction, message_ref: str, body: dict[str, Any], uploads: list[Upload]
    ) -> dict[str, Any]:
        """``PATCH /webhooks/{app}/{token}/messages/{@original|id}``."""
        msg = self._webhook_message(ix, message_ref)
        try:
            self.edit_message(msg, body, uploads, size_limit=ix.attachment_size_limit)
        except errors.ApiError as exc:
            raise self._interaction_error(ix, exc) from None
        ix._changed()
        return msg.to_payload()

    def handle_webhook_delete(self, ix: Interaction, message_ref: str) -> None:
        """``DELETE /webhooks/{app}/{token}/messages/{@original|id}``."""
        msg = self._webhook_message(ix, message_ref)
        self.delete_message(msg)
        ix._changed()
