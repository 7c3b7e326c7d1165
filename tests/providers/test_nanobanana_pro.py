"""nano-banana-pro.net adapter against its fake on a loopback socket (built through the registry)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from bot.errors import (
    AuthError,
    InvalidRequest,
    OutOfCredits,
    ProviderBusy,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ResultDownloadError,
)
from bot.providers import build_providers
from bot.providers.base import ProviderRequest, Reference
from bot.providers.nanobanana_pro import MAX_REFERENCE_BYTES, NanoBananaProProvider
from tests.conftest import make_settings
from tests.fakes.http import jpeg_bytes, png_bytes
from tests.fakes.providers.nanobanana_pro import FakeNanoBananaPro

MakeProvider = Callable[..., Awaitable[NanoBananaProProvider]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeNanoBananaPro]:
    async with FakeNanoBananaPro() as server:
        yield server


@pytest.fixture
async def make_provider(fake: FakeNanoBananaPro) -> AsyncIterator[MakeProvider]:
    """Build the adapter through ``build_providers`` (real registry, transport, downloader, error hook)."""
    built: list[NanoBananaProProvider] = []

    async def factory(**overrides: Any) -> NanoBananaProProvider:
        settings = make_settings(
            nanobanana_pro_api_key=overrides.pop("api_key", fake.api_key),
            nanobanana_pro_base_url=fake.base_url,
            **overrides,
        )
        providers = build_providers(settings)
        assert set(providers) == {"nanobanana_pro"}
        provider = providers["nanobanana_pro"]
        assert isinstance(provider, NanoBananaProProvider)
        built.append(provider)
        return provider

    yield factory
    for provider in built:
        await provider.aclose()
        await provider.transport.downloader.aclose()


@pytest.fixture
async def provider(make_provider: MakeProvider) -> NanoBananaProProvider:
    return await make_provider()


def request(**overrides: Any) -> ProviderRequest:
    values: dict[str, Any] = {
        "model_id": "nano-banana-pro",
        "prompt": "a japanese garden",
        "resolution": "1K",
        "aspect_ratio": "1:1",
    }
    values.update(overrides)
    return ProviderRequest(**values)


# --- text to image ------------------------------------------------------------------------------------------


async def test_text_to_image_sends_documented_json_and_downloads_the_result(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    result = await provider.generate(request(resolution="4K", aspect_ratio="16:9", prompt="a garden"))

    assert fake.calls == {"generate": 1, "files": 1}
    sent = fake.generate_requests[0]
    assert (sent.method, sent.path) == ("POST", "/api/ai/nano-banana/generate")
    assert sent.headers["authorization"] == f"Bearer {fake.api_key}"
    assert sent.headers["content-type"].startswith("application/json")
    assert sent.json == {"prompt": "a garden", "size": "4k", "aspectRatio": "16:9"}  # no model field
    image = result.images[0]
    assert image.data == fake.images[0]
    assert (image.mime_type, image.width, image.height) == ("image/png", 256, 144)
    assert result.provider == "nanobanana_pro"
    assert result.provider_model == "nano-banana-2-4k"  # what the response reports
    assert result.cost is None
    # The API key never goes to the result host.
    assert "authorization" not in fake.file_request_headers[0]


async def test_no_aspect_ratio_is_omitted_and_real_size(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    fake.scale = 1.0
    result = await provider.generate(request(aspect_ratio=None, resolution="1K"))
    assert fake.generate_requests[0].json == {"prompt": "a japanese garden", "size": "1k"}
    assert (result.images[0].width, result.images[0].height) == (1024, 1024)


async def test_model_falls_back_to_route_id(fake: FakeNanoBananaPro, provider: NanoBananaProProvider) -> None:
    url = fake.add_file(png_bytes(16, 16))
    fake.script(200, {"created": 1, "images": [{"url": url}]})
    result = await provider.generate(request())
    assert result.provider_model == "nano-banana-pro"


# --- references ---------------------------------------------------------------------------------------------


async def test_single_reference_url_is_a_string(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    await provider.generate(request(references=(Reference("image/jpeg", url="https://example.com/a.jpg"),)))
    assert fake.generate_requests[0].json["image"] == "https://example.com/a.jpg"


async def test_several_reference_urls_are_a_list_and_url_wins_over_bytes(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    refs = (
        Reference("image/jpeg", url="https://example.com/a.jpg"),
        Reference("image/png", data=png_bytes(8, 8), url="https://example.com/b.png"),
    )
    result = await provider.generate(request(references=refs, resolution="2K", aspect_ratio="21:9"))
    sent = fake.generate_requests[0]
    assert sent.files == []
    assert sent.json == {
        "prompt": "a japanese garden",
        "size": "2k",
        "aspectRatio": "21:9",
        "image": ["https://example.com/a.jpg", "https://example.com/b.png"],
    }
    assert result.images[0].data == fake.images[0]


async def test_byte_references_are_uploaded_as_multipart(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    png = png_bytes(30, 20, (9, 9, 9))
    jpg = jpeg_bytes(24, 24)
    refs = (
        Reference("image/png", data=png),
        Reference("image/jpeg", data=jpg, url="https://example.com/has-url-too.jpg"),
    )
    result = await provider.generate(request(references=refs, resolution="2K", aspect_ratio="3:4"))
    sent = fake.generate_requests[0]
    assert sent.headers["content-type"].startswith("multipart/form-data")
    assert sent.json is None
    assert sent.form == {"prompt": "a japanese garden", "size": "2k", "aspectRatio": "3:4"}
    assert sent.files == [
        ("image", "image1.png", png, "image/png"),
        ("image", "image2.jpg", jpg, "image/jpeg"),
    ]
    assert result.images[0].data == fake.images[0]
    assert (result.images[0].width, result.images[0].height) == (96, 128)


async def test_url_only_reference_is_downloaded_when_others_need_upload(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    hosted = jpeg_bytes(10, 10)
    url = fake.add_file(hosted, "image/jpeg")
    local = png_bytes(5, 5)
    await provider.generate(
        request(references=(Reference("image/png", data=local), Reference("image/jpeg", url=url)))
    )
    sent = fake.generate_requests[0]
    assert [(f[1], f[2], f[3]) for f in sent.files] == [
        ("image1.png", local, "image/png"),
        ("image2.jpg", hosted, "image/jpeg"),
    ]


async def test_oversized_reference_is_rejected_before_any_call(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_REFERENCE_BYTES)
    with pytest.raises(InvalidRequest) as info:
        await provider.generate(request(references=(Reference("image/png", data=big),)))
    assert "2.5 MB" in info.value.message
    assert fake.calls["generate"] == 0


async def test_fake_enforces_the_size_limit_too(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upstream limit seen from the API side: lift the adapter's own guard to see the 400.
    monkeypatch.setattr("bot.providers.nanobanana_pro.MAX_REFERENCE_BYTES", 10 * MAX_REFERENCE_BYTES)
    big = png_bytes(8, 8) + bytes(MAX_REFERENCE_BYTES)
    with pytest.raises(InvalidRequest) as info:
        await provider.generate(request(references=(Reference("image/png", data=big),)))
    assert "exceeds the 2.5MB limit" in info.value.message
    assert fake.calls["generate"] == 1


# --- documented error statuses ------------------------------------------------------------------------------


async def test_400_surfaces_the_provider_message_not_retried(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    refs = tuple(Reference("image/png", url=f"https://example.com/{i}.png") for i in range(9))
    with pytest.raises(InvalidRequest) as info:
        await provider.generate(request(references=refs))
    assert "Too many reference images" in info.value.message
    assert info.value.status == 400
    assert fake.calls["generate"] == 1


async def test_400_for_4k_on_a_lower_plan_has_a_clear_message(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    fake.allow_4k = False
    with pytest.raises(InvalidRequest) as info:
        await provider.generate(request(resolution="4K"))
    assert info.value.message == "4K is not available on this provider's plan; try 1K or 2K."
    assert "Upgrade" in (info.value.detail or "")
    assert fake.calls["generate"] == 1


async def test_401_wrong_key(fake: FakeNanoBananaPro, make_provider: MakeProvider) -> None:
    provider = await make_provider(api_key="sk-wrong")
    with pytest.raises(AuthError) as info:
        await provider.generate(request())
    assert info.value.status == 401
    assert "sk-wrong" not in info.value.message + str(info.value.detail)
    assert fake.calls["generate"] == 1


async def test_402_out_of_credits_not_retried(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    fake.script(402, {"error": "Insufficient credits"}, times=None)
    with pytest.raises(OutOfCredits) as info:
        await provider.generate(request())
    assert info.value.detail == "Insufficient credits"
    assert fake.calls["generate"] == 1


async def test_429_retry_after_is_honoured(fake: FakeNanoBananaPro, make_provider: MakeProvider) -> None:
    # Not in the error table, but plans cap concurrency; the shared mapping applies.
    provider = await make_provider(retry_after_cap=0.25)
    fake.script(429, {"error": "Too many concurrent generations"}, {"Retry-After": "2"})
    result = await provider.generate(request())
    assert fake.calls["generate"] == 2
    assert fake.request_times[1] - fake.request_times[0] >= 0.2
    assert result.images[0].data == fake.images[0]


async def test_429_retry_after_value_is_parsed(fake: FakeNanoBananaPro, make_provider: MakeProvider) -> None:
    provider = await make_provider(http_max_retries=0)
    fake.script(429, {"error": "Too many requests"}, {"Retry-After": "12"})
    with pytest.raises(RateLimited) as info:
        await provider.generate(request())
    assert info.value.retry_after == 12.0
    assert fake.calls["generate"] == 1


async def test_400_about_concurrency_is_busy_and_retried(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    fake.script(400, {"error": "Concurrent generation limit reached for your plan"})
    await provider.generate(request())
    assert fake.calls["generate"] == 2
    hook = NanoBananaProProvider.error_hook
    assert isinstance(hook(httpx.Response(400), {"error": "max concurrency"}), ProviderBusy)
    assert hook(httpx.Response(400), {"error": "prompt is required"}) is None
    assert hook(httpx.Response(500), {"error": "4K plan"}) is None


async def test_500_retried_then_success(fake: FakeNanoBananaPro, provider: NanoBananaProProvider) -> None:
    fake.script(500, {"error": "Generation failed"})
    result = await provider.generate(request())
    assert fake.calls["generate"] == 2
    assert result.images[0].data == fake.images[0]


@pytest.mark.parametrize("max_retries", [0, 3])
async def test_500_forever_gives_up_after_max_retries(
    fake: FakeNanoBananaPro, make_provider: MakeProvider, max_retries: int
) -> None:
    provider = await make_provider(http_max_retries=max_retries)
    fake.script(500, {"error": "Generation failed"}, times=None)
    with pytest.raises(ProviderUnavailable) as info:
        await provider.generate(request())
    assert info.value.detail == "Generation failed"
    assert fake.calls["generate"] == max_retries + 1


# --- broken answers and results -----------------------------------------------------------------------------


async def test_malformed_json(fake: FakeNanoBananaPro, provider: NanoBananaProProvider) -> None:
    fake.script_malformed_json()
    with pytest.raises(ProviderUnavailable) as info:
        await provider.generate(request())
    assert info.value.message == "The provider sent a malformed response."
    assert fake.calls["generate"] == 1


@pytest.mark.parametrize("body", [{"model": "x"}, {"error": "weird"}, ["not", "an", "object"], None])
async def test_unexpected_shape_is_malformed(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider, body: Any
) -> None:
    fake.script(200, body)
    with pytest.raises(ProviderUnavailable):
        await provider.generate(request())


@pytest.mark.parametrize("images", [[], None, [{}], [{"url": ""}]])
async def test_no_image_is_provider_unavailable(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider, images: Any
) -> None:
    fake.script(200, {"model": "nano-banana-2-1k", "created": 1, "images": images})
    with pytest.raises(ProviderUnavailable) as info:
        await provider.generate(request())
    assert info.value.message == "The provider finished without an image."
    assert fake.calls["generate"] == 1


async def test_plain_string_entries_and_data_uris(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    first, second, third = png_bytes(11, 7), png_bytes(13, 5), jpeg_bytes(6, 6)
    data_uri = "data:image/png;base64," + base64.b64encode(second).decode()
    fake.script(
        200,
        {
            "model": "nano-banana-2-1k",
            "images": [
                fake.add_file(first),
                {"url": data_uri},
                {"b64_json": base64.b64encode(third).decode()},
            ],
        },
    )
    result = await provider.generate(request())
    assert [i.data for i in result.images] == [first, second, third]
    assert [(i.mime_type, i.width, i.height) for i in result.images] == [
        ("image/png", 11, 7),
        ("image/png", 13, 5),
        ("image/jpeg", 6, 6),
    ]


async def test_dead_result_url(fake: FakeNanoBananaPro, provider: NanoBananaProProvider) -> None:
    fake.script_result("dead")
    with pytest.raises(ResultDownloadError) as info:
        await provider.generate(request())
    assert info.value.status == 404
    assert info.value.provider == "nanobanana_pro"
    assert fake.calls == {"generate": 1, "files": 1}


async def test_result_url_that_is_not_an_image(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    fake.script_result("not_image")
    with pytest.raises(ResultDownloadError) as info:
        await provider.generate(request())
    assert info.value.message == "The provider returned something that is not an image."


async def test_slow_result_url_times_out(fake: FakeNanoBananaPro, make_provider: MakeProvider) -> None:
    provider = await make_provider(download_timeout=0.3)
    fake.script_result("slow")
    started = time.monotonic()
    with pytest.raises(ResultDownloadError) as info:
        await provider.generate(request())
    assert info.value.detail == "timeout"
    assert time.monotonic() - started < 1.5


async def test_truncated_data_uri_is_unavailable(
    fake: FakeNanoBananaPro, provider: NanoBananaProProvider
) -> None:
    encoded = base64.b64encode(png_bytes(9, 9)).decode()
    fake.script(200, {"images": [{"url": "data:image/png;base64," + encoded[: len(encoded) // 2 + 1]}]})
    with pytest.raises(ProviderUnavailable):
        await provider.generate(request())


async def test_slow_server_times_out(fake: FakeNanoBananaPro, make_provider: MakeProvider) -> None:
    provider = await make_provider(http_read_timeout=0.3, http_max_retries=0)
    fake.script_delay(2.0, times=None)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await provider.generate(request())
    assert time.monotonic() - started < 1.5
    assert fake.calls["generate"] == 1


async def test_no_balance_endpoint(provider: NanoBananaProProvider) -> None:
    assert await provider.balance() is None


# --- one pooled client under load ---------------------------------------------------------------------------


async def test_50_concurrent_generations_share_one_client(
    fake: FakeNanoBananaPro, make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = await make_provider(nanobanana_pro_concurrency=5)  # pool: max(5 * 2, 16) = 16 connections
    client = provider.transport.client
    downloader_client = provider.transport.downloader.client
    fake.processing_delay = 0.05

    created: list[object] = []
    original_init = httpx.AsyncClient.__init__

    def counting_init(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        created.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", counting_init)

    results = await asyncio.gather(*(provider.generate(request(prompt=f"garden #{i}")) for i in range(50)))

    assert fake.calls == {"generate": 50, "files": 50}
    assert sorted(r.images[0].data for r in results) == sorted(fake.images)
    assert created == []
    assert provider.transport.client is client
    assert provider.transport.downloader.client is downloader_client
    assert 1 < fake.max_in_flight <= 16
    assert 1 < len(fake.peers) <= 16
