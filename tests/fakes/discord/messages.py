"""Message bodies: parsing, Discord's validation rules, attachments and edits."""

from __future__ import annotations

import io
import json
import mimetypes
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import errors
from .models import Message, MessageFlag, MultipartPart, iso_now, next_snowflake, walk_components

if TYPE_CHECKING:
    from .server import FakeDiscord

MAX_FILES = 10
MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
_FILE_FIELD = re.compile(r"^files\[(\d+)\]$")
_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CREATE_FLAGS = (
    MessageFlag.SUPPRESS_EMBEDS
    | MessageFlag.EPHEMERAL
    | MessageFlag.SUPPRESS_NOTIFICATIONS
    | MessageFlag.IS_COMPONENTS_V2
)


@dataclass
class Upload:
    """A file uploaded in a multipart request."""

    index: int
    filename: str
    data: bytes
    content_type: str | None


def split_body(json_body: Any, parts: list[MultipartPart]) -> tuple[dict[str, Any], list[Upload]]:
    """Return ``(payload, uploads)`` for a JSON or ``multipart/form-data`` (``payload_json``) body."""
    if not parts:
        if json_body is None:
            return {}, []
        if not isinstance(json_body, dict):
            raise errors.ApiError(400, 50109, "The request body contains invalid JSON.")
        return json_body, []
    payload: dict[str, Any] = {}
    uploads: list[Upload] = []
    for position, part in enumerate(parts):
        if part.name == "payload_json":
            try:
                payload = json.loads(part.text)
            except ValueError:
                raise errors.ApiError(400, 50109, "The request body contains invalid JSON.") from None
        elif part.filename is not None:
            match = _FILE_FIELD.match(part.name)
            index = int(match.group(1)) if match else position
            uploads.append(Upload(index, part.filename, part.data, part.content_type))
    return payload, uploads


def guess_content_type(filename: str) -> str | None:
    """What Discord reports as ``content_type`` (it sniffs the name, not the upload header)."""
    guessed, _ = mimetypes.guess_type(filename)
    return guessed


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` if Pillow can read the bytes as an image."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Exception:
        return None


def make_attachment(
    fake: FakeDiscord,
    filename: str,
    data: bytes,
    content_type: str | None = None,
    *,
    description: str | None = None,
    ephemeral: bool = False,
) -> dict[str, Any]:
    """Store bytes in the fake's CDN and return Discord's attachment object for them."""
    attachment_id = next_snowflake()
    content_type = content_type or guess_content_type(filename)
    url = f"{fake.base_url}/attachments/{attachment_id}/{quote(filename)}"
    attachment: dict[str, Any] = {
        "id": str(attachment_id),
        "filename": filename,
        "size": len(data),
        "url": url,
        "proxy_url": url,
        "content_type": content_type,
    }
    if description is not None:
        attachment["description"] = description
    if ephemeral:
        attachment["ephemeral"] = True
    size = image_size(data) if (content_type or "").startswith("image/") else None
    if size is not None:
        attachment["width"], attachment["height"] = size
    fake.cdn[attachment_id] = (filename, data, content_type)
    fake.attachments[attachment_id] = dict(attachment)
    return attachment


def _check_embeds(embeds: Any) -> list[dict[str, Any]]:
    if not isinstance(embeds, list):
        raise errors.invalid_form_body(
            "embeds", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType"
        )
    if len(embeds) > MAX_EMBEDS:
        raise errors.invalid_form_body("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    total = 0
    limits = {"title": 256, "description": 4096}
    for i, embed in enumerate(embeds):
        for key, limit in limits.items():
            value = embed.get(key) or ""
            if len(value) > limit:
                raise errors.invalid_form_body(
                    f"embeds.{i}.{key}", "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."
                )
            total += len(value)
        fields = embed.get("fields") or []
        if len(fields) > 25:
            raise errors.invalid_form_body(
                f"embeds.{i}.fields", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
            )
        for j, fld in enumerate(fields):
            if len(fld.get("name") or "") > 256 or len(fld.get("value") or "") > 1024:
                raise errors.invalid_form_body(
                    f"embeds.{i}.fields.{j}", "BASE_TYPE_MAX_LENGTH", "Field name/value too long."
                )
            total += len(fld.get("name") or "") + len(fld.get("value") or "")
        total += len((embed.get("footer") or {}).get("text") or "")
        total += len((embed.get("author") or {}).get("name") or "")
    if total > MAX_EMBED_TOTAL:
        raise errors.invalid_form_body(
            "embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
        )
    return [dict(e) for e in embeds]


def _check_components(components: Any, flags: int) -> list[dict[str, Any]]:
    if not isinstance(components, list):
        raise errors.invalid_form_body(
            "components", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType"
        )
    if not flags & MessageFlag.IS_COMPONENTS_V2:
        if len(components) > 5:
            raise errors.invalid_form_body(
                "components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length."
            )
        for i, row in enumerate(components):
            if row.get("type") != 1:
                raise errors.invalid_form_body(
                    f"components.{i}",
                    "UNION_TYPE_CHOICES",
                    "Top-level components must be action rows unless IS_COMPONENTS_V2 is set.",
                )
            if len(row.get("components", [])) > 5:
                raise errors.invalid_form_body(
                    f"components.{i}.components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length."
                )
    seen: set[str] = set()
    for component in walk_components(components):
        custom_id = component.get("custom_id")
        if custom_id is not None:
            if len(custom_id) > 100:
                raise errors.invalid_form_body(
                    "components", "BASE_TYPE_MAX_LENGTH", "custom_id must be 100 or fewer in length."
                )
            if custom_id in seen:
                raise errors.invalid_form_body(
                    "components", "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
                )
            seen.add(custom_id)
        if len(component.get("label") or "") > 80:
            raise errors.invalid_form_body("components", "BASE_TYPE_MAX_LENGTH", "label must be 80 or fewer.")
    return components


def _rewrite_embed_urls(embeds: list[dict[str, Any]], attachments: list[dict[str, Any]]) -> None:
    by_name = {a["filename"]: a for a in attachments}
    for embed in embeds:
        embed.setdefault("type", "rich")
        for key in ("image", "thumbnail", "video"):
            media = embed.get(key)
            if isinstance(media, dict):
                _rewrite_media(media, "url", by_name)
        for key in ("author", "footer"):
            obj = embed.get(key)
            if isinstance(obj, dict):
                _rewrite_media(obj, "icon_url", by_name)


def _rewrite_media(obj: dict[str, Any], key: str, by_name: dict[str, dict[str, Any]]) -> None:
    url = obj.get(key)
    if isinstance(url, str) and url.startswith("attachment://"):
        attachment = by_name.get(url.removeprefix("attachment://"))
        if attachment is not None:
            obj[key] = attachment["url"]
            obj[f"proxy_{key}"] = attachment["proxy_url"]
            if "width" in attachment and key == "url":
                obj["width"], obj["height"] = attachment["width"], attachment["height"]
            obj["content_type"] = attachment.get("content_type")


def apply_body(
    fake: FakeDiscord,
    msg: Message,
    payload: dict[str, Any],
    uploads: list[Upload],
    *,
    creating: bool,
    size_limit: int,
) -> None:
    """Validate a create/edit body like Discord does and apply it to ``msg`` (all or nothing)."""
    if len(uploads) > MAX_FILES:
        raise errors.invalid_form_body("files", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    if sum(len(u.data) for u in uploads) > size_limit:
        raise errors.entity_too_large()

    content = msg.content
    if "content" in payload:
        raw = payload["content"]
        content = "" if raw is None else str(raw)
        if len(content) > MAX_CONTENT:
            raise errors.invalid_form_body(
                "content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
            )

    flags = msg.flags
    if creating:
        flags = int(payload.get("flags") or 0) & _CREATE_FLAGS
    elif "flags" in payload and payload["flags"] is not None:
        requested = int(payload["flags"])
        toggle = MessageFlag.SUPPRESS_EMBEDS
        flags = (flags & ~toggle) | (requested & toggle)
        if requested & MessageFlag.IS_COMPONENTS_V2:
            flags |= MessageFlag.IS_COMPONENTS_V2

    embeds = msg.embeds
    if "embeds" in payload:
        embeds = _check_embeds(payload["embeds"] or [])
    components = msg.components
    if "components" in payload:
        components = _check_components(payload["components"] or [], flags)

    if flags & MessageFlag.IS_COMPONENTS_V2 and (content or embeds):
        raise errors.invalid_form_body(
            "content",
            "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
            "The 'content' and 'embeds' fields cannot be used when using MessageFlags.IS_COMPONENTS_V2",
        )

    descriptions: dict[int, dict[str, Any]] = {}
    keep_ids: set[int] | None = None
    if "attachments" in payload and payload["attachments"] is not None:
        keep_ids = set()
        for entry in payload["attachments"]:
            entry_id = int(entry["id"])
            if entry_id < 1 << 22:  # a file index, not a snowflake
                descriptions[entry_id] = entry
            else:
                keep_ids.add(entry_id)
    if creating:
        kept: list[tuple[dict[str, Any], tuple[str, bytes, str | None]]] = []
    else:
        pairs = list(zip(msg.attachments, msg.files, strict=True))
        kept = [p for p in pairs if keep_ids is None or int(p[0]["id"]) in keep_ids]

    if (
        not content
        and not embeds
        and not components
        and not uploads
        and not kept
        and not payload.get("sticker_ids")
        and not payload.get("poll")
        and not (msg.poll and not creating)
    ):
        raise errors.empty_message()

    new_pairs: list[tuple[dict[str, Any], tuple[str, bytes, str | None]]] = []
    for upload in uploads:
        meta = descriptions.get(upload.index, {})
        filename = meta.get("filename") or upload.filename
        content_type = guess_content_type(filename)
        attachment = make_attachment(
            fake,
            filename,
            upload.data,
            content_type,
            description=meta.get("description"),
            ephemeral=bool(flags & MessageFlag.EPHEMERAL),
        )
        new_pairs.append((attachment, (filename, upload.data, content_type)))

    if not creating:
        msg.edits.append(msg.to_payload())
        if not msg.loading:
            msg.edited_timestamp = iso_now()
        flags &= ~MessageFlag.LOADING
    allowed = _check_allowed_mentions(payload.get("allowed_mentions"))
    all_pairs = kept + new_pairs
    msg.content = content
    msg.flags = flags
    msg.components = components
    msg.attachments = [a for a, _ in all_pairs]
    msg.files = [f for _, f in all_pairs]
    msg.embeds = embeds
    _rewrite_embed_urls(msg.embeds, msg.attachments)
    if creating:
        msg.tts = bool(payload.get("tts", False))
        msg.nonce = payload.get("nonce")
        if payload.get("poll"):
            msg.poll = dict(payload["poll"])
    if creating or "content" in payload or "allowed_mentions" in payload:
        msg.allowed_mentions = allowed
        fill_mentions(fake, msg, allowed)


_MENTION_TYPES = ("roles", "users", "everyone")


def _check_allowed_mentions(raw: Any) -> dict[str, Any] | None:
    """Validate an ``allowed_mentions`` object like Discord (None when the body has none)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise errors.invalid_form_body(
            "allowed_mentions", "MODEL_TYPE_CONVERT", "Only dictionaries may be used."
        )
    parse = raw.get("parse") or []
    if not isinstance(parse, list) or any(p not in _MENTION_TYPES for p in parse):
        raise errors.invalid_form_body(
            "allowed_mentions.parse",
            "ENUM_TYPE_COERCE",
            "Value must be one of ('roles', 'users', 'everyone').",
        )
    for kind in ("users", "roles"):
        ids = raw.get(kind) or []
        if not isinstance(ids, list) or len(ids) > 100:
            raise errors.invalid_form_body(
                f"allowed_mentions.{kind}", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length."
            )
        if ids and kind in parse:
            raise errors.invalid_form_body(
                "allowed_mentions",
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                f'parse:["{kind}"] and {kind}: [ids] are mutually exclusive.',
            )
    return dict(raw)


def fill_mentions(fake: FakeDiscord, msg: Message, allowed: dict[str, Any] | None = None) -> None:
    """Populate ``mentions``/``mention_roles``/``mention_everyone`` from the content, keeping only what
    ``allowed_mentions`` lets ping (no ``allowed_mentions``: Discord parses every kind)."""
    parse = set(_MENTION_TYPES) if allowed is None else set(allowed.get("parse") or [])
    users = {int(u) for u in (allowed or {}).get("users") or []}
    roles = {int(r) for r in (allowed or {}).get("roles") or []}
    mentions: list[dict[str, Any]] = []
    for raw in dict.fromkeys(_USER_MENTION.findall(msg.content)):
        user = fake.users.get(int(raw))
        if user is None or ("users" not in parse and user.id not in users):
            continue
        payload = user.to_payload()
        guild = fake.guilds.get(msg.guild_id) if msg.guild_id else None
        if guild is not None and user.id in guild.members:
            payload["member"] = guild.members[user.id].to_payload(include_user=False)
        mentions.append(payload)
    msg.mentions = mentions
    msg.mention_roles = [
        r for r in dict.fromkeys(_ROLE_MENTION.findall(msg.content)) if "roles" in parse or int(r) in roles
    ]
    msg.mention_everyone = "everyone" in parse and ("@everyone" in msg.content or "@here" in msg.content)
