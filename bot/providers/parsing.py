"""Small helpers for reading provider answers whose shape the docs leave open."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: Words in a failure or error text that mean the provider's safety system declined the request.
SAFETY_RE = re.compile(
    r"safety|moderation|policy|prohibited|sensitive|nsfw|content[\s_-]?filter|flagged|violat|违规|敏感",
    re.IGNORECASE,
)


def shape(value: Any, depth: int = 0) -> str:
    """A short description of a JSON value for logs (keys and types, never megabytes of base64)."""
    if depth > 2:
        return "…"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {shape(v, depth + 1)}" for k, v in list(value.items())[:12]) + "}"
    if isinstance(value, list):
        return f"[{len(value)}: {shape(value[0], depth + 1)}]" if value else "[]"
    if isinstance(value, str):
        return repr(value[:60])
    return repr(value)
