"""deploy/grafana-dashboard.json plots every metric Palette exports, and only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bot.ops import metrics

ROOT = Path(__file__).resolve().parents[2]


def exported_families() -> set[str]:
    return {family.name for family in metrics.REGISTRY.collect()}


def test_the_dashboard_plots_every_metric_and_names_no_unknown_one() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for expr in exprs for m in re.findall(r"\b(palette_[a-z0-9_]+)", expr)}
    families = exported_families()

    # A family "palette_jobs" is exposed as palette_jobs_total; a histogram as *_bucket/_sum/_count.
    def family_of(name: str) -> str | None:
        for suffix in ("_total", "_bucket", "_count", "_sum", ""):
            if name.endswith(suffix) and name[: len(name) - len(suffix)] in families:
                return name[: len(name) - len(suffix)]
        return None

    unknown = {name for name in used if family_of(name) is None}
    assert not unknown, unknown
    assert {family_of(name) for name in used} == families


def test_every_metric_has_a_role_label() -> None:
    metrics.set_role("gateway")
    metrics.job_finished("delivered", model="m", images=2, requested_at=0.0)
    metrics.provider_request("listenhub", "ok", 0.1)
    metrics.set_gateway_latencies([(0, 0.02), (1, float("nan"))])
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            assert sample.labels.get("role") in ("all", "gateway", "worker"), (family.name, sample)
