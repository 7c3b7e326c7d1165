"""Discord side of servers' own provider keys (``/palette provider``) and ``/palette usage``.

The key is asked for in a modal (never a command option, which other members could see in the channel)
and never echoed: replies show its last four characters at most. Decisions live in :mod:`bot.tenants`
and :mod:`bot.usage`; the words are here (:mod:`bot.i18n`), in the language of the admin who asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord

from bot.errors import PaletteError
from bot.i18n import N_, SOURCE_LOCALE, Joined, Number, Text, msg, nmsg, render, t, tn
from bot.moderation import modlog
from bot.presentation import embeds
from bot.presentation.locales import user_locale
from bot.tenants import KeyCheck, clean_key, last_four, provider_label
from bot.usage import UsageReport, parse_month, usage_reports

if TYPE_CHECKING:
    from bot.presentation.client import PaletteBot

log = logging.getLogger(__name__)

#: ``/palette limits`` for a server that pays for its own images (no ceilings apply to it).
SELF_FUNDED_LIMITS = msg(
    "ℹ️ This server pays for its images with its own provider keys (fallback off), so the bot's per-member "
    "limits don't cap it: these limits apply as set."
)


def _on_off(enabled: bool) -> Text:
    return msg("on") if enabled else msg("off")


class KeyModal(discord.ui.Modal):
    """Asks for one provider key; the value goes to ``on_key`` and nowhere else."""

    def __init__(
        self,
        provider: str,
        on_key: Callable[[discord.Interaction, str], Awaitable[None]],
        locale: str = SOURCE_LOCALE,
    ) -> None:
        title = t(locale, "{provider} key for this server", provider=provider_label(provider))
        super().__init__(title=title[:45], timeout=600)
        self._on_key = on_key
        self.key: discord.ui.TextInput[KeyModal] = discord.ui.TextInput(
            label=t(locale, "API key")[:45],
            style=discord.TextStyle.short,
            placeholder=t(locale, "Paste the key; only this server's admins can change it")[:100],
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

        locale = user_locale(interaction)
        if isinstance(error, PaletteError):
            message = render(locale, error.text)
        else:
            message = t(locale, "Something went wrong; nothing was stored.")
        await send_ephemeral(interaction, message)


async def open_key_modal(bot: PaletteBot, interaction: discord.Interaction, provider: str) -> None:
    """``/palette provider set``: the modal, then check and store the key."""
    bot.tenants.require_enabled()  # off without PALETTE_SECRET_KEY: said at once, before any modal
    assert interaction.guild_id is not None
    guild_id, actor = interaction.guild_id, interaction.user.id

    async def on_key(modal_interaction: discord.Interaction, raw: str) -> None:
        from bot.presentation.client import send_ephemeral

        locale = user_locale(modal_interaction)
        try:
            key = clean_key(raw)
            await modal_interaction.response.defer(ephemeral=True, thinking=True)
            check = await bot.tenants.check_key(bot.generator, provider, key)
            had = provider in (await bot.tenants.access(guild_id)).own
            await bot.tenants.set_key(guild_id, provider, key, actor)
            _keys, fallback = await bot.tenants.list_keys(guild_id)
        except PaletteError as exc:
            await send_ephemeral(modal_interaction, render(locale, exc.text))
            return
        before = msg("another key of its own") if had else msg("the bot's key")
        after = msg("its own key (…{last4})", last4=last_four(key))
        audit(bot, guild_id, actor, provider, before=before, after=after)

        await modal_interaction.followup.send(
            render(locale, stored_text(provider, last_four(key), check, fallback)), ephemeral=True
        )

    await interaction.response.send_modal(KeyModal(provider, on_key, user_locale(interaction)))


def audit(
    bot: PaletteBot,
    guild_id: int,
    actor_id: int,
    provider: str,
    *,
    before: Text,
    after: Text,
) -> None:
    """A mod-log entry for a change of the server's provider keys (never the key itself), in the server's
    language (the mod log's sender picks it)."""
    entry = modlog.policy_change(
        guild_id,
        actor_id=actor_id,
        what=msg("{provider} key", provider=provider_label(provider)),
        before=before,
        after=after,
    )
    bot.moderation.emit(entry)


def stored_text(provider: str, last4: str, check: KeyCheck, fallback: bool) -> Joined:
    label = provider_label(provider)
    parts: list[Text] = [
        msg(
            "✅ This server's jobs on {provider} now use its own key (…{last4}).", provider=label, last4=last4
        )
    ]
    if check.balance is not None and check.balance.credits is not None:
        credits = check.balance.credits
        parts.append(
            nmsg(
                "The account has {credits} credit.",
                "The account has {credits} credits.",
                round(credits),
                credits=Number(credits),
            )
        )
    if not check.checked:  # e.g. nano-banana-pro.net publishes no check: its first use tells
        parts.append(
            msg(
                "{provider} publishes no way to check a key without generating, so it is checked on first "
                "use: if it is refused, the mod log and the member are told.",
                provider=label,
            )
        )
    if fallback:
        parts.append(msg("Other models still use the bot's own providers (fallback is on)."))
    else:
        parts.append(
            msg(
                "Models this server has no key for are not available here unless you allow the bot's own "
                "providers with `/palette provider fallback on`."
            )
        )
    return Joined(tuple(parts), " ")


async def list_text(bot: PaletteBot, guild_id: int) -> Text | Joined:
    keys, fallback = await bot.tenants.list_keys(guild_id)
    if not keys:
        return msg("This server uses the bot's own provider keys (none of its own).")
    lines: list[Text] = [msg("This server's own provider keys:")]
    lines += [
        msg(
            "• {provider}: …{last4} (set {when})",
            provider=provider_label(k.provider),
            last4=k.last_four,
            when=f"<t:{int(k.updated_at)}:R>",
        )
        for k in keys
    ]
    lines.append(
        msg("Fallback to the bot's own providers: **on**.")
        if fallback
        else msg("Fallback to the bot's own providers: **off**.")
    )
    return Joined(tuple(lines), "\n")


async def remove_text(bot: PaletteBot, guild_id: int, actor_id: int, provider: str) -> Text:
    removed = await bot.tenants.remove_key(guild_id, provider)
    label = provider_label(provider)
    if not removed:
        return msg("This server has no key of its own for {provider}.", provider=label)
    audit(bot, guild_id, actor_id, provider, before=msg("its own key"), after=msg("the bot's key"))
    return msg("✅ This server no longer uses its own {provider} key.", provider=label)


async def fallback_text(bot: PaletteBot, guild_id: int, actor_id: int, enabled: bool) -> Text | Joined:
    bot.tenants.require_enabled()
    before = (await bot.tenants.access(guild_id)).operator_fallback
    await bot.tenants.set_fallback(guild_id, enabled)
    bot.moderation.emit(
        modlog.policy_change(
            guild_id,
            actor_id=actor_id,
            what=msg("fallback to the bot's providers"),
            before=_on_off(before),
            after=_on_off(enabled),
        )
    )
    out = (
        msg("✅ Fallback to the bot's own providers: **on**.")
        if enabled
        else msg("✅ Fallback to the bot's own providers: **off**.")
    )
    if not (await bot.tenants.access(guild_id)).has_own:
        note = msg("(This server has no key of its own yet, so it uses the bot's providers anyway.)")
        return Joined((out, note), " ")
    return out


async def settings_field(bot: PaletteBot, guild_id: int) -> tuple[str, Text | Joined] | None:
    """``/palette settings``: which providers use the server's own keys (None: none of its own).
    The name is a message id (``t`` it), the value a message (``render`` it)."""
    access = await bot.tenants.access(guild_id)
    if not access.has_own:
        return None
    providers = ", ".join(provider_label(p) for p in sorted(access.own))
    if access.operator_fallback:
        return N_("Own provider keys"), msg(
            "{providers} · fallback to the bot's providers on", providers=providers
        )
    value = msg("{providers} · fallback to the bot's providers off", providers=providers)
    return N_("Own provider keys"), Joined(
        (value, msg("the bot's per-member limits don't cap this server")), " · "
    )


# ---------------------------------------------------------------------------------------------- usage


def _model_lines(report: UsageReport, locale: str) -> str:
    lines = [
        t(
            locale,
            "{model} · {resolution}: **{images}**",
            model=embeds.model_label(model),
            resolution=resolution,
            images=Number(n),
        )
        for model, resolution, n in report.by_model()
    ]
    return "\n".join(lines[:20]) or "—"


def _member_lines(report: UsageReport, locale: str) -> str:
    lines = [
        t(locale, "{user}: **{images}**", user=f"<@{m.user_id}>", images=Number(m.images))
        for m in report.members[:20]
    ]
    if len(report.members) > 20:
        lines.append(t(locale, "… and {count} more", count=len(report.members) - 20))
    return "\n".join(lines) or "—"


def _credit_lines(report: UsageReport, locale: str) -> str | None:
    spent = report.credits()
    if not spent:
        return None
    return "\n".join(
        t(locale, "{provider}: **{credits}**", provider=provider_label(p), credits=Number(c))
        for p, c in sorted(spent.items())
    )


async def usage_embeds(
    bot: PaletteBot,
    guild_id: int,
    month_text: str | None,
    *,
    every_server: bool,
    locale: str = SOURCE_LOCALE,
) -> list[discord.Embed]:
    month = parse_month(month_text, time.time())
    reports = await usage_reports(bot.db.usage, month, None if every_server else guild_id)
    if every_server:
        embed = discord.Embed(
            title=t(locale, "Palette usage of every server · {month}", month=month.label), colour=embeds.BRAND
        )
        if not any(r.images for r in reports.values()):
            embed.description = t(locale, "No images were made in {month}.", month=month.label)
        for gid, report in sorted(reports.items(), key=lambda kv: -kv[1].images)[:24]:
            name = t(locale, "Server {guild}", guild=gid) if gid is not None else t(locale, "Direct messages")
            lines = [tn(locale, "{n} image", "{n} images", report.images), _model_lines(report, locale)]
            credits = _credit_lines(report, locale)
            if credits:
                lines.append(credits)
            embed.add_field(name=name, value=embeds.truncate("\n".join(lines), 1024), inline=False)
        return [embed]
    report = reports[guild_id]
    embed = discord.Embed(title=t(locale, "Palette usage · {month}", month=month.label), colour=embeds.BRAND)
    if not report.images:
        embed.description = t(locale, "No images were made in {month}.", month=month.label)
    embed.add_field(
        name=t(locale, "By model and size"),
        value=embeds.truncate(_model_lines(report, locale), 1024),
        inline=False,
    )
    embed.add_field(
        name=t(locale, "By member"), value=embeds.truncate(_member_lines(report, locale), 1024), inline=False
    )
    credits = _credit_lines(report, locale)
    if credits:
        embed.add_field(name=t(locale, "Provider credits (documented prices)"), value=credits, inline=False)
    # ListenHub publishes a balance: the server's own key's, when it has one (never the operator's here).
    if bot.tenants.enabled and "listenhub" in (await bot.tenants.access(guild_id)).own:
        try:
            balance = await bot.tenants.balance(bot.generator, guild_id, "listenhub")
        except PaletteError as exc:
            value = render(locale, exc.text)
        else:
            if balance is None or balance.credits is None:
                value = "?"
            else:
                credits = balance.credits
                value = render(
                    locale,
                    nmsg("{credits} credit", "{credits} credits", round(credits), credits=Number(credits)),
                )
        embed.add_field(
            name=t(locale, "{provider} balance of this server's key", provider="ListenHub"),
            value=embeds.truncate(value, 1024),
            inline=False,
        )
    return [embed]
