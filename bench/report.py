"""Figures, the table, and the JSON file."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    scenario: str
    figure: str
    measured: float | None
    unit: str
    target: str
    #: None: informational (no target) or not measurable.
    passed: bool | None

    def measured_text(self) -> str:
        if self.measured is None:
            return "n/a"
        value = self.measured
        if self.unit == "ms":
            return f"{value:.1f} ms"
        if self.unit == "s":
            return f"{value:.2f} s"
        if self.unit == "MB":
            return f"{value:.0f} MB"
        if self.unit == "/s":
            return f"{value:,.0f}/s"
        if self.unit == "count":
            return f"{value:.0f}"
        return f"{value:.3f}"


def check(value: float | None, op: str, limit: float) -> bool | None:
    if value is None or math.isnan(value):
        return None
    return {"<": value < limit, "<=": value <= limit, ">=": value >= limit, "==": value == limit}[op]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); 1.0 when all equal, 1/n when one has everything."""
    if not values:
        return math.nan
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def table(figures: Sequence[Figure]) -> str:
    rows = [("scenario", "figure", "measured", "target", "result")]
    for f in figures:
        result = "-" if f.passed is None else ("PASS" if f.passed else "FAIL")
        rows.append((f.scenario, f.figure, f.measured_text(), f.target or "-", result))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, figures: Sequence[Figure], details: dict[str, Any], *, quick: bool) -> None:
    import os

    payload = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "quick": quick,
        "figures": [asdict(f) for f in figures],
        "details": details,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
