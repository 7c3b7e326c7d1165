"""The model catalog: user-facing models, what they can do, and which providers serve them.

This is data, not code branches. A *model* is what a user picks (``nano-banana-pro``); a *route* is one
provider serving it under that provider's model id, with that route's own limits. Routes are listed in
preference order (PROVIDER_ORDER in the settings can re-rank them). A model is offered only when one of
its routes has an enabled provider.

Sources: ``shared/provider-docs/`` (ListenHub, nano-banana-pro.net, APIMart, Mountsea hub).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from bot.i18n import N_

MB = 1024 * 1024

STANDARD_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9")
SOCIAL_RATIOS = ("4:5", "5:4")
EXTREME_RATIOS = ("1:4", "4:1", "1:8", "8:1")
COMMON_MIME = frozenset({"image/png", "image/jpeg", "image/webp"})
GEMINI_MIME = COMMON_MIME | {"image/heic", "image/heif"}


@dataclass(frozen=True)
class Route:
    """One provider serving one model."""

    provider: str
    model_id: str
    aspect_ratios: tuple[str, ...]
    resolutions: tuple[str, ...]
    max_references: int
    # Provider model id used when references are given (Mountsea has separate ``-edit`` models).
    edit_model_id: str | None = None
    max_reference_bytes: int | None = None
    reference_mime: frozenset[str] = COMMON_MIME
    # Images one call can return; larger counts are split into several calls.
    max_per_call: int = 1
    supports_seed: bool = False
    # Provider-specific constants the adapter needs (e.g. ListenHub's ``provider`` field).
    params: dict[str, str] = field(default_factory=dict)

    def model_for(self, has_references: bool) -> str:
        return self.edit_model_id if has_references and self.edit_model_id else self.model_id


@dataclass(frozen=True)
class ModelSpec:
    """A model as users see it; its capabilities are the union of its routes'."""

    key: str
    label: str
    description: str
    routes: tuple[Route, ...]
    default_aspect_ratio: str = "1:1"
    default_resolution: str = "1K"
    min_count: int = 1
    max_count: int = 4

    @property
    def aspect_ratios(self) -> tuple[str, ...]:
        return _ordered_union(r.aspect_ratios for r in self.routes)

    @property
    def resolutions(self) -> tuple[str, ...]:
        return _ordered_union(r.resolutions for r in self.routes)

    @property
    def max_references(self) -> int:
        return max(r.max_references for r in self.routes)

    @property
    def supports_seed(self) -> bool:
        return any(r.supports_seed for r in self.routes)

    @property
    def supports_edit(self) -> bool:
        return self.max_references > 0

    def routes_for(self, enabled: Iterable[str], rank: dict[str, int] | None = None) -> list[Route]:
        """Routes whose provider is enabled, best first (stable on catalog order)."""
        enabled = set(enabled)
        routes = [r for r in self.routes if r.provider in enabled]
        if rank:
            routes.sort(key=lambda r: rank.get(r.provider, len(rank)))
        return routes


def _ordered_union(groups: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for group in groups:
        for item in group:
            seen.setdefault(item, None)
    return tuple(seen)


RESOLUTIONS = ("1K", "2K", "4K")

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        key="nano-banana-pro",
        label="Nano Banana Pro",
        description=N_("Gemini 3 Pro Image: highest quality, best text rendering"),
        routes=(
            Route(
                "listenhub",
                "gemini-3-pro-image",
                STANDARD_RATIOS,
                RESOLUTIONS,
                14,
                reference_mime=GEMINI_MIME,
                params={"provider": "google"},
            ),
            # API access needs the Standard plan: 8 references, 2.5 MB each.
            Route(
                "nanobanana_pro",
                "nano-banana-pro",
                STANDARD_RATIOS,
                RESOLUTIONS,
                8,
                max_reference_bytes=int(2.5 * 1000 * 1000),
            ),
            Route(
                "mountsea",
                "nano-banana-pro",
                STANDARD_RATIOS + SOCIAL_RATIOS,
                RESOLUTIONS,
                14,
                edit_model_id="nano-banana-pro-edit",
                max_per_call=4,
                supports_seed=True,
            ),
        ),
    ),
    ModelSpec(
        key="nano-banana-2",
        label="Nano Banana 2",
        description=N_("Gemini 3.1 Flash Image: fast, extra-wide and extra-tall ratios"),
        routes=(
            Route(
                "listenhub",
                "gemini-3.1-flash-image",
                STANDARD_RATIOS + EXTREME_RATIOS,
                RESOLUTIONS,
                14,
                reference_mime=GEMINI_MIME,
                params={"provider": "google"},
            ),
            Route(
                "mountsea",
                "nano-banana-2",
                STANDARD_RATIOS + SOCIAL_RATIOS + EXTREME_RATIOS,
                RESOLUTIONS,
                14,
                edit_model_id="nano-banana-2-edit",
                max_per_call=4,
                supports_seed=True,
            ),
        ),
    ),
    ModelSpec(
        key="nano-banana",
        label="Nano Banana",
        description=N_("Gemini 2.5 Flash Image: quick and affordable, 1K"),
        routes=(
            Route(
                "mountsea",
                "nano-banana",
                STANDARD_RATIOS + SOCIAL_RATIOS,
                ("1K",),
                14,
                edit_model_id="nano-banana-edit",
                max_per_call=4,
                supports_seed=True,
            ),
        ),
    ),
    ModelSpec(
        key="nano-banana-lite",
        label="Nano Banana Lite",
        description=N_("Gemini 3.1 Flash Lite Image: cheapest, 1K only"),
        routes=(
            Route(
                "apimart",
                "gemini-3.1-flash-lite-image",
                STANDARD_RATIOS + SOCIAL_RATIOS,
                ("1K",),
                14,
                max_reference_bytes=10 * MB,
                max_per_call=4,
            ),
        ),
    ),
    ModelSpec(
        key="gpt-image-2",
        label="GPT Image 2",
        description=N_("OpenAI GPT Image 2: strong prompt following and typography"),
        routes=(
            Route(
                "listenhub",
                "gpt-image-2",
                STANDARD_RATIOS,
                RESOLUTIONS,
                4,
                reference_mime=GEMINI_MIME,
                params={"provider": "openai"},
            ),
            Route(
                "mountsea",
                "gpt-image-2",
                STANDARD_RATIOS,
                RESOLUTIONS,
                4,
                edit_model_id="gpt-image-2-edit",
                max_per_call=4,
            ),
        ),
    ),
)

MODELS_BY_KEY: dict[str, ModelSpec] = {m.key: m for m in MODELS}
DEFAULT_MODEL = "nano-banana-pro"


def get_model(key: str) -> ModelSpec | None:
    return MODELS_BY_KEY.get(key.strip().lower())


def available_models(enabled: Iterable[str]) -> list[ModelSpec]:
    """Models with at least one route whose provider is enabled."""
    enabled = set(enabled)
    return [m for m in MODELS if any(r.provider in enabled for r in m.routes)]
