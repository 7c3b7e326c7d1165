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
