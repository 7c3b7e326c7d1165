"""Builders and constants shared by the storage tests."""

from __future__ import annotations

from typing import Any

from bot.storage import NewJob, NewReference

NOW = 1_800_000_000.0
HOUR = 3_600.0
DAY = 86_400.0


def new_job(user_id: int = 1, **overrides: Any) -> NewJob:
    """A small valid job; override any field."""
    fields: dict[str, Any] = {
        "user_id": user_id,
        "guild_id": 100,
        "channel_id": 200,
        "kind": "imagine",
        "model": "nano-banana",
        "prompt": "a red fox in the snow",
        "count": 1,
        "params": {"aspect_ratio": "1:1", "resolution": "1K", "count": 1, "seed": 7, "strict_safety": False},
    }
    fields.update(overrides)
    return NewJob(**fields)


def reference(data: bytes = b"\x89PNG fake", **overrides: Any) -> NewReference:
    return NewReference(**{"mime_type": "image/png", "data": data, **overrides})


async def claim_job(db: Any, job_id: int, now: float, provider: str = "listenhub", *, slots: int = 8) -> Any:
    """Start ``job_id`` the way a worker does: hand it over to ``provider``'s queue and claim it (with a
    lease and a slot). The job must be the only claimable one (the others have no queue provider)."""
    from bot.storage.queue_sql import SqlQueueRepository

    queue = SqlQueueRepository(db.engine)
    try:
        await queue.sync_slots({provider: slots})
        assert await queue.set_queue_provider(job_id, provider)
        claim = await queue.claim("test-worker", now, 30.0)
    finally:
        await queue.aclose()
    assert claim is not None and claim.job.id == job_id, claim
    return claim
