"""ListenHub adapter against the fake ListenHub API on a loopback socket (built through the registry)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from bot.errors import (
    AuthError,
    ContentRefused,
    InvalidRequest,
    OutOfCredits,
    ProviderBusy,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ResultDownloadError,
)
from bot.providers import build_downloader, build_providers
from bot.providers.base import ProviderRequest, Reference
from bot.providers.listenhub import ListenHubProvider, normalize_model, price_credits
from bot.providers.transport import Downloader
from tests.conftest import make_settings
from tests.fakes.http import jpeg_bytes, png_bytes
from tests.fakes.providers.listenhub import FULL_SUBSCRIPTION, FakeListenHub, busy_body, decode_inline

MakeProvider = Callable[..., Awaitable[ListenHubProvider]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeListenHub]:
    async with FakeListenHub() as server:
        yield server


@pytest.fixture(scope="module")
def downloader() -> Iterator[Downloader]:
    """One result downloader for the module: ListenHub inlines its images and never downloads anything,
    and building an httpx client costs ~40 ms, so sharing it keeps this module fast."""
    shared = build_downloader(make_settings())
    yield shared
    asyncio.run(shared.aclose())  # it never opened a connection, so any loop can close it


@pytest.fixture
async def make_provider(fake: FakeListenHub, downloader: Downloader) -> AsyncIterator[MakeProvider]:
    """Build the adapter through ``build_providers`` (real registry, transport and error hook)."""
    built: list[ListenHubProvider] = []

    async def factory(**overrides: Any) -> ListenHubProvider:
        settings = make_settings(
            listenhub_api_key=overrides.pop("api_key", fake.api_key),
            listenhub_base_url=fake.base_url,
            **overrides,
        )
        providers = build_providers(settings, downloader)
        assert set(providers) == {"listenhub"}
        provider = providers["listenhub"]
        assert isinstance(provider, ListenHubProvider)
        built.append(provider)
        return provider

    yield factory
    for provider in built:
        await provider.aclose()


@pytest.fixture
async def provider(make_provider: MakeProvider) -> ListenHubProvider:
    return await make_provider()


def request(**overrides: Any) -> ProviderRequest:
    values: dict[str, Any] = {
        "model_id": "gemini-3-pro-image",
        "prompt": "a red fox in the snow",
        "resolution": "1K",
        "aspect_ratio": "1:1",
        "params": {"provider": "google"},
    }
    values.update(overrides)
    return ProviderRequest(**values)


# --- text to image ------------------------------------------------------------------------------------------


async def test_text_to_image_sends_documented_body_and_returns_the_image(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    result = await provider.generate(request(resolution="2K", aspect_ratio="16:9", prompt="a serene lake"))

    assert fake.calls["generate"] == 1
    sent = fake.generate_requests[0]
    assert sent.method == "POST"
    assert sent.path == "/openapi/v1/images/generation"
    assert sent.headers["authorization"] == f"Bearer {fake.api_key}"
    assert sent.headers["content-type"].startswith("application/json")
    assert sent.json == {
        "provider": "google",
        "model": "gemini-3-pro-image",
        "prompt": "a serene lake",
        "imageConfig": {"imageSize": "2K", "aspectRatio": "16:9"},
    }
    assert len(result.images) == 1
    image = result.images[0]
    assert image.data == fake.images[0]
    assert (image.mime_type, image.width, image.height) == ("image/png", 128, 72)
    assert result.provider == "listenhub"
    assert result.provider_model == "gemini-3-pro-image"
    assert result.cost is None and result.cost_unit is None  # Gemini prices are not published
    assert result.latency_s > 0


async def test_real_1k_size_follows_ratio(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    fake.scale = 1.0
    result = await provider.generate(request(resolution="1K", aspect_ratio="9:16"))
    assert (result.images[0].width, result.images[0].height) == (576, 1024)


@pytest.mark.parametrize(("resolution", "credits"), [("1K", 4), ("2K", 6), ("4K", 10)])
async def test_gpt_image_2_auto_ratio_and_credit_cost(
    fake: FakeListenHub, provider: ListenHubProvider, resolution: str, credits: int
) -> None:
    result = await provider.generate(
        request(
            model_id="gpt-image-2", params={"provider": "openai"}, aspect_ratio=None, resolution=resolution
        )
    )
    assert fake.generate_requests[0].json == {
        "provider": "openai",
        "model": "gpt-image-2",
        "prompt": "a red fox in the snow",
        "imageConfig": {"imageSize": resolution},  # no aspectRatio: the model picks ("auto")
    }
    assert result.provider_model == "gpt-image-2"
    assert (result.cost, result.cost_unit) == (credits, "credits")
    assert result.images[0].data == fake.images[0]


@pytest.mark.parametrize(
    ("model", "canonical"),
    [
        ("gemini-3-pro-image", "gemini-3-pro-image"),
        ("gemini-3-pro-image-preview", "gemini-3-pro-image"),
        ("gemini-3.1-flash-image", "gemini-3.1-flash-image"),
        ("gemini-3.1-flash-image-preview", "gemini-3.1-flash-image"),
    ],
)
async def test_both_model_spellings_are_sent_as_given(
    fake: FakeListenHub, provider: ListenHubProvider, model: str, canonical: str
) -> None:
    result = await provider.generate(request(model_id=model))
    assert fake.generate_requests[0].json["model"] == model
    assert result.provider_model == model
    assert normalize_model(model) == canonical


def test_normalize_model_and_prices() -> None:
    assert normalize_model("gpt-image-2") == "gpt-image-2"
    assert normalize_model("something-new") == "something-new"
    assert price_credits("gpt-image-2", "4k") == 10
    assert price_credits("gemini-3-pro-image-preview", "1K") is None


async def test_flash_model_extra_ratio(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    result = await provider.generate(request(model_id="gemini-3.1-flash-image", aspect_ratio="1:8"))
    assert (result.images[0].width, result.images[0].height) == (8, 64)


async def test_missing_provider_param_is_derived_from_the_model(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    await provider.generate(request(model_id="gpt-image-2", params={}, aspect_ratio=None))
    await provider.generate(request(params={}))
    assert [r.json["provider"] for r in fake.generate_requests] == ["openai", "google"]


# --- references ---------------------------------------------------------------------------------------------


async def test_references_inline_and_by_url(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    png = png_bytes(40, 30, (1, 2, 3))
    jpg = jpeg_bytes(20, 20)
    refs = (
        Reference("image/png", data=png),
        Reference("image/jpeg", url="https://cdn.example.com/photo.jpg"),
        # Bytes and URL: the bytes are sent (exactly what we validated; no fetch by ListenHub).
        Reference("image/jpeg", data=jpg, url="https://cdn.example.com/same.jpg"),
    )
    result = await provider.generate(request(references=refs))

    sent = fake.generate_requests[0].json["referenceImages"]
    assert sent[0] == {"inlineData": {"data": base64.b64encode(png).decode(), "mimeType": "image/png"}}
    assert decode_inline(sent[0]) == png
    assert sent[1] == {"fileData": {"fileUri": "https://cdn.example.com/photo.jpg", "mimeType": "image/jpeg"}}
    assert set(sent[2]) == {"inlineData"} and decode_inline(sent[2]) == jpg
    assert sent[2]["inlineData"]["mimeType"] == "image/jpeg"
    assert result.images[0].data == fake.images[0]


async def test_too_many_references_for_gpt_image_2_is_a_400(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    refs = tuple(Reference("image/png", url=f"https://cdn.example.com/{i}.png") for i in range(5))
    with pytest.raises(InvalidRequest) as info:
        await provider.generate(
            request(model_id="gpt-image-2", params={"provider": "openai"}, references=refs)
        )
    assert "at most 4 reference images" in info.value.message
    assert fake.calls["generate"] == 1


# --- documented error statuses ------------------------------------------------------------------------------


async def test_400_surfaces_the_provider_message_and_is_not_retried(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    # Real validation in the fake: 1:8 is a flash-only ratio.
    with pytest.raises(InvalidRequest) as info:
        await provider.generate(request(model_id="gemini-3-pro-image", aspect_ratio="1:8"))
    assert "unsupported aspect ratio 1:8" in info.value.message
    assert info.value.status == 400
    assert info.value.provider == "listenhub"
    assert fake.calls["generate"] == 1


async def test_401_wrong_key_is_auth_error_not_retried(
    fake: FakeListenHub, make_provider: MakeProvider
) -> None:
    provider = await make_provider(api_key="not-the-key")
    with pytest.raises(AuthError) as info:
        await provider.generate(request())
    assert info.value.status == 401
    assert "not-the-key" not in repr(info.value) + info.value.message + str(info.value.detail)
    assert fake.calls["generate"] == 1


async def test_402_is_out_of_credits_not_retried(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    fake.script(402, {"code": 40200, "message": "Insufficient credits", "data": None})
    with pytest.raises(OutOfCredits) as info:
        await provider.generate(request())
    assert info.value.detail == "Insufficient credits"
    assert fake.calls["generate"] == 1


async def test_envelope_code_21007_is_auth_error(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    fake.script(400, {"code": 21007, "message": "api key invalid", "data": None})
    with pytest.raises(AuthError):
        await provider.generate(request())
    fake.script(200, {"code": 21007, "message": "api key invalid", "data": None})
    with pytest.raises(AuthError):
        await provider.generate(request())
    assert fake.calls["generate"] == 2


async def test_429_retry_after_is_honoured_then_succeeds(
    fake: FakeListenHub, make_provider: MakeProvider
) -> None:
    provider = await make_provider(retry_after_cap=0.25)
    fake.script(429, {"code": 42900, "message": "Too Many Requests"}, {"Retry-After": "1"})
    result = await provider.generate(request())
    assert fake.calls["generate"] == 2
    # Retry-After (1 s, capped at 0.25 s) was waited, not the ~0.01 s backoff.
    assert fake.request_times[1] - fake.request_times[0] >= 0.2
    assert result.images[0].data == fake.images[0]


async def test_429_retry_after_value_is_parsed(fake: FakeListenHub, make_provider: MakeProvider) -> None:
    provider = await make_provider(http_max_retries=0)
    fake.script(429, {"code": 42900, "message": "slow down"}, {"Retry-After": "7"})
    with pytest.raises(RateLimited) as info:
        await provider.generate(request())
    assert info.value.retry_after == 7.0
    assert info.value.status == 429
    assert fake.calls["generate"] == 1


async def test_500_is_retried_then_succeeds(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    fake.script(500, {"code": 50000, "message": "Image generation failed"})
    result = await provider.generate(request())
    assert fake.calls["generate"] == 2
    assert result.images[0].data == fake.images[0]


@pytest.mark.parametrize("max_retries", [0, 3])
async def test_500_forever_gives_up_after_max_retries(
    fake: FakeListenHub, make_provider: MakeProvider, max_retries: int
) -> None:
    provider = await make_provider(http_max_retries=max_retries)
    fake.script(500, {"code": 50000, "message": "Image generation failed"}, times=None)
    with pytest.raises(ProviderUnavailable) as info:
        await provider.generate(request())
    assert info.value.status == 500
    assert info.value.detail == "Image generation failed"
    assert fake.calls["generate"] == max_retries + 1


# --- busy metadata (pure-free relax lane) -------------------------------------------------------------------


@pytest.mark.parametrize(("status", "nest"), [(429, None), (500, "data"), (503, "error"), (400, None)])
async def test_free_relax_busy_is_retried(
    fake: FakeListenHub, provider: ListenHubProvider, status: int, nest: str | None
) -> None:
    fake.script(status, busy_body("free_relax_busy", nest=nest))
    result = await provider.generate(request())
    assert fake.calls["generate"] == 2
    assert result.images[0].data == fake.images[0]


@pytest.mark.parametrize("reason", ["free_relax_busy", "free_relax_timeout"])
async def test_free_relax_busy_error_details(
    fake: FakeListenHub, make_provider: MakeProvider, reason: str
) -> None:
    provider = await make_provider(http_max_retries=1)
    fake.script(
        500, busy_body(reason, user_message="Busy, try again tonight."), {"Retry-After": "3"}, times=2
    )
    with pytest.raises(ProviderBusy) as info:
        await provider.generate(request())
    error = info.value
    assert error.retryable
    assert error.message == "Busy, try again tonight."
    assert (error.provider, error.status, error.retry_after, error.detail) == ("listenhub", 500, 3.0, reason)
    assert fake.calls["generate"] == 2


def test_error_hook_unit() -> None:
    hook = ListenHubProvider.error_hook
    busy = hook(
        httpx.Response(400, json={"failReason": "free_relax_timeout"}), {"failReason": "free_relax_timeout"}
    )
    assert isinstance(busy, ProviderBusy) and busy.message == ProviderBusy.default_message
    assert hook(httpx.Response(400), {"code": 40001, "message": "bad ratio"}) is None
    assert hook(httpx.Response(500), "<html>oops</html>") is None
    assert hook(httpx.Response(400), {"reason": "something_else"}) is None
    assert isinstance(hook(httpx.Response(401), {"code": "21007"}), AuthError)


# --- refusals and broken answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason", "expect"),
    [
        ("finish", "IMAGE_SAFETY", "finishReason=IMAGE_SAFETY"),
        ("finish", "PROHIBITED_CONTENT", "finishReason=PROHIBITED_CONTENT"),
        ("finish", "NO_IMAGE", "finishReason=NO_IMAGE"),
        ("block", "PROHIBITED_CONTENT", "blockReason=PROHIBITED_CONTENT"),
        ("block", "SAFETY", "blockReason=SAFETY"),
        ("text", "", "I can't create that image."),
    ],
)
async def test_safety_refusal_is_content_refused_not_retried(
    fake: FakeListenHub, provider: ListenHubProvider, kind: str, reason: str, expect: str
) -> None:
    fake.script_refusal(kind, reason)
    with pytest.raises(ContentRefused) as info:
        await provider.generate(request())
    assert expect in (info.value.detail or "")
    assert not info.value.retryable
    assert fake.calls["generate"] == 1


async def test_candidate_without_content_and_unknown_reason_is_unavailable(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    fake.script(200, {"candidates": [{"finishReason": "MAX_TOKENS"}]})
    with pytest.raises(ProviderUnavailable) as info:
        await provider.generate(request())
    assert "MAX_TOKENS" in (info.value.detail or "")


async def test_unknown_shapes_are_malformed(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    bodies: list[Any] = [
        {"foo": 1},
        {"candidates": []},
        {"code": 0, "data": None},
        [],
        {"code": 50010, "message": "x"},
        "text",
    ]
    for body in bodies:
        fake.script(200, body)
        with pytest.raises(ProviderUnavailable):
            await provider.generate(request())
    assert fake.calls["generate"] == len(bodies)  # never retried


async def test_busy_metadata_on_a_200_is_provider_busy(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    fake.script(200, busy_body("free_relax_timeout", nest="data"))
    with pytest.raises(ProviderBusy):
        await provider.generate(request())


async def test_malformed_json_is_provider_unavailable(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    fake.script_malformed_json()
    with pytest.raises(ProviderUnavailable) as info:
        await provider.generate(request())
    assert info.value.message == "The provider sent a malformed response."
    assert fake.calls["generate"] == 1


async def test_truncated_base64_is_provider_unavailable(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    fake.script_truncated_base64()
    with pytest.raises(ProviderUnavailable) as info:
        await provider.generate(request())
    assert "truncated" in info.value.message
    assert fake.calls["generate"] == 1


async def test_inline_data_that_is_not_an_image(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    text = base64.b64encode(b"this is not a picture").decode()
    fake.script(
        200,
        {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": text}}]}}]},
    )
    with pytest.raises(ResultDownloadError):
        await provider.generate(request())


async def test_all_inline_parts_of_all_candidates_are_returned(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    a, b, c, draft = (png_bytes(10 + i, 10, (i, i, i)) for i in range(4))

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    fake.script(
        200,
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {"text": "Here you go"},
                            {"inlineData": {"mimeType": "image/png", "data": b64(draft)}, "thought": True},
                            {"inlineData": {"mimeType": "image/png", "data": b64(a)}},
                        ]
                    },
                    "finishReason": "STOP",
                },
                {
                    "content": {
                        "parts": [
                            {
                                "inline_data": {"mime_type": "image/png", "data": b64(b)}
                            },  # snake_case spelling
                            {"inlineData": {"mimeType": "image/png", "data": b64(c)}},
                        ]
                    }
                },
            ]
        },
    )
    result = await provider.generate(request())
    assert [i.data for i in result.images] == [a, b, c]  # the "thought" draft is dropped
    assert [i.width for i in result.images] == [10, 11, 12]


async def test_streamed_array_of_chunks_is_accepted(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    image = png_bytes(12, 9)
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()}}
    fake.script(
        200,
        [
            {"candidates": [{"content": {"parts": [{"text": "thinking"}]}}]},
            {"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]},
        ],
    )
    result = await provider.generate(request())
    assert [i.data for i in result.images] == [image]


async def test_slow_server_times_out(fake: FakeListenHub, make_provider: MakeProvider) -> None:
    provider = await make_provider(http_read_timeout=0.3, http_max_retries=0)
    fake.script_delay(2.0, times=None)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await provider.generate(request())
    assert time.monotonic() - started < 1.5
    assert fake.calls["generate"] == 1


# --- balance ------------------------------------------------------------------------------------------------


async def test_balance_full_example(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    balance = await provider.balance()
    assert balance.provider == "listenhub"
    assert balance.credits == 1234.5
    assert balance.free_usages == {"gemini-3-pro-image-relax-1k-2k": 7, "wan2.7-image": 3, "gpt-image-2": 0}
    assert balance.plan == "Pro"
    assert balance.resets_at == "2026-07-01T00:00:00Z"
    sent = fake.requests[-1]
    assert (sent.method, sent.path) == ("GET", "/openapi/v1/user/subscription")
    assert sent.headers["authorization"] == f"Bearer {fake.api_key}"
    assert FULL_SUBSCRIPTION["data"]["totalAvailableCredits"] == 1234.5  # the fixture was not mutated


async def test_balance_minimal(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    fake.subscription = {"code": 0, "message": "ok", "data": {"totalAvailableCredits": 0}, "request_id": "r"}
    balance = await provider.balance()
    assert (balance.credits, balance.free_usages, balance.plan, balance.resets_at) == (0.0, {}, None, None)


async def test_balance_tolerates_object_free_usages_and_epoch_reset(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    fake.subscription = {
        "code": 0,
        "data": {
            "totalAvailableCredits": "12",
            "resetAt": 1_782_864_000_000,  # epoch milliseconds
            "subscriptionPlan": {"name": "Max"},
            "freeUsages": {
                "gemini-3-pro-image-relax-1k-2k": {"remaining": 5, "total": 10},
                "wan2.7-image": {"count": 2},
                "gpt-image-2": "4",
                "weird": {"nothing": "here"},
            },
        },
    }
    balance = await provider.balance()
    assert balance.credits == 12.0
    assert balance.free_usages == {"gemini-3-pro-image-relax-1k-2k": 5, "wan2.7-image": 2, "gpt-image-2": 4}
    assert balance.plan == "Max"
    assert balance.resets_at == "2026-07-01T00:00:00+00:00"


async def test_balance_invalid_key(fake: FakeListenHub, make_provider: MakeProvider) -> None:
    provider = await make_provider(api_key="wrong")
    with pytest.raises(AuthError):
        await provider.balance()
    assert fake.calls["subscription"] == 1


async def test_balance_code_21007_on_200(fake: FakeListenHub, provider: ListenHubProvider) -> None:
    fake.subscription = {"code": 21007, "message": "invalid api key", "data": None, "request_id": "r"}
    with pytest.raises(AuthError):
        await provider.balance()


async def test_balance_other_code_is_unavailable_with_message(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    fake.subscription = {"code": 10001, "message": "subscription service down", "data": None}
    with pytest.raises(ProviderUnavailable) as info:
        await provider.balance()
    assert "subscription service down" in info.value.message


# --- one pooled client under load ---------------------------------------------------------------------------


async def test_50_concurrent_generations_share_one_client(
    fake: FakeListenHub, make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = await make_provider(listenhub_concurrency=4)  # pool: max(4 * 2, 16) = 16 connections
    client = provider.transport.client
    fake.processing_delay = 0.05  # long enough for requests to overlap

    created: list[object] = []
    original_init = httpx.AsyncClient.__init__

    def counting_init(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        created.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", counting_init)

    results = await asyncio.gather(*(provider.generate(request(prompt=f"fox #{i}")) for i in range(50)))

    assert fake.calls["generate"] == 50
    assert sorted(r.json["prompt"] for r in fake.generate_requests) == sorted(f"fox #{i}" for i in range(50))
    assert sorted(r.images[0].data for r in results) == sorted(fake.images)
    assert created == []  # no client was made per request
    assert provider.transport.client is client
    # Requests overlapped, but never on more sockets than the one pool allows.
    assert 1 < fake.max_in_flight <= 16
    assert 1 < len(fake.peers) <= 16


async def test_large_inline_images_are_decoded_while_streaming(
    fake: FakeListenHub, provider: ListenHubProvider
) -> None:
    from tests.fakes.http import noisy_png

    big = noisy_png(200, 200)  # ~120 KB: well over the streaming threshold
    fake.make_image = lambda width, height: big  # type: ignore[method-assign]
    result = await provider.generate(request())
    assert [image.data for image in result.images] == [big]
    assert (result.images[0].width, result.images[0].height) == (200, 200)


# --- results decoded into the worker's spool ----------------------------------------------------------


@pytest.mark.parametrize(("budget", "direct_bytes"), [(0, 0), (10**8, 0), (10**8, 4096)])
async def test_inline_results_are_decoded_into_the_spool(
    fake: FakeListenHub, make_provider: MakeProvider, tmp_path: Any, budget: int, direct_bytes: int
) -> None:
    """With a spool set for the job (RESULT_SINK), an inline result is decoded into memory within the
    spool's budget, or straight into a spool file (written by a thread) when the budget has no room or
    the result is too big to upload as it is: the worker never holds a download the budget does not
    count. A refused or failed answer leaves no file behind."""
    from bot.jobs.spool import ImageSpool
    from bot.providers.transport import RESULT_SINK

    fake.scale = 1.0  # a 1024 x 1024 PNG: a long payload
    provider = await make_provider()
    spool = ImageSpool(tmp_path / "spool", budget=budget, direct_bytes=direct_bytes)
    token = RESULT_SINK.set(spool.sink)
    try:
        result = await provider.generate(request(resolution="1K"))
        [image] = result.images
        held = await spool.admit(result.images)
        if budget and not direct_bytes:
            assert image.path is None and image.data == fake.images[-1]
            assert spool.budget.used == len(image.data) and spool.spilled == 0
        else:
            assert image.data == b"" and image.path is not None and spool.spilled == 1
            with open(image.path, "rb") as f:
                assert f.read() == fake.images[-1]
            assert image.file_size == len(fake.images[-1]) and held[0].path is not None
            assert spool.budget.used == 0 and spool.budget.peak == 0
        assert (image.mime_type, image.width, image.height) == ("image/png", 1024, 1024)
        await spool.discard(held)
        assert spool.budget.used == 0

        fake.script_truncated_base64()
        with pytest.raises(ProviderUnavailable):
            await provider.generate(request(resolution="1K"))
        assert spool.budget.used == 0
        assert not list((tmp_path / "spool").glob("*")), "no file of a failed answer is left"
    finally:
        RESULT_SINK.reset(token)
