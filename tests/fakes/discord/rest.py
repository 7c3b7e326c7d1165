"""The fake's REST API v10 routes (aiohttp handlers) and its recording/auth/fault middleware."""

from __future__ import annotations

import email.message
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import errors
from .messages import split_body
from .models import Channel, Message, MultipartPart, Permission, RecordedRequest, next_snowflake
from .permissions import missing

if TYPE_CHECKING:
    from .server import FakeDiscord

API_PREFIX = "/api/v10"
_REQUEST_KEY = web.RequestKey("fake_discord_request", RecordedRequest)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Routes discord.py calls without a bot token (the interaction token is the credential).
_TOKENLESS = re.compile(r"^/(interactions/\d+/[^/]+/callback|webhooks/\d+/[^/]+(/.*)?)$")
# OAuth2: the token exchange authenticates with the client secret; user routes with a Bearer token.
_OAUTH_TOKEN_PATH = "/oauth2/token"
_BEARER_PATHS = ("/users/@me", "/users/@me/guilds")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response whose Content-Type is exactly ``application/json``.

    discord.py only parses a body as JSON when the header equals ``application/json`` (no
    ``; charset=...``), so ``web.json_response`` must not be used.
    """
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def no_content() -> web.Response:
    """204."""
    return web.Response(status=204)


def _parse_multipart(content_type: str, body: bytes) -> list[MultipartPart]:
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        raise errors.ApiError(400, 50109, "The request body contains invalid JSON.")
    delimiter = b"--" + boundary.encode()
    chunks = body.split(b"\r\n" + delimiter)
    if not chunks or not chunks[0].startswith(delimiter):
        raise errors.ApiError(400, 50109, "Malformed multipart body.")
    chunks[0] = chunks[0][len(delimiter) :]
    parts: list[MultipartPart] = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        raw_headers, _, data = chunk.partition(b"\r\n\r\n")
        part_headers = email.message.Message()
        for line in raw_headers.decode("utf-8", "replace").split("\r\n"):
            if ":" in line:
                key, value = line.split(":", 1)
                part_headers[key.strip()] = value.strip()
        name = part_headers.get_param("name", header="content-disposition")
        filename = part_headers.get_filename()
        parts.append(
            MultipartPart(
                name=str(name) if name is not None else "",
                data=data,
                filename=filename,
                content_type=part_headers.get("content-type"),
            )
        )
    return parts


def _peer(request: web.Request) -> tuple[str, int] | None:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return (str(peer[0]), int(peer[1])) if peer else None


def make_middleware(fake: FakeDiscord) -> Any:
    """Records every request, applies ``fail_next`` faults, checks the bot token, renders ApiErrors."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        path = request.path[len(API_PREFIX) :]
        body = await request.read()
        content_type = request.headers.get("Content-Type", "")
        parsed_json: Any = None
        parts: list[MultipartPart] = []
        record = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            json=None,
            parts=parts,
            timestamp=time.time(),
            headers=dict(request.headers),
            peer=_peer(request),
        )
        fake.requests.append(record)
        try:
            if path == _OAUTH_TOKEN_PATH:
                pass  # form-encoded, read by the handler
            elif content_type.startswith("multipart/form-data"):
                parts.extend(_parse_multipart(content_type, body))
            elif body:
                try:
                    parsed_json = json.loads(body)
                except ValueError:
                    raise errors.ApiError(400, 50109, "The request body contains invalid JSON.") from None
            record.json = parsed_json
            request[_REQUEST_KEY] = record
            fault = fake._take_fault(request.method, path)
            if fault is not None:
                response: web.StreamResponse = json_response(fault.body, fault.status, fault.headers)
                record.response = fault.body
            else:
                bearer = request.headers.get("Authorization", "").startswith("Bearer ")
                if (
                    not _TOKENLESS.match(path)
                    and path != _OAUTH_TOKEN_PATH
                    and not (bearer and path in _BEARER_PATHS)
                    and request.headers.get("Authorization") != f"Bot {fake.bot_token}"
                ):
                    raise errors.unauthorized()
                response = await handler(request)
        except errors.ApiError as exc:
            record.response = exc.body()
            response = json_response(exc.body(), exc.status, exc.headers)
        record.status = response.status
        fake._state_changed()
        return response

    return middleware


def _record(request: web.Request) -> RecordedRequest:
    return request[_REQUEST_KEY]


def _body(request: web.Request) -> tuple[dict[str, Any], list[Any]]:
    record = _record(request)
    return split_body(record.json, record.parts)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _snowflake(value: str, error: Callable[[], errors.ApiError]) -> int:
    try:
        return int(value)
    except ValueError:
        raise error() from None


def add_routes(app: web.Application, fake: FakeDiscord) -> None:
    """Register every implemented route on ``app``."""
    r = Routes(fake)
    p = API_PREFIX
    add = app.router.add_route
    add("GET", p + "/users/@me", r.get_me)
    add("GET", p + "/users/@me/guilds", r.get_my_guilds)
    add("POST", p + "/oauth2/token", r.oauth_token)
    app.router.add_get("/oauth2/authorize", r.oauth_authorize)
    add("GET", p + "/users/{user_id}", r.get_user)
    add("POST", p + "/users/@me/channels", r.create_dm)
    add("GET", p + "/applications/@me", r.get_application)
    add("GET", p + "/oauth2/applications/@me", r.get_application)
    add("GET", p + "/gateway", r.get_gateway)
    add("GET", p + "/gateway/bot", r.get_gateway_bot)
    add("GET", p + "/applications/{app_id}/entitlements", r.empty_list)
    add("GET", p + "/applications/{app_id}/emojis", r.empty_items)
    for base in ("/applications/{app_id}/commands", "/applications/{app_id}/guilds/{guild_id}/commands"):
        add("GET", p + base, r.list_commands)
        add("PUT", p + base, r.put_commands)
        add("POST", p + base, r.post_command)
        add("GET", p + base + "/{command_id}", r.get_command)
        add("PATCH", p + base + "/{command_id}", r.patch_command)
        add("DELETE", p + base + "/{command_id}", r.delete_command)
    add("POST", p + "/interactions/{interaction_id}/{token}/callback", r.interaction_callback)
    add("POST", p + "/webhooks/{app_id}/{token}", r.execute_webhook)
    add("GET", p + "/webhooks/{app_id}/{token}/messages/{message_ref}", r.get_webhook_message)
    add("PATCH", p + "/webhooks/{app_id}/{token}/messages/{message_ref}", r.edit_webhook_message)
    add("DELETE", p + "/webhooks/{app_id}/{token}/messages/{message_ref}", r.delete_webhook_message)
    add("GET", p + "/channels/{channel_id}", r.get_channel)
    add("GET", p + "/channels/{channel_id}/messages", r.get_history)
    add("POST", p + "/channels/{channel_id}/messages", r.send_message)
    add("POST", p + "/channels/{channel_id}/messages/bulk-delete", r.bulk_delete)
    add("GET", p + "/channels/{channel_id}/messages/{message_id}", r.get_message)
    add("PATCH", p + "/channels/{channel_id}/messages/{message_id}", r.edit_message)
    add("DELETE", p + "/channels/{channel_id}/messages/{message_id}", r.delete_message)
    add("POST", p + "/channels/{channel_id}/typing", r.typing)
    reactions = p + "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"
    add("PUT", reactions, r.add_reaction)
    add("DELETE", reactions, r.remove_reaction)
    add("GET", p + "/guilds/{guild_id}", r.get_guild)
    add("GET", p + "/guilds/{guild_id}/channels", r.get_guild_channels)
    add("GET", p + "/guilds/{guild_id}/roles", r.get_guild_roles)
    add("GET", p + "/guilds/{guild_id}/members/{user_id}", r.get_member)
    add("GET", "/attachments/{attachment_id}/{filename}", r.get_attachment)
    add("*", p + "/{tail:.*}", r.unhandled)


class Routes:
    """Route handlers; all state lives on the :class:`FakeDiscord`."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake

    # -- misc ------------------------------------------------------------------------------

    async def unhandled(self, request: web.Request) -> web.Response:
        record = _record(request)
        self.fake.unhandled.append(record)
        return json_response(
            {
                "message": f"404: Not Found (FakeDiscord does not implement {request.method} {record.path})",
                "code": 0,
            },
            404,
        )

    async def empty_list(self, request: web.Request) -> web.Response:
        return json_response([])

    async def empty_items(self, request: web.Request) -> web.Response:
        return json_response({"items": []})

    async def get_me(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            user = self.fake.oauth.bearer_user(auth)
            return json_response({**user.to_payload(), "locale": user.locale})
        return json_response(self.fake._me_payload())

    # -- OAuth2 (the web gallery's login) ---------------------------------------------------

    async def get_my_guilds(self, request: web.Request) -> web.Response:
        user = self.fake.oauth.bearer_user(request.headers.get("Authorization", ""))
        return json_response(self.fake.oauth.guilds_payload(user))

    async def oauth_authorize(self, request: web.Request) -> web.StreamResponse:
        return self.fake.oauth.authorize(request)

    async def oauth_token(self, request: web.Request) -> web.Response:
        return self.fake.oauth.token(request, await request.post(), request.headers.get("Authorization"))

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.fake.users.get(_snowflake(request.match_info["user_id"], errors.unknown_user))
        if user is None:
            raise errors.unknown_user()
        return json_response(user.to_payload())

    async def get_application(self, request: web.Request) -> web.Response:
        return json_response(self.fake._application_payload())

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.fake.gateway_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        hub = self.fake.gateway
        return json_response(
            {
                "url": self.fake.gateway_url,
                "shards": hub.recommended_shards,
                "session_start_limit": {
                    "total": hub.session_start_total,
                    "remaining": max(0, hub.session_start_total - hub.identify_count),
                    "reset_after": 0,
                    "max_concurrency": hub.max_concurrency,
                },
            }
        )

    async def get_attachment(self, request: web.Request) -> web.Response:
        try:
            _filename, data, content_type = self.fake.cdn[int(request.match_info["attachment_id"])]
        except (KeyError, ValueError):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, content_type=content_type or "application/octet-stream")

    # -- application commands ---------------------------------------------------------------

    def _command_scope(self, request: web.Request) -> str | None:
        if _snowflake(request.match_info["app_id"], errors.unknown_command) != self.fake.application_id:
            raise errors.ApiError(403, 50001, "Missing Access")
        guild_id = request.match_info.get("guild_id")
        if guild_id is None:
            return None
        if _snowflake(guild_id, errors.unknown_guild) not in self.fake.guilds:
            raise errors.missing_access()
        return guild_id

    def _scoped(self, scope: str | None) -> list[dict[str, Any]]:
        return [c for c in self.fake.commands.values() if c.get("guild_id") == scope]

    def _normalize_command(self, raw: Any, scope: str | None, index: int | None) -> dict[str, Any]:
        where = "" if index is None else f"{index}."
        if not isinstance(raw, dict):
            raise errors.invalid_form_body(
                f"{where}name", "DICT_TYPE_CONVERT", "Only dictionaries may be used"
            )
        cmd_type = int(raw.get("type") or 1)
        name = raw.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            raise errors.invalid_form_body(
                f"{where}name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length."
            )
        description = raw.get("description") or ""
        if cmd_type == 1:
            if not re.fullmatch(r"[-_\w]{1,32}", name) or name != name.lower():
                raise errors.invalid_form_body(
                    f"{where}name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                )
            if not 1 <= len(description) <= 100:
                raise errors.invalid_form_body(
                    f"{where}description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
            self._check_options(raw.get("options") or [], f"{where}options")
        elif description:
            raise errors.invalid_form_body(
                f"{where}description",
                "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
                "Context menus have no description",
            )
        existing = next(
            (c for c in self._scoped(scope) if c["name"] == name and c.get("type", 1) == cmd_type),
            None,
        )
        permissions = raw.get("default_member_permissions")
        command: dict[str, Any] = {
            "id": existing["id"] if existing else str(next_snowflake()),
            "application_id": str(self.fake.application_id),
            "version": str(next_snowflake()),
            "type": cmd_type,
            "name": name,
            "name_localizations": raw.get("name_localizations"),
            "description": description,
            "description_localizations": raw.get("description_localizations"),
            "default_member_permissions": None if permissions is None else str(permissions),
            "nsfw": bool(raw.get("nsfw", False)),
            "contexts": raw.get("contexts"),
            "integration_types": raw.get("integration_types") or [0],
        }
        if raw.get("options"):
            command["options"] = raw["options"]
        if scope is not None:
            command["guild_id"] = scope
        elif "dm_permission" in raw:
            command["dm_permission"] = raw["dm_permission"]
        return command

    def _check_options(self, options: list[dict[str, Any]], where: str) -> None:
        if len(options) > 25:
            raise errors.invalid_form_body(where, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        seen_optional = False
        names: set[str] = set()
        for i, option in enumerate(options):
            name = option.get("name") or ""
            if not re.fullmatch(r"[-_\w]{1,32}", name) or name != name.lower():
                raise errors.invalid_form_body(
                    f"{where}.{i}.name", "APPLICATION_COMMAND_INVALID_NAME", "Invalid name"
                )
            if name in names:
                raise errors.invalid_form_body(
                    f"{where}.{i}.name",
                    "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                    "Duplicate option name",
                )
            names.add(name)
            if not 1 <= len(option.get("description") or "") <= 100:
                raise errors.invalid_form_body(
                    f"{where}.{i}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
            if option.get("type") in (1, 2):
                self._check_options(option.get("options") or [], f"{where}.{i}.options")
                continue
            if option.get("required"):
                if seen_optional:
                    raise errors.invalid_form_body(
                        f"{where}.{i}.required",
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True
            if len(option.get("choices") or []) > 25:
                raise errors.invalid_form_body(
                    f"{where}.{i}.choices", "BASE_TYPE_MAX_LENGTH", "Too many choices"
                )
            if option.get("choices") and option.get("autocomplete"):
                raise errors.invalid_form_body(
                    f"{where}.{i}.autocomplete",
                    "APPLICATION_COMMAND_OPTION_AUTOCOMPLETE_CHOICES",
                    "Autocomplete cannot be set with choices",
                )

    async def list_commands(self, request: web.Request) -> web.Response:
        return json_response(self._scoped(self._command_scope(request)))

    async def put_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        raw = _record(request).json
        if not isinstance(raw, list):
            raise errors.invalid_form_body(
                "_root", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType"
            )
        if len(raw) > 100:
            raise errors.invalid_form_body("_root", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
        new = [self._normalize_command(c, scope, i) for i, c in enumerate(raw)]
        keys = [(c["name"], c["type"]) for c in new]
        if len(set(keys)) != len(keys):
            raise errors.invalid_form_body(
                "_root", "APPLICATION_COMMANDS_DUPLICATE_NAME", "Application command names must be unique"
            )
        for command in self._scoped(scope):
            del self.fake.commands[int(command["id"])]
        for command in new:
            self.fake.commands[int(command["id"])] = command
        self.fake.command_puts += 1
        return json_response(new)

    async def post_command(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        command = self._normalize_command(_record(request).json, scope, None)
        created = int(command["id"]) not in self.fake.commands
        self.fake.commands[int(command["id"])] = command
        return json_response(command, 201 if created else 200)

    def _get_scoped_command(self, request: web.Request) -> dict[str, Any]:
        scope = self._command_scope(request)
        command = self.fake.commands.get(_snowflake(request.match_info["command_id"], errors.unknown_command))
        if command is None or command.get("guild_id") != scope:
            raise errors.unknown_command()
        return command

    async def get_command(self, request: web.Request) -> web.Response:
        return json_response(self._get_scoped_command(request))

    async def patch_command(self, request: web.Request) -> web.Response:
        command = self._get_scoped_command(request)
        body = _record(request).json or {}
        merged = {**command, **body}
        updated = self._normalize_command(merged, command.get("guild_id"), None)
        updated["id"] = command["id"]
        self.fake.commands[int(command["id"])] = updated
        return json_response(updated)

    async def delete_command(self, request: web.Request) -> web.Response:
        command = self._get_scoped_command(request)
        del self.fake.commands[int(command["id"])]
        return no_content()

    # -- interactions & webhooks ---------------------------------------------------------------

    async def interaction_callback(self, request: web.Request) -> web.Response:
        interaction_id = _snowflake(request.match_info["interaction_id"], errors.unknown_interaction)
        ix = self.fake.interactions.get(interaction_id)
        if ix is None or ix.token != request.match_info["token"]:
            raise errors.unknown_interaction()
        payload, uploads = _body(request)
        with_response = _truthy(request.query.get("with_response"))
        result = self.fake.handle_callback(ix, payload, uploads, with_response)
        if result is None:
            return no_content()
        return json_response(result)

    def _webhook_ix(self, request: web.Request) -> Any:
        app_id = _snowflake(request.match_info["app_id"], errors.unknown_webhook)
        return self.fake._webhook_interaction(app_id, request.match_info["token"])

    async def execute_webhook(self, request: web.Request) -> web.Response:
        ix = self._webhook_ix(request)
        payload, uploads = _body(request)
        result = self.fake.handle_followup(ix, payload, uploads, wait=_truthy(request.query.get("wait")))
        return no_content() if result is None else json_response(result)

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        ix = self._webhook_ix(request)
        return json_response(self.fake._webhook_message(ix, request.match_info["message_ref"]).to_payload())

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        ix = self._webhook_ix(request)
        payload, uploads = _body(request)
        return json_response(
            self.fake.handle_webhook_edit(ix, request.match_info["message_ref"], payload, uploads)
        )

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        ix = self._webhook_ix(request)
        self.fake.handle_webhook_delete(ix, request.match_info["message_ref"])
        return no_content()

    # -- channels & messages -------------------------------------------------------------------

    def _channel(self, request: web.Request, *required: int) -> Channel:
        channel = self.fake.channels.get(_snowflake(request.match_info["channel_id"], errors.unknown_channel))
        if channel is None:
            raise errors.unknown_channel()
        if channel.is_dm:
            return channel
        perms = self.fake.bot_permissions_in(channel)
        if not perms & Permission.VIEW_CHANNEL:
            raise errors.missing_access()
        needed = 0
        for bit in required:
            needed |= bit
        if missing(perms, needed):
            raise errors.missing_permissions()
        return channel

    def _message(self, request: web.Request, channel: Channel) -> Message:
        msg = self.fake.messages.get(_snowflake(request.match_info["message_id"], errors.unknown_message))
        if msg is None or msg.deleted or msg.channel_id != channel.id or msg.ephemeral:
            raise errors.unknown_message()
        return msg

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request).to_payload())

    async def get_history(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if not channel.is_dm and not self.fake.bot_permissions_in(channel) & Permission.READ_MESSAGE_HISTORY:
            return json_response([])
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise errors.invalid_form_body("limit", "NUMBER_TYPE_COERCE", "Value is not int.") from None
        if not 1 <= limit <= 100:
            raise errors.invalid_form_body("limit", "NUMBER_TYPE_MAX", "int value should be <= 100 and >= 1.")
        messages = self.fake.channel_messages(channel.id, include_ephemeral=False)
        if "before" in request.query:
            before = int(request.query["before"])
            messages = [m for m in messages if m.id < before]
            selected = messages[-limit:]
        elif "after" in request.query:
            after = int(request.query["after"])
            selected = [m for m in messages if m.id > after][:limit]
        elif "around" in request.query:
            around = int(request.query["around"])
            older = [m for m in messages if m.id <= around][-((limit + 1) // 2) :]
            newer = [m for m in messages if m.id > around][: limit - len(older)]
            selected = older + newer
        else:
            selected = messages[-limit:]
        return json_response([m.to_payload() for m in sorted(selected, key=lambda m: m.id, reverse=True)])

    async def send_message(self, request: web.Request) -> web.Response:
        payload, uploads = _body(request)
        required = [Permission.VIEW_CHANNEL, Permission.SEND_MESSAGES]
        if uploads:
            required.append(Permission.ATTACH_FILES)
        if payload.get("embeds"):
            required.append(Permission.EMBED_LINKS)
        if payload.get("message_reference"):
            required.append(Permission.READ_MESSAGE_HISTORY)
        channel = self._channel(request, *required)
        msg = self.fake.create_message(channel, payload, uploads)
        return json_response(msg.to_payload())

    async def get_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if not channel.is_dm and not self.fake.bot_permissions_in(channel) & Permission.READ_MESSAGE_HISTORY:
            raise errors.missing_access()
        return json_response(self._message(request, channel).to_payload())

    async def edit_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._message(request, channel)
        payload, uploads = _body(request)
        if msg.author_id != self.fake.bot_user.id:
            if set(payload) - {"flags"}:
                raise errors.ApiError(403, 50005, "Cannot edit a message authored by another user")
            self._channel(request, Permission.MANAGE_MESSAGES)
        self.fake.edit_message(msg, payload, uploads)
        return json_response(msg.to_payload())

    async def delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._message(request, channel)
        if msg.author_id != self.fake.bot_user.id and not channel.is_dm:
            self._channel(request, Permission.MANAGE_MESSAGES)
        elif msg.author_id != self.fake.bot_user.id:
            raise errors.ApiError(403, 50003, "Cannot execute action on a DM channel")
        self.fake.delete_message(msg)
        return no_content()

    async def bulk_delete(self, request: web.Request) -> web.Response:
        channel = self._channel(request, Permission.MANAGE_MESSAGES)
        ids = (_record(request).json or {}).get("messages") or []
        if not 2 <= len(ids) <= 100:
            raise errors.invalid_form_body(
                "messages", "BASE_TYPE_BAD_LENGTH", "Must be between 2 and 100 in length."
            )
        targets = [self.fake.messages.get(int(i)) for i in ids]
        found = [m for m in targets if m is not None and not m.deleted and m.channel_id == channel.id]
        for msg in found:
            msg.deleted = True
            self.fake._message_changed(msg)
        data: dict[str, Any] = {"ids": [str(m.id) for m in found], "channel_id": str(channel.id)}
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
        self.fake.gateway.dispatch("MESSAGE_DELETE_BULK", data)
        return no_content()

    async def typing(self, request: web.Request) -> web.Response:
        self._channel(request, Permission.SEND_MESSAGES)
        return no_content()

    async def add_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request, Permission.READ_MESSAGE_HISTORY, Permission.ADD_REACTIONS)
        msg = self._message(request, channel)
        emoji = request.match_info["emoji"]
        for reaction in msg.reactions:
            if reaction["emoji"]["name"] == emoji:
                if not reaction["me"]:
                    reaction["me"] = True
                    reaction["count"] += 1
                break
        else:
            msg.reactions.append({"emoji": {"id": None, "name": emoji}, "count": 1, "me": True})
        self.fake._message_changed(msg)
        return no_content()

    async def remove_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request, Permission.READ_MESSAGE_HISTORY)
        msg = self._message(request, channel)
        emoji = request.match_info["emoji"]
        for reaction in list(msg.reactions):
            if reaction["emoji"]["name"] == emoji and reaction["me"]:
                reaction["me"] = False
                reaction["count"] -= 1
                if reaction["count"] == 0:
                    msg.reactions.remove(reaction)
        self.fake._message_changed(msg)
        return no_content()

    async def create_dm(self, request: web.Request) -> web.Response:
        body = _record(request).json or {}
        user = self.fake.users.get(_snowflake(str(body.get("recipient_id", "0")), errors.unknown_user))
        if user is None:
            raise errors.invalid_form_body("recipient_id", "USER_UNKNOWN", "Unknown User")
        return json_response(self.fake.add_dm_channel(user).to_payload())

    # -- guilds ----------------------------------------------------------------------------------

    def _guild(self, request: web.Request) -> Any:
        guild = self.fake.guilds.get(_snowflake(request.match_info["guild_id"], errors.unknown_guild))
        if guild is None:
            raise errors.unknown_guild()
        return guild

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        payload = guild.to_payload()
        if _truthy(request.query.get("with_counts")):
            payload["approximate_member_count"] = len(guild.members)
            payload["approximate_presence_count"] = 0
        return json_response(payload)

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        return json_response([c.to_payload() for c in self._guild(request).channels])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        return json_response([r.to_payload() for r in self._guild(request).roles])

    async def get_member(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        member = guild.members.get(_snowflake(request.match_info["user_id"], errors.unknown_member))
        if member is None:
            raise errors.unknown_member()
        return json_response(member.to_payload())
