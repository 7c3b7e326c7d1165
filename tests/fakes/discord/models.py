"""Records held by :class:`~tests.fakes.discord.FakeDiscord` and their Discord JSON shapes.

Every record is a plain dataclass that tests can inspect directly; ``to_payload`` methods
render the JSON object Discord's API v10 would return for it.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import enum
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "ALL_PERMISSIONS",
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "DM_APP_PERMISSIONS",
    "Channel",
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
    "User",
    "iso_now",
    "next_snowflake",
]

T = TypeVar("T")

DISCORD_EPOCH_MS = 1420070400000
_last_snowflake = 0


def next_snowflake() -> int:
    """Return a new, strictly increasing snowflake whose timestamp part is *now*.

    discord.py derives ``created_at`` (and therefore ``Interaction.expires_at``) from the
    snowflake, so ids carry the real creation time like Discord's do.
    """
    global _last_snowflake
    candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
    if candidate <= _last_snowflake:
        candidate = _last_snowflake + 1
    _last_snowflake = candidate
    return candidate


def iso_now() -> str:
    """Current UTC time in the ISO-8601 form Discord uses for timestamps."""
    return _dt.datetime.now(_dt.UTC).isoformat()


class Permission(enum.IntFlag):
    """Discord permission bits (https://discord.com/developers/docs/topics/permissions)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_AUDIT_LOG = 1 << 7
    PRIORITY_SPEAKER = 1 << 8
    STREAM = 1 << 9
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    SEND_TTS_MESSAGES = 1 << 12
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    VIEW_GUILD_INSIGHTS = 1 << 19
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    MUTE_MEMBERS = 1 << 22
    DEAFEN_MEMBERS = 1 << 23
    MOVE_MEMBERS = 1 << 24
    USE_VAD = 1 << 25
    CHANGE_NICKNAME = 1 << 26
    MANAGE_NICKNAMES = 1 << 27
    MANAGE_ROLES = 1 << 28
    MANAGE_WEBHOOKS = 1 << 29
    MANAGE_GUILD_EXPRESSIONS = 1 << 30
    USE_APPLICATION_COMMANDS = 1 << 31
    REQUEST_TO_SPEAK = 1 << 32
    MANAGE_EVENTS = 1 << 33
    MANAGE_THREADS = 1 << 34
    CREATE_PUBLIC_THREADS = 1 << 35
    CREATE_PRIVATE_THREADS = 1 << 36
    USE_EXTERNAL_STICKERS = 1 << 37
    SEND_MESSAGES_IN_THREADS = 1 << 38
    USE_EMBEDDED_ACTIVITIES = 1 << 39
    MODERATE_MEMBERS = 1 << 40
    SEND_VOICE_MESSAGES = 1 << 46
    SEND_POLLS = 1 << 49
    USE_EXTERNAL_APPS = 1 << 50
    PIN_MESSAGES = 1 << 51


#: Every permission bit discord.py 2.7 knows about (``discord.Permissions.all().value``).
ALL_PERMISSIONS = 8866461766385663

#: What ``@everyone`` gets in a new guild created by the fake.
DEFAULT_EVERYONE_PERMISSIONS = int(
    Permission.CREATE_INSTANT_INVITE
    | Permission.ADD_REACTIONS
    | Permission.STREAM
    | Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.CONNECT
    | Permission.SPEAK
    | Permission.USE_VAD
    | Permission.CHANGE_NICKNAME
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.CREATE_PUBLIC_THREADS
    | Permission.SEND_MESSAGES_IN_THREADS
    | Permission.SEND_POLLS
    | Permission.USE_EXTERNAL_APPS
)

#: Permissions of the bot's managed role in every guild (typical invite scope for a chat bot).
DEFAULT_BOT_PERMISSIONS = int(
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.SEND_MESSAGES_IN_THREADS
    | Permission.USE_APPLICATION_COMMANDS
)

#: ``app_permissions`` Discord sends for interactions in a DM with the bot.
DM_APP_PERMISSIONS = int(
    Permission.ADD_REACTIONS
    | Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.USE_EXTERNAL_STICKERS
    | Permission.SEND_VOICE_MESSAGES
    | Permission.SEND_POLLS
    | Permission.USE_EXTERNAL_APPS
)


class MessageFlag(enum.IntFlag):
    """Message flag bits used by the fake."""

    CROSSPOSTED = 1 << 0
    SUPPRESS_EMBEDS = 1 << 2
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    SUPPRESS_NOTIFICATIONS = 1 << 12
    IS_COMPONENTS_V2 = 1 << 15


class Notifier:
    """Wakes up waiters whenever some piece of state changes."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Signal a state change to everyone currently waiting."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], T], timeout: float, describe: Callable[[], str]) -> T:
        """Re-evaluate ``predicate`` on every change until it returns something truthy."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    result = predicate()
                    if result:
                        return result
                    await self._event.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {describe()}") from None


@dataclass(eq=False)
class User:
    """A Discord user (human or bot)."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    avatar: str | None = None
    locale: str = "en-US"

    def to_payload(self) -> dict[str, Any]:
        """The user object (``/users/{id}``)."""
        payload: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": self.avatar,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "collectibles": None,
            "primary_guild": None,
        }
        if self.bot:
            payload["bot"] = True
        return payload


@dataclass(eq=False)
class Role:
    """A guild role."""

    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    color: int = 0
    hoist: bool = False
    managed: bool = False
    mentionable: bool = False
    bot_id: int | None = None

    def to_payload(self) -> dict[str, Any]:
        """The role object."""
        payload: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "color": self.color,
            "colors": {"primary_color": self.color, "secondary_color": None, "tertiary_color": None},
            "hoist": self.hoist,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": self.mentionable,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload


@dataclass
class Overwrite:
    """A channel permission overwrite (``type`` 0 = role, 1 = member)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def to_payload(self) -> dict[str, Any]:
        """The overwrite object."""
        return {"id": str(self.id), "type": self.type, "allow": str(self.allow), "deny": str(self.deny)}


@dataclass(eq=False)
class Channel:
    """A guild text channel (type 0) or a DM channel (type 1)."""

    id: int
    type: int
    name: str | None = None
    guild_id: int | None = None
    position: int = 0
    nsfw: bool = False
    topic: str | None = None
    parent_id: int | None = None
    rate_limit_per_user: int = 0
    overwrites: dict[int, Overwrite] = field(default_factory=dict)
    recipients: list[User] = field(default_factory=list)
    last_message_id: int | None = None

    @property
    def is_dm(self) -> bool:
        """Whether this is a DM channel."""
        return self.type == 1

    def to_payload(self) -> dict[str, Any]:
        """The channel object (``/channels/{id}``)."""
        if self.is_dm:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": _opt_str(self.last_message_id),
                "flags": 0,
                "recipients": [u.to_payload() for u in self.recipients],
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.to_payload() for o in self.overwrites.values()],
            "nsfw": self.nsfw,
            "topic": self.topic,
            "parent_id": _opt_str(self.parent_id),
            "last_message_id": _opt_str(self.last_message_id),
            "rate_limit_per_user": self.rate_limit_per_user,
            "flags": 0,
        }


@dataclass(eq=False)
class Member:
    """A user's membership in a guild."""

    guild_id: int
    user: User
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_now)

    def to_payload(self, *, include_user: bool = True) -> dict[str, Any]:
        """The guild member object."""
        payload: dict[str, Any] = {
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if include_user:
            payload["user"] = self.user.to_payload()
        return payload


@dataclass(eq=False)
class Guild:
    """A guild with its roles, channels and members."""

    id: int
    name: str
    owner_id: int
    roles: list[Role] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)
    preferred_locale: str = "en-US"
    features: list[str] = field(default_factory=list)
    premium_tier: int = 0
    system_channel_id: int | None = None
    joined_at: str = field(default_factory=iso_now)
    #: Exact guild-level permissions of the bot, set by ``FakeDiscord.set_bot_permissions(guild, ...)``.
    bot_permissions_override: int | None = None

    @property
    def everyone_role(self) -> Role:
        """The ``@everyone`` role (its id equals the guild id)."""
        return self.get_role(self.id)

    @property
    def default_channel(self) -> Channel:
        """The first text channel (created together with the guild)."""
        return next(c for c in self.channels if c.type == 0)

    def get_role(self, role_id: int) -> Role:
        """Role by id (``KeyError`` if unknown)."""
        for role in self.roles:
            if role.id == role_id:
                return role
        raise KeyError(role_id)

    def get_channel(self, channel_id: int) -> Channel | None:
        """Channel by id or ``None``."""
        return next((c for c in self.channels if c.id == channel_id), None)

    def to_payload(self) -> dict[str, Any]:
        """The REST guild object (``GET /guilds/{id}``)."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.to_payload() for r in self.roles],
            "emojis": [],
            "stickers": [],
            "features": list(self.features),
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": _opt_str(self.system_channel_id),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": self.preferred_locale,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "incidents_data": None,
        }

    def to_gateway_payload(self, members: list[Member]) -> dict[str, Any]:
        """The GUILD_CREATE payload (full guild including channels and the given members)."""
        payload = self.to_payload()
        payload.update(
            {
                "unavailable": False,
                "joined_at": self.joined_at,
                "large": False,
                "member_count": len(self.members),
                "members": [m.to_payload() for m in members],
                "channels": [c.to_payload() for c in self.channels],
                "threads": [],
                "voice_states": [],
                "presences": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
                "embedded_activities": [],
                "lazy": True,
                "application_command_counts": {},
                "hub_type": None,
            }
        )
        return payload


@dataclass
class MultipartPart:
    """One part of a multipart/form-data request body."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        """The part decoded as UTF-8."""
        return self.data.decode()


@dataclass
class RecordedRequest:
    """An HTTP request the fake received (see ``FakeDiscord.requests``)."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    parts: list[MultipartPart]
    timestamp: float
    headers: dict[str, str]
    status: int | None = None
    response: Any = None
    #: The client's (host, port): one per TCP connection, so tests can count the connections used.
    peer: tuple[str, int] | None = None

    @property
    def files(self) -> list[MultipartPart]:
        """Uploaded file parts (``files[n]``)."""
        return [p for p in self.parts if p.filename is not None]

    def __repr__(self) -> str:
        return f"<RecordedRequest {self.method} {self.path} -> {self.status}>"


@dataclass(eq=False)
class Message:
    """A message stored by the fake.

    ``attachments`` holds Discord's attachment objects; ``files`` the uploaded bytes as
    ``(filename, data, content_type)`` tuples in the same order. ``edits`` keeps the payload of
    every previous version (oldest first).
    """

    id: int
    channel_id: int
    guild_id: int | None
    author: dict[str, Any]
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    attachments: list[dict[str, Any]] = field(default_factory=list)
    files: list[tuple[str, bytes, str | None]] = field(default_factory=list)
    type: int = 0
    tts: bool = False
    timestamp: str = field(default_factory=iso_now)
    edited_timestamp: str | None = None
    edits: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    mentions: list[dict[str, Any]] = field(default_factory=list)
    mention_roles: list[str] = field(default_factory=list)
    mention_everyone: bool = False
    #: The ``allowed_mentions`` of the body that last set the content (None: the body had none, so
    #: Discord parsed every kind). Not part of Discord's message object; for tests.
    allowed_mentions: dict[str, Any] | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    interaction: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    referenced_message: dict[str, Any] | None = None
    nonce: str | int | None = None
    reactions: list[dict[str, Any]] = field(default_factory=list)
    poll: dict[str, Any] | None = None
    #: Id of the interaction whose webhook/callback created this message, if any.
    interaction_id: int | None = None

    @property
    def author_id(self) -> int:
        """Id of the author."""
        return int(self.author["id"])

    @property
    def ephemeral(self) -> bool:
        """Whether the EPHEMERAL flag is set."""
        return bool(self.flags & MessageFlag.EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Whether this is a deferred ("thinking…") placeholder."""
        return bool(self.flags & MessageFlag.LOADING)

    @property
    def file_bytes(self) -> list[bytes]:
        """Just the uploaded bytes, in attachment order."""
        return [data for _, data, _ in self.files]

    def iter_components(self) -> Iterator[dict[str, Any]]:
        """All components, depth first (rows, containers, sections and their children)."""
        yield from _walk_components(self.components)

    def to_payload(self) -> dict[str, Any]:
        """The message object."""
        payload: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": self.type,
            "content": self.content,
            "author": self.author,
            "attachments": [dict(a) for a in self.attachments],
            "embeds": [dict(e) for e in self.embeds],
            "mentions": self.mentions,
            "mention_roles": self.mention_roles,
            "mention_everyone": self.mention_everyone,
            "pinned": False,
            "tts": self.tts,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "flags": self.flags,
            "components": self.components,
        }
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            payload["interaction_metadata"] = self.interaction_metadata
        if self.interaction is not None:
            payload["interaction"] = self.interaction
        if self.message_reference is not None:
            payload["message_reference"] = self.message_reference
            payload["referenced_message"] = self.referenced_message
        if self.nonce is not None:
            payload["nonce"] = self.nonce
        if self.reactions:
            payload["reactions"] = self.reactions
        if self.poll is not None:
            payload["poll"] = self.poll
        return payload

    def __repr__(self) -> str:
        return (
            f"<Message id={self.id} channel={self.channel_id} author={self.author.get('username')!r} "
            f"content={self.content!r} flags={self.flags} files={[f[0] for f in self.files]} "
            f"deleted={self.deleted}>"
        )


@dataclass(eq=False)
class Interaction:
    """An interaction the fake dispatched, and everything that happened to it.

    ``created_at``/``acked_at`` are ``time.monotonic()`` values, so
    ``ix.acked_at - ix.created_at`` is the acknowledgement latency in seconds.
    """

    id: int
    token: str
    type: int
    payload: dict[str, Any]
    user: User
    channel_id: int
    guild_id: int | None
    attachment_size_limit: int
    created_at: float = field(default_factory=time.monotonic)
    #: Callback bodies (``{"type": ..., "data": ...}``) in the order they were accepted.
    responses: list[dict[str, Any]] = field(default_factory=list)
    acked_at: float | None = None
    deferred: bool = False
    ephemeral: bool = False
    modal: dict[str, Any] | None = None
    autocomplete_choices: list[dict[str, Any]] | None = None
    #: The ``@original`` message (response message, deferral placeholder or the component's message).
    original: Message | None = None
    #: One entry per successful followup ``POST /webhooks/{app}/{token}`` (the first followup
    #: after a ``defer(thinking=True)`` *is* the original message, edited in place).
    followups: list[Message] = field(default_factory=list)
    #: Error bodies the fake returned for requests concerning this interaction.
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Message the component/modal came from (component interactions).
    source_message_id: int | None = None
    token_expired: bool = False
    ack_expired: bool = False
    _notifier: Notifier = field(default_factory=Notifier, repr=False)

    @property
    def response_type(self) -> int | None:
        """Type of the first accepted callback, or ``None``."""
        return self.responses[0]["type"] if self.responses else None

    @property
    def acknowledged(self) -> bool:
        """Whether a callback was accepted."""
        return bool(self.responses)

    @property
    def messages(self) -> list[Message]:
        """The original message plus followups, without duplicates."""
        seen: list[Message] = []
        for msg in [self.original, *self.followups]:
            if msg is not None and all(msg is not m for m in seen):
                seen.append(msg)
        return seen

    @property
    def data(self) -> dict[str, Any]:
        """The ``data`` object of the INTERACTION_CREATE payload."""
        data: dict[str, Any] = self.payload.get("data", {})
        return data

    def _changed(self) -> None:
        self._notifier.notify()

    async def wait_for(self, predicate: Callable[[Interaction], T], timeout: float = 10) -> T:
        """Wait until ``predicate(self)`` is truthy; re-checked on every change to this interaction."""
        return await self._notifier.wait_for(lambda: predicate(self), timeout, lambda: f"{self!r}")

    async def wait_for_response(self, timeout: float = 5) -> dict[str, Any]:
        """Wait for the first callback and return its body."""
        await self.wait_for(lambda ix: ix.responses, timeout)
        return self.responses[0]

    async def wait_for_message(
        self,
        predicate: Callable[[Message], bool] = lambda m: True,
        timeout: float = 10,
    ) -> Message:
        """Wait for a message created/edited through this interaction that matches ``predicate``.

        Messages that already match are returned immediately. The deferral placeholder is
        skipped while it is still loading.
        """

        def find() -> Message | None:
            for msg in reversed(self.messages):
                if not msg.loading and not msg.deleted and predicate(msg):
                    return msg
            return None

        result = await self.wait_for(lambda ix: find(), timeout)
        assert result is not None
        return result

    def __repr__(self) -> str:
        return (
            f"<Interaction id={self.id} type={self.type} response_type={self.response_type} "
            f"deferred={self.deferred} ephemeral={self.ephemeral} original={self.original!r} "
            f"followups={len(self.followups)} errors={self.errors}>"
        )


def _walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for component in components:
        yield component
        yield from _walk_components(component.get("components", []))
        for key in ("accessory", "component"):
            child = component.get(key)
            if isinstance(child, dict):
                yield from _walk_components([child])


def walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Depth-first iteration over a component tree."""
    return _walk_components(components)


def _opt_str(value: int | None) -> str | None:
    return None if value is None else str(value)


_counter = itertools.count(1)


def unique_suffix() -> int:
    """A process-wide increasing integer (for names and tokens)."""
    return next(_counter)
