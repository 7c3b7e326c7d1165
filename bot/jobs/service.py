"""Jobs: accepting them (validate, reserve quota, persist in the queue) and the types the runtime shares.

Accepting is the gateway's side (:class:`JobService`); running, posting and settling is the worker's
(:class:`bot.jobs.worker.Worker`), possibly in another process: the database is the queue between them.
Neither knows about Discord: the worker talks to a :class:`JobPresenter` (the Discord layer implements
it) to show progress and post results. Settling is idempotent (``finish_job`` only acts on unfinished
jobs), so a job is charged for exactly the images delivered and refunded for the rest, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from bot.catalog import get_model
from bot.errors import PaletteError
from bot.generation import GenerationOutcome, GenerationSpec, Generator, Plan
from bot.limits import LimitPolicy
from bot.ops import metrics
from bot.storage import JobRecord, NewJob, NewReference
from bot.storage.errors import QuotaExceeded, QuotaScope
from bot.storage.queue import QueueRepository
from bot.storage.repository import JobRepository

if TYPE_CHECKING:
    from bot.jobs.spool import SpooledImage
    from bot.jobs.worker import Worker
    from bot.tenants import RouteAccess, TenantService

log = logging.getLogger(__name__)


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
    #: The language of the job's public messages (a Discord locale code; None = English).
    locale: str | None = None


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
    """How a job's life is shown to its requester (by the worker that runs it)."""

    async def started(self, job: JobRecord) -> None: ...

    async def deliver(
        self, job: JobRecord, outcome: GenerationOutcome, images: Sequence[SpooledImage]
    ) -> Delivery:
        """Post ``images`` (``outcome`` says who made them; its own image list is empty by then)."""
        ...

    async def failed(self, job: JobRecord, error: PaletteError) -> None: ...

    async def notice(self, job: JobRecord, note: PaletteError) -> None:
        """Tell the requester something about a job that was already posted (it was made free)."""
        ...


class JobExpired(PaletteError):
    def __init__(self) -> None:
        super().__init__("Palette could not finish this request in time (the bot was restarting).")


class DeliveryError(PaletteError):
    """The images were generated but could not be posted."""


class SettledFree(PaletteError):
    """Posted, but Palette could not record it: the job is refunded, and the requester told."""

    def __init__(self) -> None:
        super().__init__(
            "Palette posted these images but could not record them, so they were free: nothing was charged."
        )


class JobService:
    """Accepting jobs: validation, quota, and the job row that is the queue entry."""

    def __init__(
        self,
        jobs: JobRepository,
        queue: QueueRepository,
        generator: Generator,
        policy: LimitPolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.jobs = jobs
        self.queue = queue
        self.generator = generator
        self.policy = policy
        self.clock = clock
        self.accepting = True
        # Job id -> the provider it will wait for, between submit() and hand_over().
        self._providers: dict[int, str] = {}
        #: The worker of this process, when it runs one (all-in-one): woken at once on submit.
        self.worker: Worker | None = None
        #: Servers' own provider keys: a server's jobs are planned with the routes it may use.
        self.tenants: TenantService | None = None

    # ------------------------------------------------------------------ accepting

    def plan(self, spec: GenerationSpec, access: RouteAccess | None = None) -> Plan:
        """Validate without touching storage (cheap; safe before acknowledging an interaction).
        ``access``: the server's routes (:meth:`access_for`)."""
        return self.generator.plan(spec, access)

    async def access_for(self, guild_id: int | None) -> RouteAccess | None:
        """Which providers the server's jobs may use (its own keys; cached), None without tenants."""
        if self.tenants is None or guild_id is None:
            return None
        return await self.tenants.access(guild_id)

    async def submit(
        self,
        spec: GenerationSpec,
        origin: JobOrigin,
        *,
        kind: str = "imagine",
        parent_job_id: int | None = None,
        group_id: int | None = None,
        check_concurrency: bool = True,
    ) -> JobRecord:
        """Validate, reserve quota atomically and persist the job. Raises PaletteError on refusal.

        ``group_id``: one job of a /compare request (its jobs share one message). Its second and later
        jobs pass ``check_concurrency=False``: the request counts once against the jobs-at-once limit
        (every image still counts against the daily and hourly ones).

        The job is stored without its queue provider: no worker can claim it until :meth:`hand_over`.
        Until then the command handler owns the status message (it shows "queued"), so a worker's
        "generating", result or failure can never be overwritten by that "queued" edit, in whichever
        process either runs. (A job whose command handler died before handing it over is adopted by a
        worker after a while: :data:`bot.jobs.worker.ADOPT_AFTER`.)
        """
        try:
            return await self._submit(
                spec,
                origin,
                kind=kind,
                parent_job_id=parent_job_id,
                group_id=group_id,
                check_concurrency=check_concurrency,
            )
        except PaletteError:
            metrics.job_finished("refused")
            raise

    async def _submit(
        self,
        spec: GenerationSpec,
        origin: JobOrigin,
        *,
        kind: str,
        parent_job_id: int | None,
        group_id: int | None,
        check_concurrency: bool,
    ) -> JobRecord:
        plan = self.generator.plan(spec, await self.access_for(origin.guild_id))
        limits = await self.policy.limits_for(origin.user_id, origin.guild_id, origin.role_ids)
        if not check_concurrency:
            limits = replace(limits, max_concurrent=None)
        params = {
            "aspect_ratio": plan.aspect_ratio,
            "resolution": plan.resolution,
            "count": plan.count,
            "seed": plan.seed,
            "strict_safety": plan.strict_safety,
            "upload_limit": origin.upload_limit,
            # Server galleries (bot.web) show results of non-NSFW server channels only.
            "nsfw_channel": origin.nsfw_channel or origin.guild_id is None,
            "locale": origin.locale,
            # How many references are stored with the job: a worker reads them only when there are some.
            "references": len(plan.references),
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
            queue_provider=None,  # set by hand_over
            group_id=group_id,
        )
        job = await self.jobs.reserve_job(new_job, limits, self.clock())
        self._providers[job.id] = plan.routes[0].provider
        return job

    async def check_room(self, origin: JobOrigin, images: int) -> None:
        """Refuse up front (nothing is reserved) a request of ``images`` images, made of several jobs,
        that cannot fit the daily, pool or hourly limit as a whole (/compare). The jobs' reservations still
        check again, atomically, one by one."""
        limits = await self.policy.limits_for(origin.user_id, origin.guild_id, origin.role_ids)
        now = self.clock()
        pool_guild = origin.guild_id if limits.guild_daily_pool is not None else None
        usage = await self.jobs.usage(origin.user_id, now, pool_guild)
        checks: list[tuple[QuotaScope, int | None, int, float | None]] = [
            ("daily", limits.daily, usage.daily_used, usage.daily_resets_at),
            ("pool", limits.guild_daily_pool if pool_guild is not None else None, usage.guild_pool_used or 0,
             usage.guild_pool_resets_at),
            ("hourly", limits.hourly, usage.hourly_used, usage.hourly_resets_at),
        ]  # fmt: skip
        for scope, limit, used, resets_at in checks:
            if limit is not None and used + images > limit:
                raise QuotaExceeded(
                    scope, limit=limit, used=used, requested=images,
                    resets_at=resets_at if images <= limit else None, now=now,
                )  # fmt: skip

    async def hand_over(self, job: JobRecord) -> None:
        """The command handler is done with the status message: the job joins the queue, waiting for a
        slot of its best route's provider (the workers are told)."""
        provider = self._providers.pop(job.id, None) or self._first_provider(job)
        try:
            await self.queue.set_queue_provider(job.id, provider)
        except Exception as exc:  # a worker adopts it after a while
            log.warning("job %s: could not queue it (%s)", job.id, type(exc).__name__)
            return
        if self.worker is not None:
            self.worker.poke()

    def _first_provider(self, job: JobRecord) -> str:
        model = get_model(job.model)
        routes = model.routes_for(self.generator.enabled, self.generator.rank) if model else []
        return routes[0].provider if routes else next(iter(self.generator.providers), "")

    async def cancel(self, job_id: int, by: int) -> bool:
        """Cancel an unfinished job whose result is not posted yet: settled as ``cancelled`` (everything
        refunded, once: settling is idempotent) in one write, so a queued job leaves the queue at once. A
        worker running it stops: this process's at once, another process's when it next looks (its lease
        renewal is refused; the status is read again before posting). False when there was nothing to
        cancel (finished, or the result was already posted)."""
        if not await self.jobs.cancel_job(job_id, by, self.clock()):
            return False
        metrics.job_finished("cancelled")
        self._providers.pop(job_id, None)
        if self.worker is not None:
            self.worker.abandon(job_id)
        try:
            await self.queue.notify()  # its provider slot may be free now
        except Exception as exc:
            log.warning("job %s: could not wake the workers (%s)", job_id, type(exc).__name__)
        return True

    async def position(self, job_id: int) -> int | None:
        """The job's place in line over the whole deployment (None once a worker has it)."""
        return await self.queue.position(job_id)

    def stop(self) -> None:
        """Accept no new jobs (shutting down)."""
        self.accepting = False

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """For tests and the benchmark: until nothing is queued or running (in the whole deployment, and
        in this process's worker)."""
        deadline = time.monotonic() + timeout
        while True:
            depth = await self.queue.depth()
            busy = self.worker is not None and self.worker.running > 0
            if not (depth.queued or depth.running or busy):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("jobs still running")
            await asyncio.sleep(0.01)
