"""Styles (issue 12): a named prompt template (``{prompt}`` marks where the user's words go), optional
reference images and a default model and aspect ratio; personal, or a server's (managed by its
moderators, usable by every member).

Domain rules only: names, templates, expansion, which style a command means. Refusals are
:class:`StyleProblem` with a ``kind`` (and details); the Discord layer words them
(:mod:`bot.presentation.styles`). Storage is :class:`bot.storage.styles.SqlStyleRepository`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.catalog import MODELS, get_model
from bot.storage.styles import SqlStyleRepository, StyleImage, StyleRecord, StyleScope

PLACEHOLDER = "{prompt}"
NAME_MAX = 32
TEMPLATE_MAX = 1000
#: Styles one user (personal) or one server may keep: what an autocomplete list shows.
STYLES_PER_OWNER = 25
#: Reference images one style carries, and how large each may be.
IMAGES_PER_STYLE = 4
STYLE_IMAGE_MAX_BYTES = 8 * 1024 * 1024
_NAME = re.compile(r"[a-z0-9][a-z0-9 _-]*")
#: How a style is named in a command option: ``me:NAME`` / ``server:NAME`` (autocomplete) or the bare
#: name (the user's own first, then the server's).
PERSONAL_PREFIX, SERVER_PREFIX = "me:", "server:"


class StyleProblem(Exception):
    """A style request that cannot be done. ``kind``: ``bad_name``, ``no_placeholder``,
    ``template_too_long``, ``stray_braces``, ``too_many``, ``too_many_images``, ``unknown_model``,
    ``bad_ratio``, ``not_found``, ``expanded_too_long``, ``no_server``."""

    def __init__(self, kind: str, **details: Any) -> None:
        super().__init__(kind)
        self.kind = kind
        self.details = details


@dataclass(frozen=True)
class ResolvedStyle:
    """A style ready to apply: its record and its reference images."""

    record: StyleRecord
    images: tuple[StyleImage, ...]

    def expand(self, prompt: str, *, max_length: int) -> str:
        return expand(self.record.template, prompt, max_length=max_length)


def clean_name(raw: str) -> str:
    """A style's name: trimmed, lower case, letters/digits/space/``-``/``_``, up to :data:`NAME_MAX`."""
    name = " ".join(raw.strip().lower().split())
    if not name or len(name) > NAME_MAX or not _NAME.fullmatch(name):
        raise StyleProblem("bad_name", max=NAME_MAX)
    return name


def check_template(template: str) -> str:
    """The template, trimmed: it must contain ``{prompt}``, no other braces, and fit :data:`TEMPLATE_MAX`."""
    template = template.strip()
    if len(template) > TEMPLATE_MAX:
        raise StyleProblem("template_too_long", max=TEMPLATE_MAX, length=len(template))
    if PLACEHOLDER not in template:
        raise StyleProblem("no_placeholder")
    rest = template.replace(PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise StyleProblem("stray_braces")
    return template


def expand(template: str, prompt: str, *, max_length: int) -> str:
    """The template with the user's words in place of every ``{prompt}`` (the whole result is what the
    prompt filter and the provider see)."""
    text = template.replace(PLACEHOLDER, prompt.strip())
    if len(text) > max_length:
        raise StyleProblem("expanded_too_long", max=max_length, length=len(text))
    return text


def check_defaults(model: str | None, aspect_ratio: str | None) -> tuple[str | None, str | None]:
    """A style's default model (a catalog key) and aspect ratio (one that model, or any model, draws)."""
    spec = None
    if model is not None:
        spec = get_model(model)
        if spec is None:
            raise StyleProblem("unknown_model", model=model)
        model = spec.key
    if aspect_ratio is not None:
        aspect_ratio = aspect_ratio.strip()
        allowed = spec.aspect_ratios if spec else tuple(r for m in MODELS for r in m.aspect_ratios)
        if aspect_ratio not in allowed:
            raise StyleProblem("bad_ratio", ratio=aspect_ratio, model=spec.key if spec else None)
    return model, aspect_ratio


def parse_reference(value: str) -> tuple[StyleScope | None, str]:
    """``me:NAME`` / ``server:NAME`` / ``NAME`` -> (scope or None for "either", clean name)."""
    raw = value.strip()
    lowered = raw.lower()
    if lowered.startswith(PERSONAL_PREFIX):
        return "personal", clean_name(raw[len(PERSONAL_PREFIX) :])
    if lowered.startswith(SERVER_PREFIX):
        return "server", clean_name(raw[len(SERVER_PREFIX) :])
    return None, clean_name(raw)


def option_value(style: StyleRecord) -> str:
    return (PERSONAL_PREFIX if style.scope == "personal" else SERVER_PREFIX) + style.name


class StyleService:
    """Saving, listing, deleting and resolving styles."""

    def __init__(self, repo: SqlStyleRepository, *, clock: Callable[[], float] = time.time) -> None:
        self.repo = repo
        self.clock = clock

    @staticmethod
    def owner(scope: StyleScope, user_id: int, guild_id: int | None) -> int:
        if scope == "server":
            if guild_id is None:
                raise StyleProblem("no_server")
            return guild_id
        return user_id

    async def save(
        self,
        scope: StyleScope,
        *,
        user_id: int,
        guild_id: int | None,
        name: str,
        template: str,
        model: str | None = None,
        aspect_ratio: str | None = None,
        images: Sequence[StyleImage] = (),
    ) -> StyleRecord:
        """Validate and store (replacing a style of the same name and scope). Permission to manage server
        styles is the caller's to check."""
        name = clean_name(name)
        template = check_template(template)
        model, aspect_ratio = check_defaults(model, aspect_ratio)
        if len(images) > IMAGES_PER_STYLE:
            raise StyleProblem("too_many_images", max=IMAGES_PER_STYLE)
        owner = self.owner(scope, user_id, guild_id)
        if await self.repo.get(scope, owner, name) is None and await self.repo.count(scope, owner) >= (
            STYLES_PER_OWNER
        ):
            raise StyleProblem("too_many", max=STYLES_PER_OWNER)
        return await self.repo.save(
            scope, owner, name, template, model=model, aspect_ratio=aspect_ratio, created_by=user_id,
            images=images, now=self.clock(),
        )  # fmt: skip

    async def usable(self, user_id: int, guild_id: int | None) -> list[StyleRecord]:
        return await self.repo.usable(user_id, guild_id)

    async def find(self, value: str, *, user_id: int, guild_id: int | None) -> StyleRecord:
        """The style an option names (the user's own before the server's for a bare name)."""
        scope, name = parse_reference(value)
        scopes: tuple[StyleScope, ...] = (scope,) if scope else ("personal", "server")
        for each in scopes:
            if each == "server" and guild_id is None:
                continue
            found = await self.repo.get(each, self.owner(each, user_id, guild_id), name)
            if found is not None:
                return found
        raise StyleProblem("not_found", name=name)

    async def resolve(self, value: str, *, user_id: int, guild_id: int | None) -> ResolvedStyle:
        record = await self.find(value, user_id=user_id, guild_id=guild_id)
        images = await self.repo.images(record.id) if record.references else []
        return ResolvedStyle(record, tuple(images))

    async def delete(self, record: StyleRecord) -> bool:
        return await self.repo.delete(record.scope, record.owner_id, record.name)  # type: ignore[arg-type]
