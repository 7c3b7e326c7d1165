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


def queued_text(job: JobRecord, position: int | None) -> str:
    where = f" (position {position} in line)" if position else ""
    images = f"{job.count} image{'s' if job.count != 1 else ''}"
    return f"⏳ Queued{where}: {images} with **{model_label(job.model)}**."


def started_text(job: JobRecord, started_at: float) -> str:
    return (
        f"🎨 Generating {job.count} image{'s' if job.count != 1 else ''} with **{model_label(job.model)}**"
        f"… started <t:{int(started_at)}:R>."
    )


def cancelled_text(user_id: int, *, images: int) -> str:
    """The status message of a cancelled job."""
    what = f"{images} image{'s' if images != 1 else ''}"
    return f"✖️ Cancelled by <@{user_id}>. Nothing was charged ({what} refunded)."


#: Answers to a click on Cancel (ephemeral), by outcome.
CANCEL_TEXT = {
    "not_allowed": "Only the person who asked for this (or a moderator) can cancel it.",
    "already_done": "That request has already finished; there is nothing to cancel.",
    "already_cancelled": "That request was already cancelled.",
    "posted": "Those images have just been posted; it is too late to cancel.",
    "unknown": "That request is no longer in Palette's records.",
}


def result_embed(
    job: JobRecord,
    *,
    provider: str,
    provider_model: str,
    sizes: Sequence[tuple[int, int]],
    seconds: float,
    failed: int = 0,
) -> discord.Embed:
    params = job_params(job)
    embed = discord.Embed(title=truncate(escape(job.prompt), TITLE_MAX), colour=BRAND)
    embed.add_field(name="Model", value=model_label(job.model), inline=True)
    if sizes:
        unique = sorted(set(sizes))
        embed.add_field(name="Size", value=", ".join(f"{w}×{h}" for w, h in unique), inline=True)
    if params.get("seed") is not None:
        embed.add_field(name="Seed", value=str(params["seed"]), inline=True)
    embed.add_field(name="Time", value=f"{seconds:.1f} s", inline=True)
    embed.add_field(name="Requested by", value=f"<@{job.user_id}>", inline=True)
    if failed:
        embed.add_field(
            name="Note",
            value=f"{failed} of the images failed; {'they were' if failed != 1 else 'it was'} not charged.",
            inline=False,
        )
    embed.set_footer(text=f"Palette · job {job.id} · {provider_model} via {provider}")
    return embed


def failure_text(error: PaletteError) -> str:
    """A failed job, for its requester: what happened, whether to retry, and that it cost nothing."""
    if isinstance(error, ContentRefused):
        advice = "Try rephrasing the prompt."
    elif isinstance(error, RateLimited | ProviderBusy | ProviderTimeout):
        advice = "Please try again in a few minutes."
    elif isinstance(error, OutOfCredits):
        advice = "The bot owner has been notified in the logs; try again later."
    elif isinstance(error, ValidationError):
        advice = ""
    elif isinstance(error, ProviderError) and error.retryable:
        advice = "This is usually temporary; try again shortly."
    else:
        advice = ""
    return f"❌ {error.message} {advice} Your quota was refunded.".replace("  ", " ")


def quota_embed(usage: UsageSnapshot, limits: Limits, *, balances: Sequence[str] = ()) -> discord.Embed:
    embed = discord.Embed(title="Your Palette quota", colour=BRAND)

    def line(used: int, limit: int | None, resets_at: float | None) -> str:
        if limit is None:
            return f"{used} used · unlimited"
        left = max(0, limit - used)
        text = f"**{left}** of {limit} left"
        if resets_at and used > 0:
            text += f" · more <t:{int(resets_at)}:R>"
        return text

    embed.add_field(
        name="Today (24 h)", value=line(usage.daily_used, limits.daily, usage.daily_resets_at), inline=False
    )
    embed.add_field(
        name="This hour", value=line(usage.hourly_used, limits.hourly, usage.hourly_resets_at), inline=False
    )
    in_flight = f"{usage.in_flight}" + (f" of {limits.max_concurrent}" if limits.max_concurrent else "")
    embed.add_field(name="Jobs in progress", value=in_flight, inline=False)
    if limits.guild_daily_pool:
        pool_left = max(0, limits.guild_daily_pool - (usage.guild_pool_used or 0))
        embed.add_field(
            name="Server pool today", value=f"{pool_left} of {limits.guild_daily_pool} left", inline=False
        )
    if balances:
        embed.add_field(
            name="Provider balances", value=truncate("\n".join(balances), FIELD_MAX), inline=False
        )
    return embed


def jump_url(guild_id: int | None, channel_id: int | None, message_id: int | None) -> str | None:
    if not channel_id or not message_id:
        return None
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def history_embed(entries: Sequence[HistoryEntry], page: int, pages: int, total: int) -> discord.Embed:
    embed = discord.Embed(title="Your recent generations", colour=BRAND)
    if not entries:
        embed.description = "Nothing yet. Try `/imagine`!"
        return embed
    lines = []
    for entry in entries:
        link = jump_url(entry.guild_id, entry.channel_id, entry.message_id)
        prompt = truncate(escape(entry.prompt.replace("\n", " ")), 80)
        where = f" · [jump]({link})" if link else ""
        lines.append(f"**{model_label(entry.model)}** · <t:{int(entry.created_at)}:R>{where}\n{prompt}")
    embed.description = truncate("\n\n".join(lines), 4096)
    embed.set_footer(
        text=f"Page {page + 1} of {max(pages, 1)} · {total} generation{'s' if total != 1 else ''}"
    )
    return embed


def status_embed(
    snapshots: Sequence[HealthSnapshot] | None,
    *,
    queued: int,
    running: int,
    server_images_today: int | None = None,
) -> discord.Embed:
    """Queue depth and the server's usage (`/palette status`); provider health only when ``snapshots``
    is given (the bot's operator: server managers get ``None``)."""
    embed = discord.Embed(title="Palette status", colour=BRAND)
    embed.add_field(name="Queue", value=f"{queued} waiting · {running} generating", inline=False)
    if server_images_today is not None:
        embed.add_field(name="This server (24 h)", value=f"{server_images_today} images", inline=False)
    if snapshots is None:
        return embed
    icons = {"closed": "🟢", "half-open": "🟡", "open": "🔴"}
    for snap in snapshots:
        latency = f"{snap.median_latency_s:.1f} s" if snap.median_latency_s is not None else "n/a"
        embed.add_field(
            name=f"{icons.get(snap.state, '⚪')} {snap.provider}",
            value=(
                f"breaker {snap.state} · errors {snap.error_rate:.0%} of last {snap.calls} · median {latency}"
            ),
            inline=False,
        )
    if not snapshots:
        embed.description = "No provider is enabled."
    return embed
