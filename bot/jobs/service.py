"""Jobs end to end: accept (validate, reserve, persist, enqueue), run, deliver, settle the ledger.

The service knows nothing about Discord: it talks to a :class:`JobPresenter` (the Discord layer
implements it) to show progress and post results. Settling is idempotent (``finish_job`` only acts on
unfinished jobs), so a job is charged for exactly the images delivered and refunded for the rest, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.catalog import get_model
from bot.errors import PaletteError, ProviderError
from bot.generation import GenerationOutcome, GenerationSpec, Generator, Plan
from bot.jobs.dispatcher import Dispatcher, QueuedJob
from bot.limits import LimitPolicy
from bot.logs import redact
from bot.providers.base import Reference
from bot.storage import Database, JobRecord, NewJob, NewReference, NewResult

log = logging.getLogger(__name__)

DELIVERY_CONCURRENCY = 8


@dataclass(frozen=True)
class JobOrigin:
    """Where a job came from and where its result goes (plain ids, no Discord objects)."""

    user_id: int
    channel_id: int | None
    guild_id: int | None = None
    interaction_token: str | None = None
    interaction_created_at: float | None = None
    upload_limit: int | None = None
    role_ids: tuple[int, ...] = ()
    nsfw_channel: bool = False
    status_message_id: int | None = None


@dataclass(frozen=True)
class DeliveredImage:
    attachment_id: int | None
    filename: str
    sha256: str
    width: int
    height: int
    mime_type: str
    size_bytes: int


@dataclass(frozen=True)
class Delivery:
    message_id: int | None
    channel_id: int | None
    images: list[DeliveredImage] = field(default_factory=list)


class JobPresenter(Protocol):
    """How a job's life is shown to its requester."""

    async def started(self, job: JobRecord) -> None: ...

    async def deliver(self, job: JobRecord, outcome: GenerationOutcome) -> Delivery: ...

    async def failed(self, job: JobRecord, error: PaletteError) -> None: ...


class JobExpired(PaletteError):
    def __init__(self) -> None:
        super().__init__("Palette could not finish this request in time (the bot was restarting).")


class DeliveryError(PaletteError):
    """The images were generated but could not be posted."""


class JobService:
    def __init__(
        self,
        db: Database,
        generator: Generator,
        policy: LimitPolicy,
        presenter: JobPresenter,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.generator = generator
        self.policy = policy
        self.presenter = presenter
        self.clock = clock
        capacity = {name: generator.settings.provider(name).concurrency for name in generator.providers}  # type: ignore[arg-type]
        self.dispatcher = Dispatcher(self._run, capacity)
        # Posting re-encodes and uploads images: bound how many run at once (memory, CPU).
        self._delivery_slots = asyncio.Semaphore(DELIVERY_CONCURRENCY)
        self._background: set[asyncio.Task[None]] = set()
        self.accepting = True

    # ------------------------------------------------------------------ accepting

    def plan(self, spec: GenerationSpec) -> Plan:
        """Validate without touching storage (cheap; safe before acknowledging an interaction)."""
        return self.generator.plan(spec)

    async def submit(
        self,
        spec: GenerationSpec,
        origin: JobOrigin,
        *,
        kind: str = "imagine",
        parent_job_id: int | None = None,
    ) -> JobRecord:
        """Validate, reserve quota atomically, persist, and queue. Raises PaletteError on refusal."""
        plan = self.generator.plan(spec)
        limits = await self.policy.limits_for(origin.user_id, origin.guild_id, origin.role_ids)
        params = {
            "aspect_ratio": plan.aspect_ratio,
            "resolution": plan.resolution,
            "count": plan.count,
            "seed": plan.seed,
            "strict_safety": plan.strict_safety,
            "upload_limit": origin.upload_limit,
        }
        new_job = NewJob(
            user_id=origin.user_id,
            guild_id=origin.guild_id,
            channel_id=origin.channel_id,
            kind=kind,
            model=plan.model.key,
            prompt=plan.prompt,
            params=json.dumps(params),
            count=plan.count,
            interaction_token=origin.interaction_token,
            interaction_created_at=origin.interaction_created_at,
            parent_job_id=parent_job_id,
            status_message_id=origin.status_message_id,
            references=[
                NewReference(position=i, mime_type=r.mime_type, data=r.data, url=r.url)
                for i, r in enumerate(plan.references)
            ],
        )
        job = await self.db.jobs.reserve_job(new_job, limits, self.clock())
        self.dispatcher.enqueue(QueuedJob(job.id, job.user_id, plan.routes[0].provider))
        return job

    def position(self, job_id: int) -> int | None:
        return self.dispatcher.position(job_id)

    # ------------------------------------------------------------------ running

    async def _plan_for(self, job: JobRecord) -> Plan:
        params: dict[str, Any] = json.loads(job.params or "{}")
        refs = await self.db.jobs.get_references(job.id)
        references = tuple(Reference(mime_type=r.mime_type, data=r.data, url=r.url) for r in refs)
        return self.generator.plan(
            GenerationSpec(
                model=job.model,
                prompt=job.prompt,
                aspect_ratio=params.get("aspect_ratio"),
                resolution=params.get("resolution"),
                count=job.count,
                seed=params.get("seed"),
                references=references,
                strict_safety=bool(params.get("strict_safety")),
            )
        )

    async def _run(self, job_id: int, release_slot: Callable[[], None] = lambda: None) -> None:
        job = await self.db.jobs.get_job(job_id)
        if job is None or job.status not in ("queued", "running"):
            return
        if self.clock() - job.created_at > self.generator.settings.job_max_age:
            # Recovered after a long outage: the requester has moved on; refund and say so.
            await self._fail(job, JobExpired())
            return
        await self.db.jobs.mark_running(job.id, self.clock())
        try:
            plan = await self._plan_for(job)
        except PaletteError as exc:
            await self._fail(job, exc)
            return
        # Progress is shown in the background: the provider call does not wait for Discord.
        self._spawn(self._safe(self.presenter.started(job)))

        async def on_task(provider: str, provider_model: str, task_id: str) -> None:
            await self.db.jobs.set_task(job.id, provider, provider_model, task_id)

        try:
            if job.task_id and job.provider:
                # Submitted before a restart: poll the stored task, never pay twice.
                route = next(r for r in plan.routes if r.provider == job.provider)
                outcome = await self.generator.resume(job.provider, job.task_id, plan, route)
            else:
                outcome = await self.generator.run(plan, on_task=on_task)
        except PaletteError as exc:
            await self._fail(job, exc)
            return
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            await self._fail(job, ProviderError("Something went wrong while generating."))
            return
        try:
            async with self._delivery_slots:
                # Hand the provider slot on only once posting can start: finished images waiting to be
                # posted would otherwise pile up in memory while new provider calls start.
                release_slot()
                delivery = await self.presenter.deliver(job, outcome)
        except PaletteError as exc:
            await self._fail(job, exc)
            return
        except Exception:
            log.exception("job %s: delivery failed", job.id)
            await self._fail(job, DeliveryError("The images were made but could not be posted."))
            return
        results = [
            NewResult(
                attachment_id=img.attachment_id,
                filename=img.filename,
                sha256=img.sha256,
                width=img.width,
                height=img.height,
                mime_type=img.mime_type,
                size_bytes=img.size_bytes,
                provider=outcome.provider,
                message_id=delivery.message_id,
                channel_id=delivery.channel_id,
            )
            for img in delivery.images
        ]
        await self.db.jobs.finish_job(
            job.id,
            len(delivery.images),
            status="done",
            result_message_id=delivery.message_id,
            results=results,
            now=self.clock(),
        )

    async def _fail(self, job: JobRecord, error: PaletteError) -> None:
        kind = type(error).__name__
        # Provider texts reach users and the database: never with one of our secrets in them.
        error.message = redact(error.message, self.generator.settings.secrets())
        finished = await self.db.jobs.finish_job(
            job.id, 0, status="failed", error=error.message, error_kind=kind, now=self.clock()
        )
        if finished:
            await self._safe(self.presenter.failed(job, error))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _safe(self, coro: Any) -> None:
        """Progress messages are best effort: a failed edit must not fail the job."""
        try:
            await coro
        except Exception:
            log.warning("presenter call failed", exc_info=True)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Re-queue unfinished jobs from the database, then start dispatching. Returns how many."""
        jobs = await self.db.jobs.unfinished_jobs()
        for job in jobs:
            model = get_model(job.model)
            routes = model.routes_for(self.generator.enabled, self.generator.rank) if model else []
            provider = job.provider or (
                routes[0].provider if routes else next(iter(self.generator.providers), "")
            )
            self.dispatcher.capacity.setdefault(provider, 1)
            self.dispatcher.in_flight.setdefault(provider, 0)
            self.dispatcher.enqueue(QueuedJob(job.id, job.user_id, provider))
        self.dispatcher.start()
        return len(jobs)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, give running jobs ``grace`` seconds, leave the rest for recovery."""
        self.accepting = False
        await self.dispatcher.stop(grace)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """For tests and the benchmark: until nothing is queued or running."""
        deadline = time.monotonic() + timeout
        while self.dispatcher.queued or self.dispatcher.running:
            if time.monotonic() > deadline:
                raise TimeoutError("jobs still running")
            await asyncio.sleep(0.01)
