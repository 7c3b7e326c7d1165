"""The catalog and the validation every request passes before any network call."""

from __future__ import annotations

import pytest

from bot.catalog import MODELS, available_models, get_model
from bot.errors import InvalidPrompt, NoRouteAvailable, UnknownModel, UnsupportedOption, ValidationError
from bot.generation import GenerationSpec, Generator, clean_prompt, split_count
from bot.providers import build_providers
from bot.providers.base import Reference
from tests.conftest import make_settings

ALL_KEYS = {
    "listenhub_api_key": "lh-key",
    "nanobanana_pro_api_key": "nb-key",
    "apimart_api_key": "am-key",
    "mountsea_api_key": "ms-key",
}


@pytest.fixture
async def generator():
    settings = make_settings(**ALL_KEYS)
    gen = Generator(settings, build_providers(settings))
    yield gen
    await gen.aclose()


def refs(n: int) -> tuple[Reference, ...]:
    return tuple(Reference(mime_type="image/png", data=b"x") for _ in range(n))


def test_required_models_exist_with_documented_capabilities() -> None:
    keys = {m.key for m in MODELS}
    assert {"nano-banana-pro", "nano-banana-2", "nano-banana", "nano-banana-lite", "gpt-image-2"} <= keys
    nb2 = get_model("nano-banana-2")
    pro = get_model("nano-banana-pro")
    lite = get_model("nano-banana-lite")
    gpt = get_model("gpt-image-2")
    assert nb2 and pro and lite and gpt
    assert {"1:4", "4:1", "1:8", "8:1"} <= set(nb2.aspect_ratios)
    assert not {"1:4", "4:1", "1:8", "8:1"} & set(pro.aspect_ratios)
    assert lite.resolutions == ("1K",)
    assert gpt.max_references == 4
    assert all(r.max_references <= 4 for r in gpt.routes)
    nbp_route = next(r for r in pro.routes if r.provider == "nanobanana_pro")
    assert nbp_route.max_reference_bytes == 2_500_000
    apimart = lite.routes[0]
    assert apimart.max_reference_bytes == 10 * 1024 * 1024 and apimart.max_references == 14


def test_models_offered_only_with_an_enabled_route() -> None:
    assert available_models(set()) == []
    only_apimart = [m.key for m in available_models({"apimart"})]
    assert only_apimart == ["nano-banana-lite"]
    listenhub = {m.key for m in available_models({"listenhub"})}
    assert listenhub == {"nano-banana-pro", "nano-banana-2", "gpt-image-2"}


def test_provider_order_reranks_routes() -> None:
    pro = get_model("nano-banana-pro")
    assert pro is not None
    default = [r.provider for r in pro.routes_for({"listenhub", "mountsea"})]
    assert default == ["listenhub", "mountsea"]
    reranked = [
        r.provider for r in pro.routes_for({"listenhub", "mountsea"}, {"mountsea": 0, "listenhub": 1})
    ]
    assert reranked == ["mountsea", "listenhub"]


@pytest.mark.parametrize(
    ("spec", "error", "fragment"),
    [
        (GenerationSpec(model="dall-e-9", prompt="cat"), UnknownModel, "Unknown model"),
        (GenerationSpec(model="nano-banana-pro", prompt="   "), InvalidPrompt, "empty"),
        (GenerationSpec(model="nano-banana-pro", prompt="\x00\x01\u0007"), InvalidPrompt, "empty"),
        (GenerationSpec(model="nano-banana-pro", prompt="\u200b\u200e\u0301"), InvalidPrompt, "empty"),
        (GenerationSpec(model="nano-banana-pro", prompt="x" * 4001), InvalidPrompt, "4000"),
        (GenerationSpec(model="nano-banana-pro", prompt="cat", aspect_ratio="8:1"), UnsupportedOption, "8:1"),
        (
            GenerationSpec(model="nano-banana-pro", prompt="cat", aspect_ratio="banana"),
            UnsupportedOption,
            "ratio",
        ),
        (GenerationSpec(model="nano-banana-lite", prompt="cat", resolution="4K"), UnsupportedOption, "4K"),
        (GenerationSpec(model="nano-banana", prompt="cat", resolution="2K"), UnsupportedOption, "2K"),
        (GenerationSpec(model="nano-banana-pro", prompt="cat", count=0), UnsupportedOption, "1 to 4"),
        (GenerationSpec(model="nano-banana-pro", prompt="cat", count=5), UnsupportedOption, "1 to 4"),
        (GenerationSpec(model="gpt-image-2", prompt="cat", seed=3), UnsupportedOption, "seed"),
        (GenerationSpec(model="nano-banana-pro", prompt="cat", seed=-1), UnsupportedOption, "seed"),
        (
            GenerationSpec(model="gpt-image-2", prompt="cat", references=refs(5)),
            UnsupportedOption,
            "at most 4",
        ),
        (
            GenerationSpec(model="nano-banana-pro", prompt="cat", references=refs(15)),
            UnsupportedOption,
            "at most 14",
        ),
    ],
)
async def test_validation_table(
    generator: Generator, spec: GenerationSpec, error: type, fragment: str
) -> None:
    with pytest.raises(error) as info:
        generator.plan(spec)
    assert isinstance(info.value, ValidationError)
    assert fragment in info.value.message


async def test_valid_plans_pick_routes_that_support_the_options(generator: Generator) -> None:
    plan = generator.plan(GenerationSpec(model="nano-banana-pro", prompt="  a cat  ", resolution="2k"))
    assert plan.prompt == "a cat" and plan.resolution == "2K" and plan.aspect_ratio == "1:1"
    assert [r.provider for r in plan.routes] == ["listenhub", "nanobanana_pro", "mountsea"]
    # 4:5 only exists on Mountsea's route; a seed only on Mountsea's.
    assert [
        r.provider
        for r in generator.plan(
            GenerationSpec(model="nano-banana-pro", prompt="c", aspect_ratio="4:5")
        ).routes
    ] == ["mountsea"]
    assert [
        r.provider for r in generator.plan(GenerationSpec(model="nano-banana-pro", prompt="c", seed=7)).routes
    ] == ["mountsea"]
    # nano-banana-pro.net takes at most 8 references.
    nine = generator.plan(GenerationSpec(model="nano-banana-pro", prompt="c", references=refs(9)))
    assert "nanobanana_pro" not in [r.provider for r in nine.routes]


async def test_option_only_on_a_disabled_route_is_a_clear_error() -> None:
    settings = make_settings(listenhub_api_key="k")
    gen = Generator(settings, build_providers(settings))
    try:
        with pytest.raises(NoRouteAvailable, match="not available"):
            gen.plan(GenerationSpec(model="nano-banana-pro", prompt="c", aspect_ratio="4:5"))
        with pytest.raises(NoRouteAvailable, match="not available"):
            gen.plan(GenerationSpec(model="nano-banana-lite", prompt="c"))
    finally:
        await gen.aclose()


def test_clean_prompt_keeps_text_and_newlines() -> None:
    assert clean_prompt("  a\u200bcat\nwith hat \x07 ", 100) == "a\u200bcat\nwith hat"
    assert clean_prompt("مرحبا \u202e", 100) == "مرحبا \u202e"


def test_split_count() -> None:
    assert split_count(4, 1) == [1, 1, 1, 1]
    assert split_count(4, 4) == [4]
    assert split_count(3, 2) == [2, 1]
