"""Discord side of servers' own provider keys (``/palette provider``) and ``/palette usage``.

The key is asked for in a modal (never a command option, which other members could see in the channel)
and never echoed: replies show its last four characters at most. Decisions live in :mod:`bot.tenants`
and :mod:`bot.usage`; the words are here, kept together for localization.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord

from bot.errors import PaletteError
from bot.moderation import modlog
from bot.presentation import embeds
from bot.tenants import KeyCheck, clean_key, last_four, provider_label
from bot.usage import UsageReport, parse_month, usage_reports

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

log = logging.getLogger(__name__)

TEXTS = {
    "modal_title": "{provider} key for this server",
    "modal_label": "API key",
    "modal_placeholder": "Paste the key; only this server's admins can change it",
    "checking": "Checking the key with {provider}…",
    "stored": "✅ This server's jobs on {provider} now use its own key (…{last4}).",
    "stored_balance": " The account has {credits} credits.",
    "stored_unchecked": (
        " {provider} publishes no way to check a key without generating, so it is checked on first use:"
        " if it is refused, the mod log and the member are told."
    ),
    "fallback_off": (
        " Models this server has no key for are not available here unless you allow the bot's own"
        " providers with `/palette provider fallback on`."
    ),
    "fallback_on": " Other models still use the bot's own providers (fallback is on).",
    "removed": "✅ This server no longer uses its own {provider} key.",
    "not_set": "This server has no key of its own for {provider}.",
    "list_none": "This server uses the bot's own provider keys (none of its own).",
    "list_head": "This server's own provider keys:",
    "list_line": "• {provider}: …{last4} (set <t:{when}:R>)",
    "list_fallback": "Fallback to the bot's own providers: **{state}**.",
    "fallback_set": "✅ Fallback to the bot's own providers: **{state}**.",
    "fallback_no_keys": " (This server has no key of its own yet, so it uses the bot's providers anyway.)",
    "self_funded_limits": (
        "ℹ️ This server pays for its images with its own provider keys (fallback off), so the bot's"
        " per-member limits don't cap it: these limits apply as set."
    ),
    "settings_name": "Own provider keys",
    "settings_value": "{providers} · fallback to the bot's providers {state}",
    "settings_self_funded": " · the bot's per-member limits don't cap this server",
    "usage_title": "Palette usage · {month}",
    "usage_title_all": "Palette usage of every server · {month}",
    "usage_none": "No images were made in {month}.",
    "usage_models": "By model and size",
    "usage_members": "By member",
    "usage_credits": "Provider credits (documented prices)",
    "usage_balance": "{provider} balance of this server's key",
    "usage_server": "Server {guild}",
    "usage_dms": "Direct messages",
}


def text(key: str, **values: object) -> str:
    return TEXTS[key].format(**values)


class KeyModal(discord.ui.Modal):
    """Asks for one provider key; the value goes to ``on_key`` and nowhere else."""

    def __init__(self, provider: str, on_key: Callable[[discord.Interaction, str], Awaitable[None]]) -> None:
        super().__init__(title=text("modal_title", provider=provider_label(provider))[:45], timeout=600)
        self._on_key = on_key
        self.key: discord.ui.TextInput[KeyModal] = discord.ui.TextInput(
            label=text("modal_label"),
            style=discord.TextStyle.short,
            placeholder=text("modal_placeholder"),
            min_length=4,
            max_length=512,
        )
        self.add_item(self.key)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self._on_key(interaction, self.key.value)

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:
        # Never the exception's text: it is not ours to show, and a key must not end up in a log line.
        log.error("the provider key modal failed (%s)", type(error).__name__)
        from bot.presentation.client import send_ephemeral

        message = (
            error.message if isinstance(error, PaletteError) else "Something went wrong; nothing was stored."
        )
        await send_ephemeral(interaction, message)


async def open_key_modal(bot: PaletteBot, interaction: discord.Interaction, provider: str) -> None:
    """``/palette provider set``: the modal, then check and store the key."""
    bot.tenants.require_enabled()  # off without PALETTE_SECRET_KEY: said at once, before any modal
    assert interaction.guild_id is not None
    guild_id, actor = interaction.guild_id, interaction.user.id

    async def on_key(modal_interaction: discord.Interaction, raw: str) -> None:
        from bot.presentation.client import send_ephemeral

        try:
            key = clean_key(raw)
            await modal_interaction.response.defer(ephemeral=True, thinking=True)
            check = await bot.tenants.check_key(bot.generator, provider, key)
            had = provider in (await bot.tenants.access(guild_id)).own
            await bot.tenants.set_key(guild_id, provider, key, actor)
            _keys, fallback = await bot.tenants.list_keys(guild_id)
        except PaletteError as exc:
            await send_ephemeral(modal_interaction, exc.message)
            return
        audit(bot, guild_id, actor, provider, before="another key of its own" if had else "the bot's key",
              after=f"its own key (…{last_four(key)})")  # fmt: skip

        await modal_interaction.followup.send(
            stored_text(provider, last_four(key), check, fallback), ephemeral=True
        )

    await interaction.response.send_modal(KeyModal(provider, on_key))


def audit(bot: PaletteBot, guild_id: int, actor_id: int, provider: str, *, before: str, after: str) -> None:
    """A mod-log entry for a change of the server's provider keys (never the key itself)."""
    bot.moderation.emit(
        modlog.policy_change(
            guild_id, actor_id=actor_id, what=f"{provider_label(provider)} key", before=before, after=after
        )
    )


def stored_text(provider: str, last4: str, check: KeyCheck, fallback: bool) -> str:
    label = provider_label(provider)
    out = text("stored", provider=label, last4=last4)
    if check.balance is not None and check.balance.credits is not None:
        out += text("stored_balance", credits=f"{check.balance.credits:g}")
    if not check.checked:  # e.g. nano-banana-pro.net publishes no check: its first use tells
        out += text("stored_unchecked", provider=label)
    out += text("fallback_on") if fallback else text("fallback_off")
    return out


async def list_text(bot: PaletteBot, guild_id: int) -> str:
    keys, fallback = await bot.tenants.list_keys(guild_id)
    if not keys:
        return text("list_none")
    lines = [text("list_head")]
    lines += [
        text("list_line", provider=provider_label(k.provider), last4=k.last_four, when=int(k.updated_at))
        for k in keys
    ]
    lines.append(text("list_fallback", state="on" if fallback else "off"))
    return "\n".join(lines)


async def remove_text(bot: PaletteBot, guild_id: int, actor_id: int, provider: str) -> str:
    removed = await bot.tenants.remove_key(guild_id, provider)
    if removed:
        audit(bot, guild_id, actor_id, provider, before="its own key", after="the bot's key")
    return text("removed" if removed else "not_set", provider=provider_label(provider))


async def fallback_text(bot: PaletteBot, guild_id: int, actor_id: int, enabled: bool) -> str:
    bot.tenants.require_enabled()
    before = (await bot.tenants.access(guild_id)).operator_fallback
    await bot.tenants.set_fallback(guild_id, enabled)
    bot.moderation.emit(
        modlog.policy_change(
            guild_id,
            actor_id=actor_id,
            what="fallback to the bot's providers",
            before="on" if before else "off",
            after="on" if enabled else "off",
        )
    )
    out = text("fallback_set", state="on" if enabled else "off")
    if not (await bot.tenants.access(guild_id)).has_own:
        out += text("fallback_no_keys")
    return out


async def settings_field(bot: PaletteBot, guild_id: int) -> tuple[str, str] | None:
    """``/palette settings``: which providers use the server's own keys (None: none of its own)."""
    access = await bot.tenants.access(guild_id)
    if not access.has_own:
        return None
    value = text(
        "settings_value",
        providers=", ".join(provider_label(p) for p in sorted(access.own)),
        state="on" if access.operator_fallback else "off",
    )
    if not access.operator_fallback:
        value += text("settings_self_funded")
    return text("settings_name"), value


# ---------------------------------------------------------------------------------------------- usage


def _model_lines(report: UsageReport) -> str:
    lines = [
        f"{embeds.model_label(model)} · {resolution}: **{n}**" for model, resolution, n in report.by_model()
    ]
    return "\n".join(lines[:20]) or "—"


def _member_lines(report: UsageReport) -> str:
    lines = [f"<@{m.user_id}>: **{m.images}**" for m in report.members[:20]]
    if len(report.members) > 20:
        lines.append(f"… and {len(report.members) - 20} more")
    return "\n".join(lines) or "—"


def _credit_lines(report: UsageReport) -> str | None:
    spent = report.credits()
    if not spent:
        return None
    return "\n".join(f"{provider_label(p)}: **{c:g}**" for p, c in sorted(spent.items()))


async def usage_embeds(
    bot: PaletteBot, guild_id: int, month_text: str | None, *, every_server: bool
) -> list[discord.Embed]:
    month = parse_month(month_text, time.time())
    reports = await usage_reports(bot.db.usage, month, None if every_server else guild_id)
    if every_server:
        embed = discord.Embed(title=text("usage_title_all", month=month.label), colour=embeds.BRAND)
        if not any(r.images for r in reports.values()):
            embed.description = text("usage_none", month=month.label)
        for gid, report in sorted(reports.items(), key=lambda kv: -kv[1].images)[:24]:
            name = text("usage_server", guild=gid) if gid is not None else text("usage_dms")
            credits = _credit_lines(report)
            value = f"{report.images} images\n{_model_lines(report)}" + (f"\n{credits}" if credits else "")
            embed.add_field(name=name, value=embeds.truncate(value, 1024), inline=False)
        return [embed]
    report = reports[guild_id]
    embed = discord.Embed(title=text("usage_title", month=month.label), colour=embeds.BRAND)
    if not report.images:
        embed.description = text("usage_none", month=month.label)
    embed.add_field(
        name=text("usage_models"), value=embeds.truncate(_model_lines(report), 1024), inline=False
    )
    embed.add_field(
        name=text("usage_members"), value=embeds.truncate(_member_lines(report), 1024), inline=False
    )
    credits = _credit_lines(report)
    if credits:
        embed.add_field(name=text("usage_credits"), value=credits, inline=False)
    # ListenHub publishes a balance: the server's own key's, when it has one (never the operator's here).
    if bot.tenants.enabled and "listenhub" in (await bot.tenants.access(guild_id)).own:
        try:
            balance = await bot.tenants.balance(bot.generator, guild_id, "listenhub")
        except PaletteError as exc:
            balance, note = None, exc.message
        else:
            note = None
        value = note or (
            "?" if balance is None or balance.credits is None else f"{balance.credits:g} credits"
        )
        embed.add_field(name=text("usage_balance", provider="ListenHub"), value=value, inline=False)
    return [embed]
