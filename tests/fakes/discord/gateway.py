"""The fake's gateway: sessions, sequence numbers, resume replay and the aiohttp websocket handler.

Like Discord, one bot token may hold several sessions at once (one per IDENTIFY; each counts against
``session_start_limit``). A dispatch goes to every valid session whose shard covers it: guild events to
shard ``(guild_id >> 22) % num_shards``, everything else (DMs) to shard 0. Sessions on the same shard
(two unsharded processes with one token) each get every event, as on Discord, where the first to answer
an interaction wins and the other is told it was already acknowledged. A test can name the session that
receives an interaction (``via=`` on the interaction methods of :class:`FakeDiscord`): the one that wins
that race.

Frames are sent as uncompressed JSON text. discord.py 2.7 asks for ``compress=zlib-stream``
(or ``zstd-stream``) in the query string, but it only decompresses *binary* frames and parses text
frames directly, so plain text is accepted by the real client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

if TYPE_CHECKING:
    from .server import FakeDiscord

_log = logging.getLogger(__name__)

# Gateway opcodes
DISPATCH = 0
HEARTBEAT = 1
IDENTIFY = 2
PRESENCE_UPDATE = 3
VOICE_STATE_UPDATE = 4
RESUME = 6
RECONNECT = 7
REQUEST_GUILD_MEMBERS = 8
INVALID_SESSION = 9
HELLO = 10
HEARTBEAT_ACK = 11

# Intent bits
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_MESSAGE_CONTENT = 1 << 15
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12


@dataclass(eq=False)
class GatewaySession:
    """One identified gateway session (survives disconnects until invalidated or replaced)."""

    id: str
    intents: int | None
    shard: list[int] | None
    #: All dispatches of this session; ``events[n]`` carries sequence ``n + 1``.
    events: list[dict[str, Any]] = field(default_factory=list)
    connection: GatewayConnection | None = None
    valid: bool = True
    ready_seq: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def seq(self) -> int:
        """Sequence number of the last dispatch."""
        return len(self.events)

    def append(self, event: str, data: Any) -> int:
        """Queue a dispatch; returns its sequence number."""
        seq = len(self.events) + 1
        self.events.append({"op": DISPATCH, "t": event, "s": seq, "d": data})
        self._wakeup.set()
        return seq

    def has_intent(self, bit: int) -> bool:
        """Whether IDENTIFY asked for ``bit`` (a missing ``intents`` field means none were given)."""
        return self.intents is not None and bool(self.intents & bit)

    def covers(self, guild_id: int | None) -> bool:
        """Whether this session's shard receives events of ``guild_id`` (``None``: DMs, shard 0)."""
        shard_id, count = (self.shard or [0, 1])[:2]
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % max(1, count) == shard_id


@dataclass(eq=False)
class GatewayConnection:
    """One websocket connection to ``/gateway``."""

    ws: web.WebSocketResponse
    request: web.Request
    query: dict[str, str]
    session: GatewaySession | None = None
    sent_seq: int = 0
    writer: asyncio.Task[None] | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, payload: dict[str, Any]) -> None:
        """Send one JSON text frame (ignored if the socket is already closed)."""
        async with self._send_lock:
            if self.ws.closed:
                return
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await self.ws.send_str(json.dumps(payload))


#: A dispatch payload, or a function of the receiving session giving it (``None``: not for that session).
Payload = Any | Callable[[GatewaySession], Any]

# Guild-scoped events whose payload is the guild itself (its id is ``id``, not ``guild_id``).
_GUILD_OBJECT_EVENTS = {"GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"}


def event_guild_id(event: str, data: Any) -> int | None:
    """The guild an event belongs to (how Discord picks the shard), ``None`` for DM and global events."""
    if not isinstance(data, dict):
        return None
    raw = data.get("id") if event in _GUILD_OBJECT_EVENTS else data.get("guild_id")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


class GatewayHub:
    """Accepts gateway connections and routes dispatches to the sessions whose shard covers them."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        #: The most recently identified session (the only one, unless several processes connected).
        self.session: GatewaySession | None = None
        #: Every session identified so far, oldest first (invalid ones included).
        self.sessions: list[GatewaySession] = []
        self.connections: list[GatewayConnection] = []
        self.heartbeat_interval_ms = 41250
        self.connection_count = 0
        self.identify_count = 0
        self.resume_count = 0
        self.heartbeat_count = 0
        #: ``GET /gateway/bot``: the shard count Discord recommends and ``session_start_limit``.
        self.recommended_shards = 1
        self.max_concurrency = 1
        self.session_start_total = 1000
        #: Seconds between two IDENTIFYs of one bucket (``shard_id % max_concurrency``); ``None`` (the
        #: default) lets them come as fast as they like. Set (Discord: 5), an IDENTIFY too soon after the
        #: previous one of its bucket is refused with INVALID_SESSION (``d: false``), as Discord does.
        self.identify_window: float | None = None
        #: Every IDENTIFY received with a valid token: (monotonic time, shard or None, accepted).
        self.identify_log: list[tuple[float, list[int] | None, bool]] = []
        self.identify_refusals = 0
        #: Cleared by a test to hold IDENTIFYs (no READY) until it is set again.
        self.identify_gate = asyncio.Event()
        self.identify_gate.set()
        self._bucket_last: dict[int, float] = {}

    # -- dispatching -----------------------------------------------------------------------

    def dispatch(
        self,
        event: str,
        data: Payload,
        *,
        guild_id: int | None = None,
        sessions: Iterable[GatewaySession] | None = None,
    ) -> int | None:
        """Append a dispatch to every valid session that receives it (delivered now or replayed on RESUME).

        The shard is chosen from the event's guild (``guild_id``, else taken from ``data``); ``sessions``
        names the receivers instead. ``data`` may be a function of the session (per-session payloads,
        e.g. depending on intents), returning ``None`` to skip that session. Returns the sequence number
        in the most recent receiving session, or ``None`` when no session received it.
        """
        if sessions is None:
            if guild_id is None and not callable(data):
                guild_id = event_guild_id(event, data)
            targets = [s for s in self.sessions if s.valid and s.covers(guild_id)]
        else:
            targets = [s for s in sessions if s.valid]
        seq: int | None = None
        for session in targets:
            payload = data(session) if callable(data) else data
            if payload is None:
                continue
            seq = session.append(event, payload)
        if seq is not None:
            self.fake._state_changed()
        return seq

    def live_sessions(self) -> list[GatewaySession]:
        """Valid sessions with an open connection, oldest first."""
        return [
            s for s in self.sessions if s.valid and s.connection is not None and not s.connection.ws.closed
        ]

    @property
    def current_connection(self) -> GatewayConnection | None:
        """The open connection bound to the current session, if any."""
        if self.session is not None and self.session.connection is not None:
            conn = self.session.connection
            if not conn.ws.closed:
                return conn
        return None

    # -- websocket handler -----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler for ``GET /gateway`` (websocket upgrade)."""
        ws = web.WebSocketResponse(max_msg_size=0, autoclose=True, autoping=True)
        await ws.prepare(request)
        conn = GatewayConnection(ws=ws, request=request, query=dict(request.query))
        self.connections.append(conn)
        self.connection_count += 1
        self.fake._state_changed()
        try:
            if conn.query.get("encoding", "json") != "json":
                await ws.close(code=4002, message=b"Only encoding=json is supported by the fake")
                return ws
            await conn.send(
                {"op": HELLO, "s": None, "t": None, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}
            )
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    try:
                        payload = json.loads(msg.data)
                    except ValueError:
                        await ws.close(code=4002, message=b"Error while decoding payload.")
                        break
                    conn.received.append(payload)
                    await self._handle_op(conn, payload)
                elif msg.type is WSMsgType.BINARY:
                    await ws.close(code=4002, message=b"Binary (ETF) payloads are not supported by the fake")
                    break
        finally:
            if conn.writer is not None:
                conn.writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.writer
            if conn.session is not None and conn.session.connection is conn:
                conn.session.connection = None
            conn.done.set()
            self.fake._state_changed()
        return ws

    async def _handle_op(self, conn: GatewayConnection, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        data = payload.get("d")
        if op == HEARTBEAT:
            self.heartbeat_count += 1
            await conn.send({"op": HEARTBEAT_ACK, "s": None, "t": None, "d": None})
        elif op == IDENTIFY:
            await self._identify(conn, data or {})
        elif op == RESUME:
            await self._resume(conn, data or {})
        elif conn.session is None:
            await conn.ws.close(code=4003, message=b"Not authenticated.")
        elif op == REQUEST_GUILD_MEMBERS:
            self._request_members(conn.session, data or {})
        elif op in (PRESENCE_UPDATE, VOICE_STATE_UPDATE):
            pass
        else:
            await conn.ws.close(code=4001, message=b"Unknown opcode.")

    async def _identify(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
            return
        if data.get("token") != self.fake.bot_token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        await self.identify_gate.wait()
        shard = data.get("shard")
        now = asyncio.get_running_loop().time()
        if self.identify_window is not None:
            bucket = (shard[0] if isinstance(shard, list) and shard else 0) % max(1, self.max_concurrency)
            last = self._bucket_last.get(bucket)
            if last is not None and now - last < self.identify_window:
                self.identify_refusals += 1
                self.identify_log.append((now, shard, False))
                _log.info(
                    "IDENTIFY of shard %s refused: bucket %d identified %.2f s ago", shard, bucket, now - last
                )
                await asyncio.sleep(0.05)
                await conn.send({"op": INVALID_SESSION, "s": None, "t": None, "d": False})
                return
            self._bucket_last[bucket] = now
        self.identify_log.append((now, shard, True))
        self.identify_count += 1
        # Earlier sessions stay valid: Discord lets one token run several sessions (shards, or the same
        # shard twice); a session ends when it is invalidated, not when another one starts.
        session = GatewaySession(
            id=secrets.token_hex(16),
            intents=data.get("intents"),
            shard=data.get("shard"),
        )
        self.session = session
        self.sessions.append(session)
        session.append("READY", self.fake._ready_payload(session))
        for guild in self.fake.guilds.values():
            if session.covers(guild.id):
                session.append("GUILD_CREATE", self.fake._guild_create_payload(guild, session))
        session.ready_seq = session.seq
        self._attach(conn, session, from_seq=0)

    async def _resume(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        if data.get("token") != self.fake.bot_token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        session = next((s for s in self.sessions if s.id == data.get("session_id")), None)
        seq = data.get("seq") or 0
        if session is None or not session.valid or seq > session.seq:
            # Discord waits a little before answering an unresumable RESUME.
            await asyncio.sleep(0.05)
            await conn.send({"op": INVALID_SESSION, "s": None, "t": None, "d": False})
            return
        self.resume_count += 1
        old = session.connection
        if old is not None and old is not conn and not old.ws.closed:
            await old.ws.close(code=4000, message=b"Session resumed elsewhere")
        session.append("RESUMED", {})
        self._attach(conn, session, from_seq=seq)

    def _attach(self, conn: GatewayConnection, session: GatewaySession, *, from_seq: int) -> None:
        conn.session = session
        conn.sent_seq = from_seq
        session.connection = conn
        conn.writer = asyncio.create_task(self._writer(conn, session), name="fake-discord-gateway-writer")
        self.fake._state_changed()

    async def _writer(self, conn: GatewayConnection, session: GatewaySession) -> None:
        while not conn.ws.closed and session.connection is conn:
            session._wakeup.clear()
            while conn.sent_seq < session.seq and not conn.ws.closed:
                event = session.events[conn.sent_seq]
                await conn.send(event)
                conn.sent_seq = event["s"]
                self.fake._state_changed()
            await session._wakeup.wait()

    def _request_members(self, session: GatewaySession, data: dict[str, Any]) -> None:
        """Answer REQUEST_GUILD_MEMBERS on the session that asked."""
        guild_ids = data.get("guild_id")
        if not isinstance(guild_ids, list):
            guild_ids = [guild_ids]
        for raw_id in guild_ids:
            guild = self.fake.guilds.get(int(raw_id))
            if guild is None:
                continue
            members = list(guild.members.values())
            query = data.get("query")
            if query:
                members = [m for m in members if m.user.username.lower().startswith(query.lower())]
            if data.get("user_ids"):
                wanted = {int(u) for u in data["user_ids"]}
                members = [m for m in members if m.user.id in wanted]
            limit = data.get("limit") or 0
            if limit:
                members = members[:limit]
            chunk: dict[str, Any] = {
                "guild_id": str(guild.id),
                "members": [m.to_payload() for m in members],
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if data.get("nonce") is not None:
                chunk["nonce"] = data["nonce"]
            if data.get("presences"):
                chunk["presences"] = []
            self.dispatch("GUILD_MEMBERS_CHUNK", chunk, sessions=[session])

    # -- test controls ---------------------------------------------------------------------

    async def disconnect(self, code: int | None = 4000) -> None:
        """Close the current connection with ``code``; ``None`` drops the TCP connection abruptly."""
        conn = self.current_connection
        if conn is None:
            open_conns = [c for c in self.connections if not c.ws.closed]
            if not open_conns:
                raise AssertionError("no open gateway connection to disconnect")
            conn = open_conns[-1]
        if code in (4007, 4009) and conn.session is not None:
            # Invalid seq / session timed out: Discord will refuse to RESUME this session.
            conn.session.valid = False
        if code is None:
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        else:
            await conn.ws.close(code=code, message=b"Disconnected by FakeDiscord")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await conn.done.wait()

    async def send_op(self, op: int, data: Any = None) -> None:
        """Send a raw non-dispatch opcode (e.g. RECONNECT, INVALID_SESSION) on the current socket."""
        conn = self.current_connection
        if conn is None:
            raise AssertionError("no gateway connection is bound to a session")
        await conn.send({"op": op, "s": None, "t": None, "d": data})

    async def close_all(self) -> None:
        """Close every open websocket (used on shutdown)."""
        for conn in list(self.connections):
            if not conn.ws.closed:
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutdown")
