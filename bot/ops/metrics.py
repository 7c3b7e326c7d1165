"""The process's Prometheus metrics (prometheus-client), one registry per process.

Every metric carries a ``role`` label (``all``, ``gateway``, ``worker``: :func:`set_role`). Counters and
histograms count from the process's start and are updated where things happen (the worker, the provider
transport, Discord's REST client through an aiohttp trace). Gauges that describe the deployment (the
queue depth, circuit breakers) or this process's state (jobs running, gateway latency) are refreshed
when ``/metrics`` is read (:mod:`bot.ops.server`), the queue depth from the database.

Labels are bounded and carry no prompt, user id, token or key: outcomes, provider names, model keys and
shard numbers only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import aiohttp
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# No ``*_created`` series: they double the page and Prometheus does not need them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

#: The outcomes of ``palette_jobs_total``.
JOB_OUTCOMES = ("delivered", "failed", "refused", "refunded", "cancelled")

_DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600)
_ACK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 5)
_PROVIDER_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300)

JOBS = Counter(
    "palette_jobs", "Jobs by outcome since the process started.", ("role", "outcome"), registry=REGISTRY
)
QUEUE_DEPTH = Gauge(
    "palette_queue_depth",
    "Jobs queued in the whole deployment (read from the database).",
    ("role",),
    registry=REGISTRY,
)
JOBS_RUNNING = Gauge(
    "palette_jobs_running",
    "Jobs this process's worker runs now, by provider.",
    ("role", "provider"),
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "palette_job_duration_seconds",
    "From the request to the delivered result.",
    ("role",),
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
INTERACTION_ACK = Histogram(
    "palette_interaction_ack_seconds",
    "From an interaction's creation to Palette's first answer to it.",
    ("role",),
    buckets=_ACK_BUCKETS,
    registry=REGISTRY,
)
PROVIDER_REQUESTS = Counter(
    "palette_provider_requests",
    "HTTP requests to providers by outcome.",
    ("role", "provider", "outcome"),
    registry=REGISTRY,
)
PROVIDER_LATENCY = Histogram(
    "palette_provider_latency_seconds",
    "Duration of one HTTP request to a provider.",
    ("role", "provider"),
    buckets=_PROVIDER_BUCKETS,
    registry=REGISTRY,
)
BREAKER_OPEN = Gauge(
    "palette_provider_breaker_open",
    "1 while a provider's circuit breaker is open (deployment-wide state).",
    ("role", "provider"),
    registry=REGISTRY,
)
DISCORD_429 = Counter(
    "palette_discord_rest_429",
    "Discord REST answers with status 429 (rate limited).",
    ("role",),
    registry=REGISTRY,
)
INTERACTIONS_EXPIRED = Counter(
    "palette_interactions_expired",
    "Commands and clicks acknowledged after Discord's 3 s and dropped by it (10062 Unknown interaction).",
    ("role",),
    registry=REGISTRY,
)
GATEWAY_LATENCY = Gauge(
    "palette_gateway_latency_seconds",
    "Heartbeat latency of each gateway shard.",
    ("role", "shard"),
    registry=REGISTRY,
)
IMAGES_DELIVERED = Counter(
    "palette_images_delivered", "Images posted to Discord, by model.", ("role", "model"), registry=REGISTRY
)

_state = SimpleNamespace(role="all")


def set_role(role: str) -> None:
    """The ``role`` label of every metric this process reports."""
    _state.role = role
    # Zero series for every job outcome, so dashboards and rate() see them from the start.
    for outcome in JOB_OUTCOMES:
        JOBS.labels(role=role, outcome=outcome)
    DISCORD_429.labels(role=role)
    INTERACTIONS_EXPIRED.labels(role=role)
    QUEUE_DEPTH.labels(role=role)


def role() -> str:
    return _state.role


def render() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)


# ---------------------------------------------------------------------------------------------- events


def job_finished(
    outcome: str, *, model: str | None = None, images: int = 0, requested_at: float | None = None
) -> None:
    """A job reached ``outcome`` (one of :data:`JOB_OUTCOMES`); a delivery also counts its images and
    the time since the request."""
    r = _state.role
    JOBS.labels(role=r, outcome=outcome).inc()
    if outcome == "delivered":
        if model and images:
            IMAGES_DELIVERED.labels(role=r, model=model).inc(images)
        if requested_at is not None:
            JOB_DURATION.labels(role=r).observe(max(0.0, time.time() - requested_at))


def interaction_expired() -> None:
    INTERACTIONS_EXPIRED.labels(role=_state.role).inc()


def provider_request(provider: str, outcome: str, seconds: float) -> None:
    """One HTTP request to a provider (``outcome``: ``ok`` or the error's kind)."""
    r = _state.role
    PROVIDER_REQUESTS.labels(role=r, provider=provider, outcome=outcome).inc()
    PROVIDER_LATENCY.labels(role=r, provider=provider).observe(max(0.0, seconds))


def set_queue_depth(queued: int) -> None:
    QUEUE_DEPTH.labels(role=_state.role).set(queued)


def set_jobs_running(by_provider: Mapping[str, int], providers: Iterable[str] = ()) -> None:
    r = _state.role
    for provider in {*providers, *by_provider}:
        JOBS_RUNNING.labels(role=r, provider=provider).set(by_provider.get(provider, 0))


def set_breakers(states: Mapping[str, str]) -> None:
    r = _state.role
    for provider, state in states.items():
        BREAKER_OPEN.labels(role=r, provider=provider).set(1 if state == "open" else 0)


def set_gateway_latencies(latencies: Iterable[tuple[int, float]]) -> None:
    r = _state.role
    for shard, latency in latencies:
        if latency == latency and latency != float("inf"):  # not NaN (no heartbeat yet), not infinite
            GATEWAY_LATENCY.labels(role=r, shard=str(shard)).set(latency)


# ---------------------------------------------------------------------------------------------- Discord REST

_DISCORD_EPOCH_MS = 1420070400000
_CALLBACK = re.compile(r"/interactions/(\d+)/[^/]+/callback")


def snowflake_seconds(snowflake: int) -> float:
    """The unix time a Discord id was made at."""
    return ((snowflake >> 22) + _DISCORD_EPOCH_MS) / 1000


async def _on_request_end(
    session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestEndParams
) -> None:
    status = params.response.status
    if status == 429:
        DISCORD_429.labels(role=_state.role).inc()
    if params.method == "POST" and status < 400:
        match = _CALLBACK.search(params.url.path)
        if match is not None:
            ack = time.time() - snowflake_seconds(int(match.group(1)))
            INTERACTION_ACK.labels(role=_state.role).observe(max(0.0, ack))


def discord_trace() -> aiohttp.TraceConfig:
    """An aiohttp trace for discord.py's HTTP session (``http_trace=``): counts 429 answers and times the
    first answer to each interaction (its callback) from the interaction's creation."""
    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(_on_request_end)
    return trace
