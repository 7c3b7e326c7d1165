"""Styles in Discord (issue 12): the words for :mod:`bot.styles`' refusals, ``/style save|list|delete``,
the ``style`` autocomplete, and applying a style to ``/imagine`` and ``/edit``.

Applying happens before anything is checked or charged: the expanded prompt is the prompt from then on
(the prompt filter and the provider see all of it), the style's images are references like attached
ones (they count toward the model's reference limit), and its model and aspect ratio apply where the user
chose none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.errors import ValidationError
from bot.generation import load_references
from bot.i18n import N_, Joined, Size, Text, msg, nmsg, render, t
from bot.presentation import embeds
from bot.presentation.locales import user_locale
from bot.presentation.moderation import is_server_moderator
from bot.storage.styles import StyleImage, StyleRecord, StyleScope
from bot.styles import (
    PLACEHOLDER,
    STYLE_IMAGE_MAX_BYTES,
    StyleProblem,
    check_defaults,
    check_template,
    clean_name,
    option_value,
)

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

#: Every user-facing text of styles, by problem kind or message name (``{...}`` from the details). Each
#: is a message id (:func:`bot.i18n.N_`): rendered in the reader's language where it is shown.
STYLE_TEXT: dict[str, str] = {
    "bad_name": N_("A style name is 1 to {max} characters: letters, digits, spaces, `-` and `_`."),
    "no_placeholder": N_(
        "The template needs `{placeholder}` where your words go, e.g. `{placeholder}, watercolor`."
    ),
    "template_too_long": N_("That template is {length} characters long; a style template is at most {max}."),
    "stray_braces": N_("Only `{placeholder}` may be in braces in a template; remove the other braces."),
    "too_many": N_("There are already {max} styles here; delete one first (`/style delete`)."),
    "too_many_images": N_("A style takes at most {max} reference images."),
    "unknown_model": N_("Unknown model `{model}`; pick one from the list."),
    "bad_ratio": N_("`{ratio}` is not an aspect ratio the style's model draws."),
    "not_found": N_("There is no style called `{name}` (yours or this server's). See `/style list`."),
    "expanded_too_long": N_("With the style, the prompt is {length} characters long; at most {max} fit."),
    "no_server": N_("Server styles only exist in a server."),
    "not_moderator": N_("Only the server's moderators can save or delete server styles."),
    "image_too_large": N_("A style's image can be at most {max}."),
    "saved_personal": N_("Saved your style **{name}**. Use it with `/imagine style:{name}`."),
    "saved_personal_details": N_(
        "Saved your style **{name}** ({details}). Use it with `/imagine style:{name}`."
    ),
    "saved_server": N_(
        "Saved the server style **{name}**; every member can use it with `/imagine style:{name}`."
    ),
    "saved_server_details": N_(
        "Saved the server style **{name}** ({details}); every member can use it with `/imagine style:{name}`."
    ),
    "deleted_personal": N_("Deleted your style **{name}**."),
    "deleted_server": N_("Deleted the server style **{name}**."),
    "list_title": N_("Styles you can use"),
    "list_empty": N_("No styles yet. Save one with `/style save`."),
    "personal": N_("yours"),
    "server": N_("this server's"),
}


def text(key: str, **details: Any) -> Text:
    """The message ``key`` with its values, as data (rendered where it is shown)."""
    return msg(STYLE_TEXT[key], **details)


def problem_text(problem: StyleProblem) -> Text:
    details = dict(problem.details)
    if problem.kind in ("no_placeholder", "stray_braces"):
        details["placeholder"] = PLACEHOLDER
    return text(problem.kind, **details)


def scope_word(scope: str) -> str:
    return STYLE_TEXT["personal" if scope == "personal" else "server"]


def images_word(count: int) -> Text:
    return nmsg("{n} image", "{n} images", count)


@dataclass
class Styled:
    """A command's options after its style: the prompt to use, model and ratio (None: the defaults
    apply) and the style's reference images."""

    prompt: str
    model: str | None
    aspect_ratio: str | None
    blobs: list[tuple[bytes, str | None]] = field(default_factory=list)
    style: StyleRecord | None = None


async def apply_style(
    bot: PaletteBot,
    interaction: discord.Interaction,
    value: str | None,
    *,
    prompt: str,
    model: str | None,
    aspect_ratio: str | None,
) -> Styled:
    """Expand ``prompt`` with the style named by ``value`` (none: unchanged)."""
    if not value:
        return Styled(prompt, model, aspect_ratio)
    try:
        style = await bot.styles.resolve(value, user_id=interaction.user.id, guild_id=interaction.guild_id)
        expanded = style.expand(prompt, max_length=bot.settings.max_prompt_length)
    except StyleProblem as problem:
        raise ValidationError(problem_text(problem)) from None
    record = style.record
    return Styled(
        expanded,
        model or record.model,
        aspect_ratio or record.aspect_ratio,
        [(img.data, None) for img in style.images],
        record,
    )


async def style_choices(
    bot: PaletteBot, interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The user's styles and the server's, matching what was typed."""
    current = current.strip().lower()
    locale = user_locale(interaction)  # autocomplete is shown to the one typing
    found = await bot.styles.usable(interaction.user.id, interaction.guild_id)
    return [
        app_commands.Choice(name=f"{s.name} ({t(locale, scope_word(s.scope))})"[:100], value=option_value(s))
        for s in found
        if current in s.name or current in option_value(s)
    ][:25]


def may_manage(bot: PaletteBot, interaction: discord.Interaction, scope: StyleScope, policy: Any) -> None:
    if scope == "server":
        if interaction.guild_id is None:
            raise ValidationError(text("no_server"))
        if not is_server_moderator(interaction, policy):
            raise ValidationError(text("not_moderator"))


async def save(
    bot: PaletteBot,
    interaction: discord.Interaction,
    *,
    name: str,
    template: str,
    scope: StyleScope,
    images: Sequence[discord.Attachment],
    model: str | None,
    aspect_ratio: str | None,
) -> None:
    if scope == "server":
        policy = await bot.moderation.policy(interaction.guild_id) if interaction.guild_id else None
        may_manage(bot, interaction, scope, policy)
    cap = min(bot.settings.max_reference_bytes, STYLE_IMAGE_MAX_BYTES)
    for att in images:
        if att.size > cap:
            raise ValidationError(text("image_too_large", max=Size(cap, whole=True)))
    try:
        # Cheap checks first (answered at once); the images are downloaded after deferring.
        clean_name(name)
        check_template(template)
        check_defaults(model, aspect_ratio)
    except StyleProblem as problem:
        raise ValidationError(problem_text(problem)) from None
    await interaction.response.defer(ephemeral=True, thinking=True)
    stored: list[StyleImage] = []
    if images:
        fetched = await bot.flows.download(images)
        refs = await load_references(fetched, max_bytes=cap, max_pixels=bot.settings.max_reference_pixels)
        stored = [StyleImage(mime_type=r.mime_type, data=r.data) for r in refs if r.data is not None]
    try:
        record = await bot.styles.save(
            scope, user_id=interaction.user.id, guild_id=interaction.guild_id, name=name, template=template,
            model=model, aspect_ratio=aspect_ratio, images=stored,
        )  # fmt: skip
    except StyleProblem as problem:
        raise ValidationError(problem_text(problem)) from None
    details: list[Any] = []
    if record.model:
        details.append(embeds.model_label(record.model))
    if record.aspect_ratio:
        details.append(record.aspect_ratio)
    if record.references:
        details.append(images_word(record.references))
    if details:
        answer = text(f"saved_{scope}_details", name=record.name, details=Joined(tuple(details)))
    else:
        answer = text(f"saved_{scope}", name=record.name)
    await interaction.followup.send(render(user_locale(interaction), answer), ephemeral=True)


async def list_styles(bot: PaletteBot, interaction: discord.Interaction) -> None:
    locale = user_locale(interaction)  # an ephemeral list: the reader's language
    found = await bot.styles.usable(interaction.user.id, interaction.guild_id)
    embed = discord.Embed(title=t(locale, STYLE_TEXT["list_title"]), colour=embeds.BRAND)
    if not found:
        embed.description = t(locale, STYLE_TEXT["list_empty"])
    for s in found[:25]:
        details: list[Any] = [msg(scope_word(s.scope))]
        if s.model:
            details.append(embeds.model_label(s.model))
        if s.aspect_ratio:
            details.append(s.aspect_ratio)
        if s.references:
            details.append(images_word(s.references))
        embed.add_field(
            name=embeds.truncate(f"{s.name} · {render(locale, Joined(tuple(details)))}", embeds.TITLE_MAX),
            value=embeds.truncate(embeds.escape(s.template), embeds.FIELD_MAX),
            inline=False,
        )
    await interaction.response.send_message(embed=embed, ephemeral=True)


async def delete(bot: PaletteBot, interaction: discord.Interaction, value: str) -> None:
    try:
        record = await bot.styles.find(value, user_id=interaction.user.id, guild_id=interaction.guild_id)
    except StyleProblem as problem:
        raise ValidationError(problem_text(problem)) from None
    if record.scope == "server":
        policy = await bot.moderation.policy(interaction.guild_id) if interaction.guild_id else None
        may_manage(bot, interaction, "server", policy)
    await bot.styles.delete(record)
    answer = text(f"deleted_{record.scope}", name=record.name)
    await interaction.response.send_message(render(user_locale(interaction), answer), ephemeral=True)
