"""Plain records the storage layer takes and returns.

Nothing here knows about SQL: a PostgreSQL backend would return the same dataclasses. Timestamps are
unix seconds (``float``); ids are Discord snowflakes or database row ids (``int``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bot.config import Settings

JobKind = Literal["imagine", "edit", "reroll", "upscale"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
FinalStatus = Literal["done", "failed", "cancelled"]
LedgerEntry = Literal["reserve", "commit", "refund"]

UNFINISHED_STATUSES: tuple[str, ...] = ("queued", "running")
FINAL_STATUSES: tuple[str, ...] = ("done", "failed", "cancelled")

DAY = 86_400.0
HOUR = 3_600.0


def encode_params(params: dict[str, Any] | str) -> str:
    """Canonical JSON text of a job's parameters (a dict, or JSON text of an object)."""
    if isinstance(params, str):
        params = decode_params(params)
    return json.dumps(params, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def decode_params(text: str | None) -> dict[str, Any]:
    """The parameters object from its JSON text; ``ValueError`` if it is not a JSON object."""
    value = json.loads(text) if text else {}
    if not isinstance(value, dict):
        raise ValueError("job params must be a JSON object")
    return value


def _limit(value: int | None) -> int | None:
    """0 and None both mean "no limit"; anything else must be positive."""
    if value is None or value == 0:
        return None
    if value < 0:
        raise ValueError(f"a limit cannot be negative: {value}")
    return value


@dataclass(frozen=True, slots=True)
class Limits:
    """Quota limits applied by :meth:`JobRepository.reserve_job`. ``None`` or ``0`` means unlimited.

    ``daily``/``hourly`` count images (``reserved - refunded``) in the rolling 24 h / 1 h window;
    ``max_concurrent`` counts the user's queued + running jobs; ``guild_daily_pool`` caps the images of
    everyone in the guild over 24 h (ignored in DMs).
    """

    daily: int | None = None
    hourly: int | None = None
    max_concurrent: int | None = None
    guild_daily_pool: int | None = None

    def __post_init__(self) -> None:
        for name in ("daily", "hourly", "max_concurrent", "guild_daily_pool"):
            object.__setattr__(self, name, _limit(getattr(self, name)))

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The per-user limits from :class:`bot.config.Settings` (0 = unlimited there too)."""
        return cls(
            daily=settings.user_daily_limit,
            hourly=settings.user_hourly_limit,
            max_concurrent=settings.user_max_concurrent,
            guild_daily_pool=getattr(settings, "guild_daily_pool", None),
        )


@dataclass(frozen=True, slots=True)
class NewReference:
    """A reference image to persist with a new job: bytes, a URL, or both.

    ``position`` defaults to the reference's index in :attr:`NewJob.references`."""

    mime_type: str | None
    data: bytes | None = None
    url: str | None = None
    source_attachment_id: int | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        if self.data is None and self.url is None:
            raise ValueError("a reference needs data or a url")

    def __repr__(self) -> str:
        size = len(self.data) if self.data is not None else None
        return f"NewReference(mime_type={self.mime_type!r}, bytes={size}, url={self.url!r})"


@dataclass(frozen=True, slots=True)
class NewJob:
    """What :meth:`JobRepository.reserve_job` needs to create a job. ``count`` images are reserved.

    ``params`` (aspect_ratio, resolution, count, seed, strict_safety, ...) is a dict or the JSON text of
    an object; it is stored as canonical JSON text."""

    user_id: int
    channel_id: int | None
    kind: str
    model: str
    prompt: str
    count: int = 1
    guild_id: int | None = None
    params: dict[str, Any] | str = field(default_factory=dict)
    references: tuple[NewReference, ...] = ()
    interaction_token: str | None = None
    interaction_created_at: float | None = None
    parent_job_id: int | None = None
    # The message that shows the job's progress (the deferred interaction response), when known.
    status_message_id: int | None = None
    # The provider whose slot the job waits for in the shared queue (its best route), when known.
    queue_provider: str | None = None
    # The /compare group it belongs to (job_groups.id), if any.
    group_id: int | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a job must ask for at least one image (count={self.count})")
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "params", encode_params(self.params))

    @property
    def reference_bytes(self) -> int:
        """Bytes of reference images stored with the job (URL-only references count nothing)."""
        return sum(len(r.data) for r in self.references if r.data is not None)

    @property
    def params_json(self) -> str:
        """The parameters as canonical JSON text (what is stored)."""
        assert isinstance(self.params, str)  # normalized in __post_init__
        return self.params

    def __repr__(self) -> str:  # no interaction token, no reference bytes in logs
        return (
            f"NewJob(user_id={self.user_id}, guild_id={self.guild_id}, kind={self.kind!r}, "
            f"model={self.model!r}, count={self.count}, references={len(self.references)})"
        )


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One row of ``jobs``. ``params`` is the JSON text as stored; :attr:`params_dict` decodes it."""

    id: int
    user_id: int
    guild_id: int | None
    channel_id: int | None
    kind: str
    model: str
    prompt: str
    params: str
    count: int
    status: str
    reserved: int
    committed: int
    refunded: int
    provider: str | None
    provider_model: str | None
    task_id: str | None
    attempts: int
    interaction_token: str | None
    interaction_created_at: float | None
    status_message_id: int | None
    result_message_id: int | None
    error: str | None
    error_kind: str | None
    parent_job_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    purged_at: float | None = None
    # The shared queue (several processes): see bot.storage.queue.
    queue_provider: str | None = None
    worker_id: str | None = None
    lease_expires_at: float | None = None
    delivery: str | None = None
    # Cancel and compare (issue 12).
    cancelled_by: int | None = None
    group_id: int | None = None

    @property
    def params_dict(self) -> dict[str, Any]:
        """The decoded parameters (aspect_ratio, resolution, count, seed, strict_safety, ...)."""
        return decode_params(self.params)

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def open_reservation(self) -> int:
        """Images reserved and neither committed nor refunded yet."""
        return self.reserved - self.committed - self.refunded

    def __repr__(self) -> str:  # keep the interaction token out of logs
        return (
            f"JobRecord(id={self.id}, user_id={self.user_id}, kind={self.kind!r}, model={self.model!r}, "
            f"status={self.status!r}, count={self.count}, reserved={self.reserved}, "
            f"committed={self.committed}, refunded={self.refunded}, task_id={self.task_id!r})"
        )


@dataclass(frozen=True, slots=True)
class ReferenceRecord:
    """One persisted reference image of a job, in submission order (``position`` from 0)."""

    job_id: int
    position: int
    mime_type: str | None
    data: bytes | None
    url: str | None
    source_attachment_id: int | None

    def __repr__(self) -> str:
        size = len(self.data) if self.data is not None else None
        return (
            f"ReferenceRecord(job_id={self.job_id}, position={self.position}, "
            f"mime_type={self.mime_type!r}, bytes={size}, url={self.url!r})"
        )


@dataclass(frozen=True, slots=True)
class NewResult:
    """A delivered image, recorded by :meth:`JobRepository.finish_job`.

    ``message_id`` defaults to the job's ``result_message_id``, ``channel_id`` to the job's channel and
    ``provider`` to the job's provider.
    """

    filename: str
    sha256: str
    size_bytes: int | None = None
    mime_type: str | None = None
    width: int | None = None
    height: int | None = None
    message_id: int | None = None
    attachment_id: int | None = None
    channel_id: int | None = None
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One row of ``results``."""

    id: int
    job_id: int
    user_id: int
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    attachment_id: int | None
    filename: str
    sha256: str
    width: int | None
    height: int | None
    mime_type: str | None
    size_bytes: int | None
    provider: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """A user's quota usage at ``now``.

    ``*_used`` are images (``reserved - refunded``) of jobs created in the window; ``*_resets_at`` is when
    the oldest of them leaves the window (``None`` if nothing is counted). ``guild_pool_used`` is only
    computed when a guild id was given.
    """

    daily_used: int
    hourly_used: int
    in_flight: int
    daily_resets_at: float | None
    hourly_resets_at: float | None
    guild_pool_used: int | None = None
    guild_pool_resets_at: float | None = None

    def remaining(self, limits: Limits) -> int | None:
        """Images the user could still ask for now (``None`` if unlimited); ignores concurrency."""
        candidates = []
        if limits.daily is not None:
            candidates.append(limits.daily - self.daily_used)
        if limits.hourly is not None:
            candidates.append(limits.hourly - self.hourly_used)
        if limits.guild_daily_pool is not None and self.guild_pool_used is not None:
            candidates.append(limits.guild_daily_pool - self.guild_pool_used)
        return max(0, min(candidates)) if candidates else None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A finished (``done``) job as shown by ``/history``, with its first delivered image."""

    job_id: int
    kind: str
    model: str
    prompt: str
    created_at: float
    finished_at: float | None
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    attachment_id: int | None
    sha256: str | None
    size_bytes: int | None
    image_count: int


@dataclass(frozen=True, slots=True)
class LedgerDiscrepancy:
    """A job whose ledger rows disagree with its ``jobs`` row (or with itself)."""

    job_id: int
    status: str | None
    problem: str
    job_reserved: int
    job_committed: int
    job_refunded: int
    ledger_reserved: int
    ledger_committed: int
    ledger_refunded: int


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """Totals of the ledger: every reserved image is committed, refunded or still open (unfinished job)."""

    reserved: int
    committed: int
    refunded: int
    open: int
    discrepancies: tuple[LedgerDiscrepancy, ...] = ()

    @property
    def balanced(self) -> bool:
        return self.reserved == self.committed + self.refunded + self.open and not self.discrepancies

    def describe(self, max_jobs: int = 20) -> str:
        """A few lines for an operator (``check-ledger``)."""
        totals = (
            f"reserved {self.reserved} = committed {self.committed} + refunded {self.refunded} "
            f"+ open {self.open}"
        )
        if self.reserved != self.committed + self.refunded + self.open:
            totals += "  <-- does not add up"
        lines = [totals]
        lines += [
            f"job {d.job_id} ({d.status or 'missing'}): {d.problem}" for d in self.discrepancies[:max_jobs]
        ]
        if len(self.discrepancies) > max_jobs:
            lines.append(f"... and {len(self.discrepancies) - max_jobs} more jobs")
        lines.append(
            "ledger balanced" if self.balanced else f"LEDGER NOT BALANCED ({len(self.discrepancies)} jobs)"
        )
        return "\n".join(lines)
