"""The moderation service: every decision about who may generate what, where; and policy changes.

No Discord here: callers pass a :class:`~bot.moderation.policy.RequestContext` (plain ids). Mod-log
entries go to ``sink`` (set by the presentation layer), which must return at once; sending is its
business and never blocks a request.

Each server's policy, bans and compiled blocklist are kept in memory (:class:`GuildState`), loaded once
and dropped whenever this service changes any of them, so a change made with an admin command applies
to the next request. The checks that run before an interaction is deferred therefore touch no database
under load (reading there queued behind job writes on the shared connection and cost seconds of
Discord's 3-second deadline in the burst benchmark). Every write goes through this service; only the
blocked-prompt record (rare) writes before deferring.

Changes made by another process (another gateway) are seen through the database's per-server version
counter, which :meth:`ModerationService.watch` polls in the background (:data:`WATCH_INTERVAL`): a ban
issued anywhere applies everywhere within a second, and the pre-defer checks still read only memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from bot.catalog import RESOLUTIONS, get_model
from bot.config import Settings
from bot.errors import ValidationError
from bot.i18n import N_, Duration, Joined, Text, msg, nmsg, shipped_locales
from bot.moderation import bans, modlog
from bot.moderation.filter import (
    CHECK_BUDGET,
    FilterEntry,
    FilterHit,
    FilterTimeout,
    InvalidPattern,
    PromptFilter,
    compile_regex,
    normalize_word,
)
from bot.moderation.modlog import ModLogEntry
from bot.moderation.policy import (
    PolicyViolation,
    RequestContext,
    check_request,
    check_where,
    exceeds_ceiling,
    nsfw_terms_apply,
    strict_safety_for,
)
from bot.singleflight import SingleFlight
from bot.storage.moderation import Ban, BlockScope, GuildPolicy, PostedResult, Report, RoleLimit
from bot.storage.repository import ModerationRepository

log = logging.getLogger(__name__)

MAX_LIMIT = 100_000
MAX_BLOCKLIST = 500
#: Threads for blocklist work (compiling, vetting, checking prompts): CPU-bound and time-bounded, kept
#: off the event loop and out of the default executor that image work and DNS lookups share.
FILTER_THREADS = 2
FILTER_THREAD_NAME = "palette-filter"
#: One mod-log entry per server and set of slow patterns per this many seconds (a user repeating a slow
#: prompt must not flood the mod log).
SLOW_REPORT_INTERVAL = 600.0
#: How often the version counters of the servers' moderation state are polled (other processes' changes).
WATCH_INTERVAL = 0.5
#: Changes are asked for since the last one seen minus this much: clocks of several machines differ, and
#: a change committed late may carry an earlier timestamp.
WATCH_SLACK = 5.0


@dataclass(frozen=True)
class GuildState:
    """What the pre-defer checks need about one server, held in memory."""

    policy: GuildPolicy
    bans: dict[int, Ban]
    filter: PromptFilter
    role_limits: tuple[RoleLimit, ...] = ()


class Banned(PolicyViolation):
    pass


class PromptBlocked(PolicyViolation):
    pass


class PromptCheckTimedOut(PolicyViolation):
    """The blocklist could not be checked within its time budget: the prompt is refused (fail closed),
    without counting against its author."""


class ModerationService:
    def __init__(
        self,
        repo: ModerationRepository,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        sink: Callable[[ModLogEntry], None] | None = None,
        check_budget: float = CHECK_BUDGET,
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.clock = clock
        self.sink = sink
        self.check_budget = check_budget
        self._executor: ThreadPoolExecutor | None = None
        self._slow_reported: dict[tuple[int, tuple[str, ...]], float] = {}
        self._state: dict[int, GuildState] = {}
        self._loading: SingleFlight[int, GuildState] = SingleFlight()
        self._version: dict[int, int] = {}
        # The version counter of each server's state in the database, as last seen by watch().
        self._seen: dict[int, int] = {}
        self._watched_since: float | None = None
        #: Called with a server's id whenever its cached state is dropped (other caches of per-server
        #: state kept in step with the moderation versions, e.g. servers' own provider keys).
        self.on_invalidate: list[Callable[[int], None]] = []
        self._watcher: asyncio.Task[None] | None = None
        # Blocked-prompt entries per (server, member): a flood of refusals is summed up, not posted.
        self._blocked_entries = modlog.EntryRate(modlog.BLOCKED_SHOWN_PER_USER, modlog.BLOCKED_WINDOW_SECONDS)

    # ------------------------------------------------------------------ mod log

    def emit(self, entry: ModLogEntry) -> None:
        if self.sink is None:
            return
        try:
            self.sink(entry)
        except Exception:  # the mod log must never break a request
            log.exception("could not queue a mod-log entry")

    # ------------------------------------------------------------------ the filter's threads

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The blocklist's own thread pool (created on first use, again after :meth:`close`)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(FILTER_THREADS, thread_name_prefix=FILTER_THREAD_NAME)
        return self._executor

    async def _in_filter_thread(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------ other processes' changes

    def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Poll the database for moderation changes made anywhere, dropping the servers that changed."""
        if self._watcher is None and hasattr(self.repo, "versions_since"):
            self._watched_since = self.clock() - WATCH_SLACK
            self._watcher = asyncio.create_task(self._watch(interval), name="palette-moderation-watch")

    async def stop_watching(self) -> None:
        task, self._watcher = self._watcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self, interval: float) -> None:
        while True:
            try:
                await self.poll_changes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not read moderation changes (%s)", type(exc).__name__)
            await asyncio.sleep(interval)

    async def poll_changes(self) -> int:
        """Drop the cached state of every server whose version moved; returns how many did."""
        since = self._watched_since if self._watched_since is not None else self.clock() - WATCH_SLACK
        rows = await self.repo.versions_since(since)  # type: ignore[attr-defined]
        changed = 0
        newest = since + WATCH_SLACK
        for guild_id, version, updated_at in rows:
            newest = max(newest, float(updated_at))
            if self._seen.get(guild_id) != version:
                self._seen[guild_id] = version
                self.invalidate(guild_id)
                changed += 1
        self._watched_since = newest - WATCH_SLACK
        return changed

    def close(self) -> None:
        """Stop the filter threads (at shutdown). Checks queued behind them are cancelled."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ requests

    async def state(self, guild_id: int) -> GuildState:
        """The server's policy, bans and filter, from memory (loaded on first use; one load at a time)."""
        state = self._state.get(guild_id)
        if state is not None:
            return state
        return await self._loading.run(guild_id, lambda: self._load(guild_id))

    async def _load(self, guild_id: int) -> GuildState:
        version = self._version.get(guild_id, 0)
        policy = await self.repo.get_policy(guild_id)
        entries = await self.repo.blocklist(guild_id)
        ban_list = await self.repo.bans(guild_id)
        role_limits = tuple(await self.repo.role_limits(guild_id))
        built = await self._in_filter_thread(
            PromptFilter,
            [FilterEntry(e.kind, e.pattern, e.scope) for e in entries],
            builtin=policy.builtin_blocklist,
        )
        state = GuildState(policy, {b.user_id: b for b in ban_list}, built, role_limits)
        if self._version.get(guild_id, 0) == version:  # not invalidated while loading
            self._state[guild_id] = state
        return state

    def invalidate(self, guild_id: int) -> None:
        """Forget the server's cached state (after any change to its policy, bans or blocklist).

        A load already under way may have read the old rows: callers arriving from now on start a new
        one instead of sharing it (that load still answers the callers that were waiting for it)."""
        self._version[guild_id] = self._version.get(guild_id, 0) + 1
        self._state.pop(guild_id, None)
        self._loading.forget(guild_id)
        for listener in self.on_invalidate:
            listener(guild_id)

    async def policy(self, guild_id: int | None) -> GuildPolicy | None:
        return None if guild_id is None else (await self.state(guild_id)).policy

    async def limit_policy(self, guild_id: int) -> tuple[GuildPolicy, tuple[RoleLimit, ...]]:
        """The server's policy and role limits, from memory (the limit policy's source)."""
        state = await self.state(guild_id)
        return state.policy, state.role_limits

    async def admit(self, ctx: RequestContext) -> GuildPolicy | None:
        """Ban, DMs and channel rules, cheapest first. Returns the server policy for the later checks."""
        check_where(self.settings, None, ctx)  # DMs need no database
        if ctx.guild_id is None:
            return None
        ban = await self.active_ban(ctx.guild_id, ctx.user_id)
        if ban is not None:
            raise Banned(bans.banned_message(ban))
        policy = (await self.state(ctx.guild_id)).policy
        check_where(self.settings, policy, ctx)
        return policy

    def adjust(
        self,
        policy: GuildPolicy | None,
        ctx: RequestContext,
        spec: Any,
        *,
        model_chosen: bool,
        references: int = 0,
    ) -> Any:
        """The server's default model when the user did not pick one (and it can take the request's
        reference images: an edit keeps the bot's edit-capable choice otherwise); strict safety where
        required."""
        if policy is not None and not model_chosen and policy.default_model:
            default = get_model(policy.default_model)
            if default is not None and default.max_references >= references:
                spec = replace(spec, model=policy.default_model)
        if strict_safety_for(policy, ctx):
            spec = replace(spec, strict_safety=True)
        return spec

    def check_plan(
        self, policy: GuildPolicy | None, *, model: str, resolution: str | None, count: int
    ) -> None:
        check_request(policy, model=model, resolution=resolution, count=count)

    async def screen_prompt(self, policy: GuildPolicy | None, ctx: RequestContext, prompt: str) -> None:
        """Raise :class:`PromptBlocked` (after recording it, maybe auto-banning) if the filter trips."""
        if policy is None or ctx.guild_id is None:
            return
        prompt_filter = await self.filter_for(policy)
        if not len(prompt_filter):
            return
        try:
            hit = await self._in_filter_thread(
                prompt_filter.check,
                prompt,
                nsfw_terms=nsfw_terms_apply(policy, ctx),
                budget=self.check_budget,
            )
        except FilterTimeout as exc:
            self._timed_out(ctx, prompt, exc)
        if hit is None:
            return
        await self._blocked(policy, ctx, prompt, hit)

    def _timed_out(self, ctx: RequestContext, prompt: str, exc: FilterTimeout) -> NoReturn:
        """Fail closed: refuse the prompt (not the author's fault: no record, no auto-ban) and tell the
        moderators which entries are slow, once in a while."""
        assert ctx.guild_id is not None
        slow = tuple(hit.pattern for hit in exc.slow)
        log.warning(
            "guild %s: the blocklist check ran out of its %.0f ms budget; slow entries: %s",
            ctx.guild_id,
            self.check_budget * 1000,
            ", ".join(repr(p) for p in slow),
        )
        now = self.clock()
        key = (ctx.guild_id, slow)
        if now - self._slow_reported.get(key, float("-inf")) >= SLOW_REPORT_INTERVAL:
            if len(self._slow_reported) >= 1000:  # forget old reports rather than grow without end
                self._slow_reported = {
                    k: t for k, t in self._slow_reported.items() if now - t < SLOW_REPORT_INTERVAL
                }
            self._slow_reported[key] = now
            self.emit(
                modlog.slow_filter(
                    ctx.guild_id,
                    user_id=ctx.user_id,
                    channel_id=ctx.channel_id,
                    prompt=prompt,
                    slow=[hit.describe() for hit in exc.slow],
                )
            )
        raise PromptCheckTimedOut(
            "⏳ Palette couldn't check this prompt against this server's blocklist in time, so it wasn't "
            "sent. Nothing was charged. Try again, or try a shorter prompt; the server's moderators have "
            "been told."
        )

    async def _blocked(self, policy: GuildPolicy, ctx: RequestContext, prompt: str, hit: FilterHit) -> None:
        assert ctx.guild_id is not None
        now = self.clock()
        recent = await self.repo.record_blocked(
            ctx.guild_id,
            ctx.user_id,
            ctx.channel_id,
            prompt,
            hit.describe(),
            now,
            window=policy.autoban_window,
        )
        auto: Ban | None = None
        if bans.should_auto_ban(policy, recent) and await self.active_ban(ctx.guild_id, ctx.user_id) is None:
            auto = bans.make_ban(
                ctx.guild_id,
                ctx.user_id,
                duration=policy.autoban_duration,
                # Stored as a code and values: shown in each reader's language (bans.ban_reason).
                reason=bans.auto_ban_reason(recent, policy.autoban_window),
                banned_by=None,
                now=now,
                automatic=True,
            )
            await self.repo.ban(auto)
            self.invalidate(ctx.guild_id)
        not_shown = self._blocked_entries.admit((ctx.guild_id, ctx.user_id), now)
        if not_shown is not None:
            self.emit(
                modlog.blocked(
                    ctx.guild_id,
                    user_id=ctx.user_id,
                    channel_id=ctx.channel_id,
                    prompt=prompt,
                    matched=hit.describe_text(),
                    recent=recent,
                    auto_ban=auto,
                    not_shown=not_shown,
                )
            )
        if auto is not None:
            self.emit(modlog.ban(ctx.guild_id, auto, actor_id=None))
        if auto is not None:
            raise PromptBlocked(
                "🚫 That prompt isn't allowed in this server. Nothing was charged.\n{ban}",
                ban=bans.banned_message(auto),
            )
        raise PromptBlocked("🚫 That prompt isn't allowed in this server. Nothing was charged.")

    async def filter_for(self, policy: GuildPolicy) -> PromptFilter:
        return (await self.state(policy.guild_id)).filter

    # ------------------------------------------------------------------ bans

    async def active_ban(self, guild_id: int, user_id: int) -> Ban | None:
        """The user's ban in this server if it is still running (expiry is checked against ``clock``)."""
        ban = (await self.state(guild_id)).bans.get(user_id)
        return ban if ban is not None and ban.active(self.clock()) else None

    async def ban(
        self,
        guild_id: int,
        user_id: int,
        *,
        actor_id: int,
        duration: str | float | None,
        reason: str | bans.SystemReason | None,
    ) -> Ban:
        seconds = bans.parse_duration(duration) if isinstance(duration, str) or duration is None else duration
        ban = bans.make_ban(
            guild_id, user_id, duration=seconds, reason=reason, banned_by=actor_id, now=self.clock()
        )
        await self.repo.ban(ban)
        self.invalidate(guild_id)
        self.emit(modlog.ban(guild_id, ban, actor_id=actor_id))
        return ban

    async def unban(self, guild_id: int, user_id: int, *, actor_id: int) -> bool:
        lifted = await self.repo.unban(guild_id, user_id)
        self.invalidate(guild_id)
        if lifted:
            self.emit(modlog.unban(guild_id, user_id, actor_id=actor_id))
        return lifted

    # ------------------------------------------------------------------ policy changes

    async def update_policy(
        self, guild_id: int, actor_id: int, what: str | Text, **changes: Any
    ) -> GuildPolicy:
        """Apply ``changes`` to the server's policy, store it and log before/after to the mod log."""
        before = await self.repo.get_policy(guild_id)
        after = before.changed(**changes)
        validate_policy(after)
        await self.repo.save_policy(after, self.clock())
        self.invalidate(guild_id)
        old = {k: getattr(before, k) for k in changes}
        new = {k: getattr(after, k) for k in changes}
        if old != new:
            # Moving or switching off the mod log is announced in the old channel too.
            moved = before.modlog_channel_id if before.modlog_channel_id != after.modlog_channel_id else None
            self.emit(
                modlog.policy_change(
                    guild_id,
                    actor_id=actor_id,
                    what=what,
                    before=describe_values(old, self.settings),
                    after=describe_values(new, self.settings),
                    also_to=(moved,) if moved else (),
                )
            )
        return after

    async def set_role_limit(
        self, guild_id: int, actor_id: int, role_id: int, *, daily: int | None, hourly: int | None
    ) -> RoleLimit:
        for value in (daily, hourly):
            check_limit(value)
        before = {r.role_id: r for r in await self.repo.role_limits(guild_id)}.get(role_id)
        limit = RoleLimit(guild_id, role_id, daily, hourly)
        await self.repo.set_role_limit(limit, self.clock())
        self.invalidate(guild_id)
        self.emit(
            modlog.policy_change(
                guild_id,
                actor_id=actor_id,
                what=msg("role limit for {role}", role=f"<@&{role_id}>"),
                before=describe_role_limit(before, self.settings),
                after=describe_role_limit(limit, self.settings),
            )
        )
        return limit

    async def clear_role_limit(self, guild_id: int, actor_id: int, role_id: int) -> bool:
        before = {r.role_id: r for r in await self.repo.role_limits(guild_id)}.get(role_id)
        cleared = await self.repo.clear_role_limit(guild_id, role_id)
        self.invalidate(guild_id)
        if cleared:
            self.emit(
                modlog.policy_change(
                    guild_id,
                    actor_id=actor_id,
                    what=msg("role limit for {role}", role=f"<@&{role_id}>"),
                    before=describe_role_limit(before, self.settings),
                    after=msg("none (server limits apply)"),
                )
            )
        return cleared

    async def add_block(
        self, guild_id: int, actor_id: int, kind: str, pattern: str, scope: BlockScope = "all"
    ) -> str:
        """Validate and add a blocklist entry; returns the stored pattern. Raises InvalidPattern."""
        if kind == "regex":
            await self._in_filter_thread(compile_regex, pattern)  # probing takes up to a second
            stored = pattern
        elif kind == "word":
            stored = normalize_word(pattern)
        else:
            raise InvalidPattern("The kind is `word` or `regex`.")
        if len(await self.repo.blocklist(guild_id)) >= MAX_BLOCKLIST:
            raise InvalidPattern(
                "The blocklist is full ({max} entries); remove some first.", max=MAX_BLOCKLIST
            )
        added = await self.repo.add_block(guild_id, kind, stored, scope, actor_id, self.clock())  # type: ignore[arg-type]
        self.invalidate(guild_id)
        if not added:
            raise ValidationError("`{pattern}` is already on the blocklist.", pattern=stored)
        self.emit(
            modlog.policy_change(
                guild_id,
                actor_id=actor_id,
                what=msg("blocklist"),
                before="—",
                after=(
                    msg("added {kind} `{pattern}` (NSFW term list)", kind=kind, pattern=stored)
                    if scope == "sfw"
                    else msg("added {kind} `{pattern}`", kind=kind, pattern=stored)
                ),
            )
        )
        return stored

    async def remove_block(self, guild_id: int, actor_id: int, pattern: str) -> bool:
        removed = await self.repo.remove_block(guild_id, pattern)
        if not removed:
            try:
                removed = await self.repo.remove_block(guild_id, normalize_word(pattern))
            except InvalidPattern:
                removed = 0
        self.invalidate(guild_id)
        if removed:
            self.emit(
                modlog.policy_change(
                    guild_id,
                    actor_id=actor_id,
                    what=msg("blocklist"),
                    before=f"`{pattern}`",
                    after=msg("removed"),
                )
            )
        return bool(removed)

    # ------------------------------------------------------------------ reports and purge

    async def report(
        self, guild_id: int | None, *, job_id: int, reporter_id: int, reported_id: int
    ) -> Report | None:
        """One report per member per result: ``None`` when ``reporter_id`` already reported this job."""
        return await self.repo.add_report(guild_id, job_id, reporter_id, reported_id, self.clock())

    async def result_messages(self, guild_id: int, user_id: int) -> list[PostedResult]:
        return await self.repo.result_messages(guild_id, user_id)


# ------------------------------------------------------------------ validation and description
#
# What the policy looks like to people (``/palette settings``, the mod log's before/after): messages as
# data (:mod:`bot.i18n`), put into the server's words by the Discord layer.


def check_limit(value: int | None) -> None:
    if value is not None and not 0 <= value <= MAX_LIMIT:
        raise ValidationError("Limits are between 0 (unlimited) and {max}.", max=MAX_LIMIT)


def validate_policy(p: GuildPolicy) -> None:
    for value in (p.daily_limit, p.hourly_limit, p.daily_pool, p.max_images):
        check_limit(value)
    if p.max_resolution is not None and p.max_resolution not in RESOLUTIONS:
        raise ValidationError("Resolutions are {choices}.", choices=", ".join(RESOLUTIONS))
    for key in (*p.allowed_models, *([p.default_model] if p.default_model else [])):
        if get_model(key) is None:
            raise ValidationError("`{key}` is not a Palette model.", key=key)
    if p.default_model and p.allowed_models and p.default_model not in p.allowed_models:
        raise ValidationError(
            "The default model `{model}` must be one of the allowed models.", model=p.default_model
        )
    if p.autoban_hits < 0 or p.autoban_window <= 0 or p.autoban_duration <= 0:
        raise ValidationError("Auto-ban needs a count of 0 (off) or more and positive durations.")
    if p.locale is not None and p.locale not in shipped_locales():
        raise ValidationError(
            "`{locale}` is not a language Palette speaks. Languages: {choices}.",
            locale=p.locale,
            choices=", ".join(shipped_locales()),
        )


Shown = Text | str | Duration


def describe_channels(policy: GuildPolicy) -> Shown:
    """Where Palette may be used: an allow-list, or every channel but the switched-off ones."""
    if policy.allowed_channels:
        return describe_value("allowed_channels", policy.allowed_channels)
    if policy.denied_channels:
        return msg(
            "all channels except {channels}",
            channels=describe_value("denied_channels", policy.denied_channels),
        )
    return msg("all channels")


#: Per-user limit fields and the operator's setting that is their default and ceiling.
CEILINGS = {"daily_limit": "user_daily_limit", "hourly_limit": "user_hourly_limit"}


def ceiling_for(key: str, settings: Settings) -> int:
    """The operator's ceiling for a per-user limit field (``0`` = unlimited, no ceiling)."""
    return int(getattr(settings, CEILINGS[key]))


def _count(value: int) -> Shown:
    return msg("unlimited") if value == 0 else str(value)


def describe_limit(value: int | None, ceiling: int) -> Shown:
    """A server's or role's per-user limit as it applies under the operator's ``ceiling``."""
    if value is None:
        return msg("bot default ({ceiling})", ceiling=_count(ceiling))
    if exceeds_ceiling(ceiling, value):
        return msg("{ceiling} ({asked} asked; the bot's limit)", ceiling=str(ceiling), asked=_count(value))
    return _count(value)


#: The per-user limit fields as ``capped_note`` names them.
SHORT_LABELS = {"daily_limit": N_("daily"), "hourly_limit": N_("hourly")}


def capped_note(settings: Settings, **asked: int | None) -> Text | None:
    """What an admin asked for above the operator's ceilings (``daily_limit=...``), or None."""
    capped = [
        msg(
            "{label} {asked} → {ceiling}",
            label=msg(SHORT_LABELS[key]),
            asked=_count(value),
            ceiling=str(ceiling_for(key, settings)),
        )
        for key, value in asked.items()
        if value is not None and exceeds_ceiling(ceiling_for(key, settings), value)
    ]
    if not capped:
        return None
    return msg(
        "⚠️ Capped at the bot's limits (a server can lower them, not raise them): {items}.",
        items=Joined(tuple(capped), ", "),
    )


def describe_value(key: str, value: Any, settings: Settings | None = None) -> Shown:
    if key in CEILINGS:
        if settings is not None:
            return describe_limit(value, ceiling_for(key, settings))
        return msg("server default") if value is None else _count(value)
    if key in ("daily_pool", "max_images"):
        return msg("none") if value in (None, 0) else str(value)
    if key == "max_resolution":
        return value or msg("any")
    if key == "allowed_channels":
        return ", ".join(f"<#{c}>" for c in value) if value else msg("all channels")
    if key == "denied_channels":
        return ", ".join(f"<#{c}>" for c in value) if value else msg("none")
    if key == "allowed_models":
        return ", ".join(f"`{m}`" for m in value) if value else msg("all models")
    if key in ("mod_role_id",):
        return f"<@&{value}>" if value else msg("none")
    if key == "modlog_channel_id":
        return f"<#{value}>" if value else msg("none")
    if key in ("autoban_window", "autoban_duration"):
        return bans.describe_duration(value)
    if key == "autoban_hits":
        return msg("off") if value == 0 else str(value)
    if key == "nsfw_mode":
        return msg("relaxed") if value == "relaxed" else msg("same")
    if key == "locale":
        return f"`{value}`" if value else msg("the server's language")
    if isinstance(value, bool):
        return msg("on") if value else msg("off")
    return msg("none") if value is None else str(value)


LABELS = {
    "daily_limit": N_("daily per user"),
    "hourly_limit": N_("hourly per user"),
    "daily_pool": N_("server daily pool"),
    "max_resolution": N_("max resolution"),
    "max_images": N_("max images per request"),
    "allowed_channels": N_("channels"),
    "denied_channels": N_("switched-off channels"),
    "allowed_models": N_("allowed models"),
    "default_model": N_("default model"),
    "mod_role_id": N_("moderator role"),
    "modlog_channel_id": N_("mod-log channel"),
    "nsfw_mode": N_("NSFW channels"),
    "builtin_blocklist": N_("built-in blocklist"),
    "autoban_hits": N_("auto-ban after"),
    "autoban_window": N_("auto-ban window"),
    "autoban_duration": N_("auto-ban duration"),
    "locale": N_("language"),
}


def describe_values(values: dict[str, Any], settings: Settings | None = None) -> Joined:
    return Joined(
        tuple(
            msg(
                "{label}: {value}",
                label=msg(LABELS[k]) if k in LABELS else k,
                value=describe_value(k, v, settings),
            )
            for k, v in values.items()
        ),
        "\n",
    )


def describe_role_limit(limit: RoleLimit | None, settings: Settings | None = None) -> Shown:
    if limit is None:
        return msg("none")
    daily, hourly = limit.daily_limit, limit.hourly_limit
    if settings is None:
        return msg(
            "daily: {daily}, hourly: {hourly}",
            daily=describe_value("daily_limit", daily),
            hourly=describe_value("hourly_limit", hourly),
        )

    # A role without a value for a field leaves that field to the server (no ceiling note).
    def field(key: str, value: int | None) -> Shown:
        return msg("server's") if value is None else describe_value(key, value, settings)

    return msg(
        "daily: {daily}, hourly: {hourly}",
        daily=field("daily_limit", daily),
        hourly=field("hourly_limit", hourly),
    )


def summarize(
    policy: GuildPolicy,
    role_limits: Sequence[RoleLimit],
    blocklist_size: int,
    settings: Settings | None = None,
) -> list[tuple[str, Shown | Joined]]:
    """The whole policy as (name, value) pairs for ``/palette settings``: names are message ids
    (``N_``), values messages or plain text. With ``settings`` the per-user limits are the effective
    ones (capped by the operator's ceilings)."""
    p = policy
    rows: list[tuple[str, Shown | Joined]] = [
        (
            N_("Limits per user"),
            msg(
                "daily: {daily} · hourly: {hourly}",
                daily=describe_value("daily_limit", p.daily_limit, settings),
                hourly=describe_value("hourly_limit", p.hourly_limit, settings),
            ),
        ),
        (N_("Server daily pool"), describe_value("daily_pool", p.daily_pool)),
        (N_("Max resolution"), describe_value("max_resolution", p.max_resolution)),
        (N_("Max images per request"), describe_value("max_images", p.max_images)),
        (
            N_("Role overrides"),
            Joined(
                tuple(
                    msg("{role}: {limits}", role=f"<@&{r.role_id}>", limits=describe_role_limit(r, settings))
                    for r in role_limits
                ),
                "\n",
            )
            if role_limits
            else msg("none"),
        ),
        (N_("Channels"), describe_channels(p)),
        (N_("Models"), describe_value("allowed_models", p.allowed_models)),
        (N_("Default model"), p.default_model or msg("Palette's default")),
        (N_("Moderator role"), describe_value("mod_role_id", p.mod_role_id)),
        (N_("Mod log"), describe_value("modlog_channel_id", p.modlog_channel_id)),
        (
            N_("NSFW channels"),
            msg("relaxed (no NSFW term list, normal provider safety)")
            if p.nsfw_mode == "relaxed"
            else msg("same rules as everywhere"),
        ),
        (
            N_("Blocklist"),
            nmsg("{n} entry; built-in list on", "{n} entries; built-in list on", blocklist_size)
            if p.builtin_blocklist
            else nmsg("{n} entry; built-in list off", "{n} entries; built-in list off", blocklist_size),
        ),
        (
            N_("Auto-ban"),
            msg("off")
            if p.autoban_hits == 0
            else nmsg(
                "{n} blocked prompt within {window} → banned for {duration}",
                "{n} blocked prompts within {window} → banned for {duration}",
                p.autoban_hits,
                window=bans.describe_duration(p.autoban_window),
                duration=bans.describe_duration(p.autoban_duration),
            ),
        ),
        (N_("Language"), describe_value("locale", p.locale)),
    ]
    return rows
