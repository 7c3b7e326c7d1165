"""What Palette's messages look like: status lines, result embeds, quota and history pages."""

from __future__ import annotations

import json
from collections.abc import Sequence

import discord

from bot.catalog import get_model
from bot.errors import (
    ContentRefused,
    OutOfCredits,
    PaletteError,
    ProviderBusy,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ValidationError,
)
from bot.health import HealthSnapshot
from bot.i18n import N_, SOURCE_LOCALE, Number, Percent, render, resolve, t, tn
from bot.storage import HistoryEntry, JobRecord, Limits, UsageSnapshot

BRAND = discord.Colour(0xE0A526)
ERROR = discord.Colour(0xD64545)
TITLE_MAX = 256
FIELD_MAX = 1024


def truncate(text: str, limit: int) -> str:
    """Cut at ``limit`` characters on a character boundary, with an ellipsis."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def escape(text: str) -> str:
    """Prompts are user text: no markdown tricks, no mass mentions."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def model_label(key: str) -> str:
    model = get_model(key)
    return model.label if model else key


def job_params(job: JobRecord) -> dict[str, object]:
    try:
        return dict(json.loads(job.params or "{}"))
    except ValueError:
        return {}


def job_locale(job: JobRecord) -> str:
    """The language of the job's public messages (its server's, chosen when it was queued)."""
    return resolve(job_params(job).get("locale"))


def queued_text(job: JobRecord, position: int | None, locale: str = SOURCE_LOCALE) -> str:
    model = model_label(job.model)
    if position:
        return tn(
            locale,
            "⏳ Queued (position {position} in line): {n} image with **{model}**.",
            "⏳ Queued (position {position} in line): {n} images with **{model}**.",
            job.count,
            position=position,
            model=model,
        )
    return tn(
        locale,
        "⏳ Queued: {n} image with **{model}**.",
        "⏳ Queued: {n} images with **{model}**.",
        job.count,
        model=model,
    )


def started_text(job: JobRecord, started_at: float, locale: str = SOURCE_LOCALE) -> str:
    return tn(
        locale,
        "🎨 Generating {n} image with **{model}**… started {started}.",
        "🎨 Generating {n} images with **{model}**… started {started}.",
        job.count,
        model=model_label(job.model),
        started=f"<t:{int(started_at)}:R>",
    )


def cancelled_text(user_id: int, *, images: int, locale: str = SOURCE_LOCALE) -> str:
    """The status message of a cancelled job (public: in the server's language)."""
    return tn(
        locale,
        "✖️ Cancelled by {user}. Nothing was charged ({n} image refunded).",
        "✖️ Cancelled by {user}. Nothing was charged ({n} images refunded).",
        images,
        user=f"<@{user_id}>",
    )


#: Answers to a click on Cancel (ephemeral: rendered in the clicker's language), by outcome.
CANCEL_TEXT = {
    "not_allowed": N_("Only the person who asked for this (or a moderator) can cancel it."),
    "already_done": N_("That request has already finished; there is nothing to cancel."),
    "already_cancelled": N_("That request was already cancelled."),
    "posted": N_("Those images have just been posted; it is too late to cancel."),
    "unknown": N_("That request is no longer in Palette's records."),
}


def result_embed(
    job: JobRecord,
    *,
    provider: str,
    provider_model: str,
    sizes: Sequence[tuple[int, int]],
    seconds: float,
    failed: int = 0,
    locale: str = SOURCE_LOCALE,
) -> discord.Embed:
    params = job_params(job)
    embed = discord.Embed(title=truncate(escape(job.prompt), TITLE_MAX), colour=BRAND)
    embed.add_field(name=t(locale, "Model"), value=model_label(job.model), inline=True)
    if sizes:
        unique = sorted(set(sizes))
        embed.add_field(name=t(locale, "Size"), value=", ".join(f"{w}×{h}" for w, h in unique), inline=True)
    if params.get("seed") is not None:
        embed.add_field(name=t(locale, "Seed"), value=str(params["seed"]), inline=True)
    embed.add_field(
        name=t(locale, "Time"), value=t(locale, "{seconds} s", seconds=Number(seconds, 1)), inline=True
    )
    embed.add_field(name=t(locale, "Requested by"), value=f"<@{job.user_id}>", inline=True)
    if failed:
        embed.add_field(
            name=t(locale, "Note"),
            value=tn(
                locale,
                "{n} of the images failed; it was not charged.",
                "{n} of the images failed; they were not charged.",
                failed,
            ),
            inline=False,
        )
    embed.set_footer(
        text=t(
            locale,
            "Palette · job {job} · {provider_model} via {provider}",
            job=job.id,
            provider_model=provider_model,
            provider=provider,
        )
    )
    return embed


def failure_text(error: PaletteError, locale: str = SOURCE_LOCALE) -> str:
    """A failed job, for its requester: what happened, whether to retry, and that it cost nothing."""
    what = render(locale, error.text)
    if isinstance(error, ContentRefused):
        return t(locale, "❌ {error} Try rephrasing the prompt. Your quota was refunded.", error=what)
    if isinstance(error, RateLimited | ProviderBusy | ProviderTimeout):
        return t(locale, "❌ {error} Please try again in a few minutes. Your quota was refunded.", error=what)
    if isinstance(error, OutOfCredits):
        return t(
            locale,
            "❌ {error} The bot owner has been notified in the logs; try again later. "
            "Your quota was refunded.",
            error=what,
        )
    if not isinstance(error, ValidationError) and isinstance(error, ProviderError) and error.retryable:
        return t(
            locale,
            "❌ {error} This is usually temporary; try again shortly. Your quota was refunded.",
            error=what,
        )
    return t(locale, "❌ {error} Your quota was refunded.", error=what)


def quota_embed(
    usage: UsageSnapshot, limits: Limits, *, balances: Sequence[str] = (), locale: str = SOURCE_LOCALE
) -> discord.Embed:
    embed = discord.Embed(title=t(locale, "Your Palette quota"), colour=BRAND)

    def line(used: int, limit: int | None, resets_at: float | None) -> str:
        if limit is None:
            return t(locale, "{used} used · unlimited", used=used)
        left = max(0, limit - used)
        if resets_at and used > 0:
            return t(
                locale,
                "**{left}** of {limit} left · more {when}",
                left=left,
                limit=limit,
                when=f"<t:{int(resets_at)}:R>",
            )
        return t(locale, "**{left}** of {limit} left", left=left, limit=limit)

    embed.add_field(
        name=t(locale, "Today (24 h)"),
        value=line(usage.daily_used, limits.daily, usage.daily_resets_at),
        inline=False,
    )
    embed.add_field(
        name=t(locale, "This hour"),
        value=line(usage.hourly_used, limits.hourly, usage.hourly_resets_at),
        inline=False,
    )
    if limits.max_concurrent:
        in_flight = t(locale, "{used} of {limit}", used=usage.in_flight, limit=limits.max_concurrent)
    else:
        in_flight = str(usage.in_flight)
    embed.add_field(name=t(locale, "Jobs in progress"), value=in_flight, inline=False)
    if limits.guild_daily_pool:
        pool_left = max(0, limits.guild_daily_pool - (usage.guild_pool_used or 0))
        embed.add_field(
            name=t(locale, "Server pool today"),
            value=t(locale, "{left} of {limit} left", left=pool_left, limit=limits.guild_daily_pool),
            inline=False,
        )
    if balances:
        embed.add_field(
            name=t(locale, "Provider balances"), value=truncate("\n".join(balances), FIELD_MAX), inline=False
        )
    return embed


def jump_url(guild_id: int | None, channel_id: int | None, message_id: int | None) -> str | None:
    if not channel_id or not message_id:
        return None
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def history_embed(
    entries: Sequence[HistoryEntry], page: int, pages: int, total: int, locale: str = SOURCE_LOCALE
) -> discord.Embed:
    embed = discord.Embed(title=t(locale, "Your recent generations"), colour=BRAND)
    if not entries:
        embed.description = t(locale, "Nothing yet. Try `/imagine`!")
        return embed
    lines = []
    for entry in entries:
        link = jump_url(entry.guild_id, entry.channel_id, entry.message_id)
        prompt = truncate(escape(entry.prompt.replace("\n", " ")), 80)
        model = model_label(entry.model)
        when = f"<t:{int(entry.created_at)}:R>"
        if link:
            head = t(locale, "**{model}** · {when} · [jump]({link})", model=model, when=when, link=link)
        else:
            head = t(locale, "**{model}** · {when}", model=model, when=when)
        lines.append(f"{head}\n{prompt}")
    embed.description = truncate("\n\n".join(lines), 4096)
    embed.set_footer(
        text=tn(
            locale,
            "Page {page} of {pages} · {n} generation",
            "Page {page} of {pages} · {n} generations",
            total,
            page=page + 1,
            pages=max(pages, 1),
        )
    )
    return embed


def status_embed(
    snapshots: Sequence[HealthSnapshot] | None,
    *,
    queued: int,
    running: int,
    server_images_today: int | None = None,
    locale: str = SOURCE_LOCALE,
) -> discord.Embed:
    """Queue depth and the server's usage (`/palette status`); provider health only when ``snapshots``
    is given (the bot's operator: server managers get ``None``)."""
    embed = discord.Embed(title=t(locale, "Palette status"), colour=BRAND)
    embed.add_field(
        name=t(locale, "Queue"),
        value=t(locale, "{queued} waiting · {running} generating", queued=queued, running=running),
        inline=False,
    )
    if server_images_today is not None:
        embed.add_field(
            name=t(locale, "This server (24 h)"),
            value=tn(locale, "{n} image", "{n} images", server_images_today),
            inline=False,
        )
    if snapshots is None:
        return embed
    icons = {"closed": "🟢", "half-open": "🟡", "open": "🔴"}
    for snap in snapshots:
        latency = (
            t(locale, "{seconds} s", seconds=Number(snap.median_latency_s, 1))
            if snap.median_latency_s is not None
            else t(locale, "n/a")
        )
        embed.add_field(
            name=f"{icons.get(snap.state, '⚪')} {snap.provider}",
            value=t(
                locale,
                "breaker {state} · errors {rate} of last {calls} · median {latency}",
                state=snap.state,
                rate=Percent(snap.error_rate),
                calls=snap.calls,
                latency=latency,
            ),
            inline=False,
        )
    if not snapshots:
        embed.description = t(locale, "No provider is enabled.")
    return embed
