"""One generation, from a user's request to images: validation, routing, concurrency caps, failover.

The same pipeline serves the Discord bot and the command line. Everything that can be checked without
the network is checked in :meth:`Generator.plan` (cheap, synchronous) and :func:`load_references`
(image decoding, in a thread) before any provider is called, so bad input costs nothing.

Concurrency caps have one owner: whoever hands out provider slots (:class:`SlotHolder`). In the bot that
is the queue in the database (a claimed job holds a slot of its provider, counted over every worker; see
:class:`bot.jobs.worker.QueueSlots`); on the command line it is :class:`LocalSlots`, a semaphore per
provider. Circuit breakers likewise come from a :class:`~bot.storage.queue.HealthRepository`: shared
through the database in the bot, :class:`~bot.health.LocalHealth` on the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bot.catalog import ModelSpec, Route, available_models, get_model
from bot.config import Settings
from bot.errors import (
    AuthError,
    InvalidPrompt,
    NoRouteAvailable,
    OutOfCredits,
    ProviderBusy,
    ProviderError,
    ProviderUnavailable,
    UnknownModel,
    UnsupportedOption,
)
from bot.health import LocalHealth
from bot.images import inspect_image_async, normalize_reference_async
from bot.logs import log_context
from bot.providers.base import (
    GeneratedImage,
    ImageProvider,
    ProviderRequest,
    ProviderResult,
    Reference,
    TaskProvider,
)
from bot.storage.queue import HealthRepository, ProviderHealthRow

log = logging.getLogger(__name__)

SEED_MAX = 2**31 - 1
# Routes whose docs name no per-image byte limit still get a bound when we re-encode for them.
UNLIMITED_REFERENCE_BYTES = 20 * 1024 * 1024

#: Called when an asynchronous provider accepted a task, so the job can be resumed from its id.
TaskHook = Callable[[str, str, str], Awaitable[None]]  # (provider, provider_model, task_id)

#: Failing over to a provider whose slots are all taken: wait this long for one, then skip that route.
#: Long enough to ride out a burst, short enough that a job whose first route failed is not stuck behind
#: a provider that is saturated for minutes (it then fails with ProviderBusy and is refunded).
FAILOVER_SLOT_WAIT = 20.0


class SlotHolder(Protocol):
    """The provider slots one generation holds. A slot is one call in flight at that provider."""

    def held(self, provider: str) -> int:
        """How many slots are held at ``provider``."""
        ...

    async def acquire(self, provider: str, *, timeout: float | None) -> bool:
        """One more slot at ``provider``: waiting up to ``timeout`` seconds (0: only if one is free now;
        None: as long as it takes). False when none came."""
        ...

    async def release(self, provider: str) -> None:
        """Give back every slot held at ``provider``."""
        ...


class LocalSlots:
    """Provider slots of one process: a semaphore per provider (``*_CONCURRENCY``). For the command line
    and tests; the bot's slots are rows in the database (counted over every worker)."""

    def __init__(self, capacity: dict[str, int]) -> None:
        self.capacity = dict(capacity)
        self._semaphores = {name: asyncio.Semaphore(max(1, n)) for name, n in capacity.items()}

    def holder(self) -> LocalSlotHolder:
        return LocalSlotHolder(self)

    def semaphore(self, provider: str) -> asyncio.Semaphore:
        if provider not in self._semaphores:
            self._semaphores[provider] = asyncio.Semaphore(self.capacity.setdefault(provider, 1))
        return self._semaphores[provider]


class LocalSlotHolder:
    """The slots one generation holds from :class:`LocalSlots`."""

    def __init__(self, pool: LocalSlots) -> None:
        self._pool = pool
        self._held: dict[str, int] = {}

    def held(self, provider: str) -> int:
        return self._held.get(provider, 0)

    async def acquire(self, provider: str, *, timeout: float | None) -> bool:
        semaphore = self._pool.semaphore(provider)
        if timeout is not None and timeout <= 0:
            if semaphore.locked():
                return False
            await semaphore.acquire()  # free: returns at once
        elif timeout is None:
            await semaphore.acquire()
        else:
            try:
                await asyncio.wait_for(semaphore.acquire(), timeout)
            except TimeoutError:
                return False
        self._held[provider] = self._held.get(provider, 0) + 1
        return True

    async def release(self, provider: str) -> None:
        semaphore = self._pool.semaphore(provider)
        for _ in range(self._held.pop(provider, 0)):
            semaphore.release()

    async def release_all(self) -> None:
        for provider in list(self._held):
            await self.release(provider)


@dataclass(frozen=True)
class GenerationSpec:
    """What a user asked for, as typed (unvalidated)."""

    model: str
    prompt: str
    aspect_ratio: str | None = None
    resolution: str | None = None
    count: int = 1
    seed: int | None = None
    references: tuple[Reference, ...] = ()
    strict_safety: bool = False


@dataclass(frozen=True)
class Plan:
    """A validated request and the routes that can serve it, best first."""

    model: ModelSpec
    prompt: str
    aspect_ratio: str
    resolution: str
    count: int
    seed: int | None
    references: tuple[Reference, ...]
    routes: tuple[Route, ...]
    strict_safety: bool = False


@dataclass
class GenerationOutcome:
    images: list[GeneratedImage]
    provider: str
    provider_model: str
    route: Route
    latency_s: float
    task_ids: list[str] = field(default_factory=list)
    cost: float | None = None
    cost_unit: str | None = None
    # Calls that failed while others succeeded (partial delivery); their images are refunded.
    failed: int = 0
    # Routes tried before this one, with the error that made us move on.
    failovers: list[tuple[str, str]] = field(default_factory=list)


def is_provider_fault(error: ProviderError) -> bool:
    """Whether another provider might succeed where this one failed."""
    return error.retryable or isinstance(error, AuthError | OutOfCredits)


def clean_prompt(prompt: str, max_length: int) -> str:
    """Normalise a prompt: NFC, control characters and lone surrogates dropped (newlines kept), trimmed."""
    text = unicodedata.normalize("NFC", prompt)
    # Lone surrogates (JSON can carry them) cannot be encoded as UTF-8 for a provider or SQLite: dropped too.
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs")).strip()
    # Only zero-width, bidi or combining characters is as empty as nothing at all.
    if not any(unicodedata.category(ch)[0] in "LNPS" for ch in text):
        raise InvalidPrompt("The prompt is empty. Describe the image you want.")
    if len(text) > max_length:
        raise InvalidPrompt(
            "The prompt is {length} characters long; the limit is {limit}.",
            length=len(text),
            limit=max_length,
        )
    return text


def _choices(values: Sequence[str]) -> str:
    return ", ".join(values)


def _shown(value: str, limit: int = 40) -> str:
    """A value the user typed, as an error message may quote it: no control, format (bidi overrides,
    zero-width) or surrogate characters, no backticks, and short (Discord messages are capped)."""
    text = "".join(ch for ch in value if ch != "`" and unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Generator:
    """Runs generations through the enabled providers, within their concurrency caps, with failover.

    ``slots`` caps concurrency when a caller runs a generation without slots of its own (the command
    line); ``health`` holds the circuit breakers (shared through the database in the bot).
    """

    def __init__(
        self,
        settings: Settings,
        providers: dict[str, ImageProvider],
        *,
        health: HealthRepository | None = None,
        slots: LocalSlots | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.rank = settings.provider_rank()
        self.health: HealthRepository = health if health is not None else LocalHealth()
        self.slots = slots if slots is not None else LocalSlots(self.capacity())
        self.failover_slot_wait = FAILOVER_SLOT_WAIT

    def capacity(self) -> dict[str, int]:
        """``*_CONCURRENCY`` of each enabled provider: calls in flight there, over the whole deployment."""
        return {name: self.settings.provider(name).concurrency for name in self.providers}  # type: ignore[arg-type]

    # ------------------------------------------------------------------ health

    async def _allow(self, provider: str) -> bool:
        settings = self.settings
        return await self.health.allow(
            provider,
            time.time(),
            cooldown=settings.breaker_cooldown,
            # A probe's claim outlives a worker that dies while probing, but not by much.
            probe_timeout=settings.http_read_timeout + settings.http_connect_timeout,
        )

    async def _record(self, provider: str, ok: bool, latency_s: float) -> None:
        try:
            await self.health.record(
                provider, ok, latency_s, time.time(), failure_threshold=self.settings.breaker_failures
            )
        except Exception:  # the figures must not fail a generation that worked
            log.warning("could not record %s's health", provider, exc_info=True)

    async def _release_probe(self, provider: str) -> None:
        try:
            await self.health.release_probe(provider)
        except Exception:
            log.warning("could not release %s's probe", provider, exc_info=True)

    async def health_snapshot(self) -> list[ProviderHealthRow]:
        """Every enabled provider's breaker and recent figures (over the deployment when shared)."""
        rows = {
            row.provider: row
            for row in await self.health.snapshot(time.time(), cooldown=self.settings.breaker_cooldown)
        }
        return [
            rows.get(name) or ProviderHealthRow(name, "closed", 0, 0, 0.0, None)
            for name in sorted(self.providers)
        ]

    @property
    def enabled(self) -> set[str]:
        return set(self.providers)

    def models(self) -> list[ModelSpec]:
        return available_models(self.enabled)

    # ------------------------------------------------------------------ validation

    def plan(self, spec: GenerationSpec) -> Plan:
        """Validate a request against the catalog and the enabled providers. No network, no decoding."""
        model = get_model(spec.model)
        if model is None:
            available = _choices([m.key for m in self.models()])
            if not available:
                raise UnknownModel("Unknown model `{model}`. Available: none.", model=_shown(spec.model))
            raise UnknownModel(
                "Unknown model `{model}`. Available: {available}.",
                model=_shown(spec.model),
                available=available,
            )
        routes = model.routes_for(self.enabled, self.rank)
        if not routes:
            raise NoRouteAvailable("{model} is not available on this bot right now.", model=model.label)
        prompt = clean_prompt(spec.prompt, self.settings.max_prompt_length)
        ratio = spec.aspect_ratio or model.default_aspect_ratio
        if ratio not in model.aspect_ratios:
            raise UnsupportedOption(
                "{model} does not support aspect ratio {ratio}. Choose one of: {choices}.",
                model=model.label,
                ratio=_shown(ratio),
                choices=_choices(model.aspect_ratios),
            )
        resolution = (spec.resolution or model.default_resolution).upper()
        if resolution not in model.resolutions:
            raise UnsupportedOption(
                "{model} does not support {resolution}. Choose one of: {choices}.",
                model=model.label,
                resolution=_shown(resolution),
                choices=_choices(model.resolutions),
            )
        if not model.min_count <= spec.count <= model.max_count:
            raise UnsupportedOption(
                "{model} makes {min} to {max} images per request.",
                model=model.label,
                min=model.min_count,
                max=model.max_count,
            )
        if spec.seed is not None:
            if not model.supports_seed:
                raise UnsupportedOption("{model} does not support seeds.", model=model.label)
            if not 0 <= spec.seed <= SEED_MAX:
                raise UnsupportedOption("The seed must be between 0 and {max}.", max=SEED_MAX)
        n_refs = len(spec.references)
        if n_refs and not model.supports_edit:
            raise UnsupportedOption("{model} cannot edit images.", model=model.label)
        if n_refs > model.max_references:
            raise UnsupportedOption(
                "{model} takes at most {max} reference images.", model=model.label, max=model.max_references
            )

        def fits(route: Route) -> bool:
            return (
                ratio in route.aspect_ratios
                and resolution in route.resolutions
                and n_refs <= route.max_references
                and (spec.seed is None or route.supports_seed)
            )

        usable = tuple(r for r in routes if fits(r))
        if not usable:
            options = dict(model=model.label, ratio=ratio, resolution=resolution, references=n_refs)
            if spec.seed is not None:
                raise NoRouteAvailable(
                    "{model} with these options ({ratio}, {resolution}, seed, {references} reference(s)) is "
                    "not available with the providers configured on this bot. Try other options.",
                    **options,
                )
            raise NoRouteAvailable(
                "{model} with these options ({ratio}, {resolution}, {references} reference(s)) is not "
                "available with the providers configured on this bot. Try other options.",
                **options,
            )
        return Plan(
            model,
            prompt,
            ratio,
            resolution,
            spec.count,
            spec.seed,
            spec.references,
            usable,
            spec.strict_safety,
        )

    # ------------------------------------------------------------------ running

    async def run(
        self, plan: Plan, *, on_task: TaskHook | None = None, slots: SlotHolder | None = None
    ) -> GenerationOutcome:
        """Generate, handing the job to the next route when one fails for provider reasons.

        Routes whose circuit breaker is open are skipped. Faults that another provider could avoid
        (unavailable, busy, rate limited, timed out, out of credits, bad credentials) move on to the
        next route; anything about the request itself (refused content, invalid request) does not.

        ``slots``: the provider slots the caller holds (a claimed job holds one at its queue provider).
        Every route needs one at its provider: failing over acquires one there, waiting up to
        :attr:`failover_slot_wait` (then that route is skipped as busy). Slots at a provider are given
        back when its route failed; the caller gives back the ones of the route that worked. Without
        ``slots``, the generator's own :class:`LocalSlots` are used and all given back at the end.
        """
        if slots is None:
            local = self.slots.holder()
            try:
                return await self.run(plan, on_task=on_task, slots=local)
            finally:
                await local.release_all()
        failovers: list[tuple[str, str]] = []
        last_error: ProviderError | None = None
        for index, route in enumerate(plan.routes):
            provider = route.provider
            log_context(provider=provider)  # this task's log lines name the provider it talks to now
            if not await self._allow(provider):
                failovers.append((provider, "circuit open"))
                continue
            if not slots.held(provider):
                # The first route of a caller holding nothing waits its turn; failing over waits a while.
                first = index == 0 and not any(slots.held(r.provider) for r in plan.routes)
                holding = [r.provider for r in plan.routes if slots.held(r.provider)]
                got = await slots.acquire(provider, timeout=None if first else self.failover_slot_wait)
                if not got:
                    await self._release_probe(provider)
                    log.warning("route %s is busy (no free slot); trying the next route", provider)
                    failovers.append((provider, "busy"))
                    last_error = ProviderBusy(provider=provider)
                    continue
                for other in holding:  # e.g. the slot a job was queued for, when its route is skipped
                    if other != provider:
                        await slots.release(other)
            started = time.monotonic()
            try:
                outcome = await self.run_route(plan, route, on_task=on_task, slots=slots)
            except ProviderError as exc:
                if not is_provider_fault(exc):
                    await self._release_probe(provider)
                    raise
                await self._record(provider, False, time.monotonic() - started)
                await slots.release(provider)  # done with this provider: its slot is someone else's now
                log.warning("route %s failed (%s); trying the next route", provider, type(exc).__name__)
                failovers.append((provider, type(exc).__name__))
                last_error = exc
                continue
            except BaseException:
                await self._release_probe(provider)
                raise
            await self._record(provider, True, outcome.latency_s)
            outcome.failovers = failovers
            return outcome
        if last_error is not None:
            raise last_error
        raise ProviderUnavailable(
            "{model} is temporarily unavailable (its providers are failing); try again later.",
            model=plan.model.label,
        )

    async def run_route(
        self,
        plan: Plan,
        route: Route,
        *,
        on_task: TaskHook | None = None,
        slots: SlotHolder | None = None,
    ) -> GenerationOutcome:
        """One route's calls. With ``slots`` (holding a slot at the route's provider), the extra calls of a
        split request take more slots there if they are free, else run one after another in the ones
        held; without, the route takes its slots from :class:`LocalSlots`."""
        if slots is None:
            local = self.slots.holder()
            try:
                await local.acquire(route.provider, timeout=None)
                return await self.run_route(plan, route, on_task=on_task, slots=local)
            finally:
                await local.release_all()
        provider = self.providers[route.provider]
        references = await prepare_references(route, plan.references)
        base = ProviderRequest(
            model_id=route.model_for(bool(references)),
            prompt=plan.prompt,
            resolution=plan.resolution,
            aspect_ratio=plan.aspect_ratio,
            count=plan.count,
            seed=plan.seed,
            references=references,
            strict_safety=plan.strict_safety,
            params=dict(route.params),
        )
        batches = split_count(plan.count, route.max_per_call)
        lanes = max(1, slots.held(route.provider))
        while lanes < len(batches) and await slots.acquire(route.provider, timeout=0):
            lanes += 1
        lane = asyncio.Semaphore(lanes)

        async def call(n: int) -> ProviderResult:
            async with lane:
                return await self._call(provider, replace(base, count=n), on_task)

        started = time.monotonic()
        results = await asyncio.gather(*(call(n) for n in batches), return_exceptions=True)
        images: list[GeneratedImage] = []
        errors: list[BaseException] = []
        task_ids: list[str] = []
        cost = 0.0
        cost_unit = None
        provider_model = base.model_id
        for result in results:
            if isinstance(result, BaseException):
                errors.append(result)
                continue
            images.extend(result.images)
            provider_model = result.provider_model
            if result.task_id:
                task_ids.append(result.task_id)
            if result.cost is not None:
                cost += result.cost
                cost_unit = result.cost_unit
        if not images:
            raise errors[0] if errors else ProviderError(provider=route.provider)
        for err in errors:
            # Some calls succeeded: deliver those, refund the rest, and keep the cause in the log.
            log.warning("%s: %d of %d calls failed: %r", route.provider, len(errors), len(batches), err)
        return GenerationOutcome(
            images=images[: plan.count],
            provider=route.provider,
            provider_model=provider_model,
            route=route,
            latency_s=time.monotonic() - started,
            task_ids=task_ids,
            cost=cost if cost_unit else None,
            cost_unit=cost_unit,
            failed=max(0, plan.count - len(images)),
        )

    async def _call(
        self, provider: ImageProvider, request: ProviderRequest, on_task: TaskHook | None
    ) -> ProviderResult:
        """One provider call (the caller holds its slot)."""
        if isinstance(provider, TaskProvider):
            started = time.monotonic()
            task_id = await provider.submit(request)
            if on_task is not None:
                await on_task(provider.name, request.model_id, task_id)
            return await provider.wait(task_id, request, started=started)
        return await provider.generate(request)

    async def resume(
        self, provider_name: str, task_id: str, plan: Plan, route: Route, *, slots: SlotHolder | None = None
    ) -> GenerationOutcome:
        """Finish a task submitted before a restart (or by a worker that died): poll it, never submit
        again. The task is in flight at ``provider_name``: it needs a slot there (waited for)."""
        provider = self.providers[provider_name]
        if not isinstance(provider, TaskProvider):
            raise ValueError(f"{provider_name} has no tasks to resume")
        if slots is None:
            local = self.slots.holder()
            try:
                return await self.resume(provider_name, task_id, plan, route, slots=local)
            finally:
                await local.release_all()
        if not slots.held(provider_name):
            held = [name for name in self.providers if slots.held(name)]
            await slots.acquire(provider_name, timeout=None)
            for other in held:
                await slots.release(other)
        request = ProviderRequest(
            model_id=route.model_for(bool(plan.references)),
            prompt=plan.prompt,
            resolution=plan.resolution,
            aspect_ratio=plan.aspect_ratio,
            count=plan.count,
            seed=plan.seed,
        )
        result = await provider.wait(task_id, request)
        return GenerationOutcome(
            images=result.images[: plan.count],
            provider=provider_name,
            provider_model=result.provider_model,
            route=route,
            latency_s=result.latency_s,
            task_ids=[task_id],
            cost=result.cost,
            cost_unit=result.cost_unit,
            failed=max(0, plan.count - len(result.images)),
        )

    async def aclose(self) -> None:
        close_health = getattr(self.health, "aclose", None)
        if close_health is not None:  # figures it keeps in memory (SqlHealthRepository)
            with contextlib.suppress(Exception):
                await close_health()
        seen = set()
        for provider in self.providers.values():
            await provider.aclose()
            seen.add(id(provider.transport.downloader))
        for provider in self.providers.values():
            downloader = provider.transport.downloader
            if id(downloader) in seen:
                seen.discard(id(downloader))
                await downloader.aclose()


def split_count(count: int, per_call: int) -> list[int]:
    """[4] -> calls of at most ``per_call`` images: split_count(4, 1) == [1, 1, 1, 1]."""
    per_call = max(1, per_call)
    full, rest = divmod(count, per_call)
    return [per_call] * full + ([rest] if rest else [])


async def load_references(
    blobs: Sequence[tuple[bytes, str | None]], *, max_bytes: int, max_pixels: int
) -> tuple[Reference, ...]:
    """Validate user-supplied images (real type, full decode, size and pixel caps) in a thread.

    ``blobs`` holds (bytes, public URL of exactly these bytes or None).
    """
    infos = await asyncio.gather(
        *(inspect_image_async(data, max_bytes=max_bytes, max_pixels=max_pixels) for data, _ in blobs)
    )
    return tuple(
        Reference(mime_type=info.mime_type, data=data, url=url)
        for (data, url), info in zip(blobs, infos, strict=True)
    )


async def prepare_references(route: Route, references: Sequence[Reference]) -> tuple[Reference, ...]:
    """Fit references to a route's limits (type, bytes): converted or downscaled off the event loop.

    A reference whose bytes change loses its URL (the URL no longer describes these bytes).
    """

    async def fit(ref: Reference) -> Reference:
        if ref.data is None:
            return ref
        limit = route.max_reference_bytes or UNLIMITED_REFERENCE_BYTES
        if ref.mime_type in route.reference_mime and len(ref.data) <= limit:
            return ref
        encoded = await normalize_reference_async(
            ref.data, max_bytes=limit, allowed_mime=route.reference_mime
        )
        if encoded.data == ref.data:
            return ref
        return Reference(mime_type=encoded.mime_type, data=encoded.data, url=None)

    return tuple(await asyncio.gather(*(fit(r) for r in references)))
