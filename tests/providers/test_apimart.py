"""ApiMartProvider against a loopback fake of APIMart's task API (no real host is ever contacted)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import pytest_asyncio

from bot.errors import (
    AuthError,
    ContentRefused,
    InvalidRequest,
    OutOfCredits,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ResultDownloadError,
    TaskFailed,
)
from bot.providers import build_downloader, build_providers
from bot.providers.apimart import LITE_MODEL, ApiMartProvider
from bot.providers.base import ProviderRequest, Reference, TaskState
from tests.conftest import make_settings
from tests.fakes.http import RecordedRequest, jpeg_bytes, png_bytes
from tests.fakes.providers.apimart import ApiMartScript, FakeApiMart, Fault

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def fake() -> AsyncIterator[FakeApiMart]:
    """A fake of its own, for tests that need special settings or stall the server."""
    async with FakeApiMart() as server:
        yield server


@asynccontextmanager
async def open_provider(fake: FakeApiMart, **overrides: Any) -> AsyncIterator[ApiMartProvider]:
    """A provider built the way the bot builds it, pointed at the fake."""
    overrides.setdefault("apimart_api_key", fake.key)
    settings = make_settings(apimart_base_url=fake.base_url, **overrides)
    downloader = build_downloader(settings)
    provider = build_providers(settings, downloader)["apimart"]
    assert isinstance(provider, ApiMartProvider)
    try:
        yield provider
    finally:
        await provider.aclose()
        await downloader.aclose()


def lite(**kw: Any) -> ProviderRequest:
    kw.setdefault("prompt", "a cyberpunk city at night")
    return ProviderRequest(model_id=LITE_MODEL, **kw)


def submits(fake: FakeApiMart) -> list[RecordedRequest]:
    return [r for r in fake.server.requests if r.method == "POST"]


def polls(fake: FakeApiMart) -> list[RecordedRequest]:
    return [r for r in fake.server.requests if r.method == "GET" and r.path.startswith("/v1/tasks/")]


async def test_fake_rejects_quoted_n_as_the_doc_warns(fake: FakeApiMart) -> None:
    # The adapter's integer n is only meaningful if the fake really rejects "1".
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        headers = {"Authorization": f"Bearer {fake.key}"}
        bad = await client.post(
            "/v1/images/generations", json={"model": LITE_MODEL, "prompt": "x", "n": "1"}, headers=headers
        )
        good = await client.post(
            "/v1/images/generations", json={"model": LITE_MODEL, "prompt": "x", "n": 1}, headers=headers
        )
    assert bad.status_code == 400 and "integer" in bad.json()["error"]["message"]
    assert good.status_code == 200


async def test_never_finishing_task_times_out_at_the_deadline(fake: FakeApiMart) -> None:
    fake.scripts.append(ApiMartScript(outcome="never"))
    async with open_provider(fake, task_deadline=0.3) as provider:
        started = time.monotonic()
        with pytest.raises(ProviderTimeout):
            await provider.generate(lite())
        elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 2.0
    [task_id] = fake.tasks
    assert fake.polls[task_id] >= 3


async def test_resume_after_restart_never_submits_again(fake: FakeApiMart) -> None:
    request = lite(count=2)
    async with open_provider(fake) as before_restart:
        task_id = await before_restart.submit(request)
    async with open_provider(fake) as after_restart:
        result = await after_restart.wait(task_id, request)

    assert fake.submit_calls == 1 and len(fake.tasks) == 1
    assert [img.data for img in result.images] == fake.image_bytes(task_id)
    assert result.task_id == task_id and result.cost == pytest.approx(2 * 0.0336)


async def test_wrong_key_is_auth_error_not_retried(fake: FakeApiMart) -> None:
    async with open_provider(fake, apimart_api_key="wrong-key") as provider:
        with pytest.raises(AuthError) as info:
            await provider.generate(lite())
    assert fake.submit_calls == 1
    assert "wrong-key" not in str(info.value) and "wrong-key" not in (info.value.detail or "")


async def test_persistent_500_gives_up_after_max_retries(fake: FakeApiMart) -> None:
    fake.submit_faults.extend(Fault() for _ in range(10))
    async with open_provider(fake, http_max_retries=2) as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.generate(lite())
    assert fake.submit_calls == 3


async def test_slow_submit_hits_read_timeout_and_is_not_resubmitted(fake: FakeApiMart) -> None:
    fake.submit_delay = 2.0
    async with open_provider(fake, http_read_timeout=0.2) as provider:
        started = time.monotonic()
        with pytest.raises(ProviderTimeout):
            await provider.generate(lite())
    assert time.monotonic() - started < 1.5
    # APIMart may have accepted the first request: sending it again could bill twice.
    assert fake.submit_calls == 1


async def test_slow_poll_hits_read_timeout(fake: FakeApiMart) -> None:
    fake.poll_delay = 2.0
    async with open_provider(fake, http_read_timeout=0.2, http_max_retries=1) as provider:
        with pytest.raises(ProviderTimeout):
            await provider.generate(lite())
    [task_id] = fake.tasks
    assert fake.polls[task_id] == 2  # a GET is safe to repeat


@pytest_asyncio.fixture(loop_scope="class", scope="class")
async def shared() -> AsyncIterator[tuple[FakeApiMart, ApiMartProvider]]:
    """One fake server and one provider for all of :class:`TestSharedServer` (on the class's loop)."""
    async with FakeApiMart() as server, open_provider(server) as provider:
        yield server, provider


@pytest.mark.asyncio(loop_scope="class")
class TestSharedServer:
    """Tests sharing one fake server and one provider (one pooled client), reset before each test.

    Tests that need their own settings or a stalling server stay module-level with their own fake.
    """

    @pytest.fixture
    def fake(self, shared: tuple[FakeApiMart, ApiMartProvider]) -> FakeApiMart:
        shared[0].reset()
        return shared[0]

    @pytest.fixture
    def provider(self, shared: tuple[FakeApiMart, ApiMartProvider]) -> ApiMartProvider:
        return shared[1]

    async def test_text_to_image_end_to_end(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        result = await provider.generate(lite(aspect_ratio="16:9"))

        assert result.task_id is not None
        assert [img.data for img in result.images] == fake.image_bytes(result.task_id)
        image = result.images[0]
        assert (image.mime_type, image.width, image.height) == ("image/png", 32, 32)
        assert result.provider == "apimart" and result.provider_model == LITE_MODEL
        assert result.cost == pytest.approx(0.0336) and result.cost_unit == "usd-estimate"

        [submit] = submits(fake)
        assert submit.path == "/v1/images/generations"
        assert submit.json == {
            "model": LITE_MODEL,
            "prompt": "a cyberpunk city at night",
            "size": "16:9",
            "resolution": "1K",
            "n": 1,
        }
        assert type(submit.json["n"]) is int
        assert all(p.query == {"language": "en"} for p in polls(fake))
        assert submit.headers["authorization"] == f"Bearer {fake.key}"

    async def test_size_is_auto_without_aspect_ratio(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        await provider.generate(lite())
        assert submits(fake)[0].json["size"] == "auto"

    async def test_cost_only_recorded_for_lite(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        result = await provider.generate(
            ProviderRequest(model_id="gemini-3.1-flash-image-preview", prompt="x")
        )
        assert result.images and result.cost is None and result.cost_unit is None

    async def test_multiple_images_all_downloaded(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        result = await provider.generate(lite(count=4))

        assert submits(fake)[0].json["n"] == 4
        assert result.task_id is not None
        served = fake.image_bytes(result.task_id)
        assert len(served) == 4 and len(set(served)) == 4
        assert [img.data for img in result.images] == served
        assert result.cost == pytest.approx(4 * 0.0336)

    @pytest.mark.parametrize("count", [0, 5])
    async def test_count_outside_1_to_4_is_refused_before_any_call(
        self, fake: FakeApiMart, provider: ApiMartProvider, count: int
    ) -> None:
        with pytest.raises(InvalidRequest):
            await provider.submit(lite(count=count))
        assert fake.submit_calls == 0

    async def test_references_inline_as_data_uris(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        png, jpeg = png_bytes(20, 20), jpeg_bytes()
        refs = (
            Reference("image/png", data=png),
            Reference("image/jpeg", data=jpeg, url="https://cdn.example/a.jpg"),
        )
        await provider.generate(lite(references=refs))

        urls = submits(fake)[0].json["image_urls"]
        assert urls[0].startswith("data:image/png;base64,")
        assert base64.b64decode(urls[0].split(",", 1)[1]) == png
        # Bytes win over the URL: APIMart need not reach any host of ours.
        assert urls[1].startswith("data:image/jpeg;base64,")
        assert base64.b64decode(urls[1].split(",", 1)[1]) == jpeg

    async def test_reference_by_url(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        await provider.generate(
            lite(references=(Reference("image/webp", url="https://cdn.example/ref.webp"),))
        )
        assert submits(fake)[0].json["image_urls"] == ["https://cdn.example/ref.webp"]

    @pytest.mark.parametrize("mime", ["image/gif", "image/heic"])
    async def test_unsupported_reference_format_is_refused(
        self, fake: FakeApiMart, provider: ApiMartProvider, mime: str
    ) -> None:
        with pytest.raises(InvalidRequest):
            await provider.submit(lite(references=(Reference(mime, data=b"GIF89a..."),)))
        assert fake.submit_calls == 0

    async def test_more_than_14_references_refused(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        refs = tuple(Reference("image/png", url=f"https://cdn.example/{i}.png") for i in range(15))
        with pytest.raises(InvalidRequest):
            await provider.submit(lite(references=refs))
        assert fake.submit_calls == 0

    async def test_polls_through_pending_and_processing(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        task_id = await provider.submit(lite())
        first, second, third = [await provider.poll(task_id) for _ in range(3)]

        assert (first.state, first.raw_status) == (TaskState.PENDING, "pending")
        assert (second.state, second.raw_status) == (TaskState.PENDING, "processing")
        assert first.progress is not None and 0 < first.progress < second.progress < 1  # type: ignore[operator]
        assert third.state is TaskState.DONE and len(third.outputs) == 1
        assert fake.polls[task_id] == 3

    async def test_generate_waits_for_the_configured_number_of_polls(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        fake.scripts.append(ApiMartScript(polls=5))
        result = await provider.generate(lite())
        assert result.task_id is not None and fake.polls[result.task_id] == 5

    @pytest.mark.parametrize("url_style", ["list", "string", "strings"])
    async def test_both_url_spellings(
        self, fake: FakeApiMart, provider: ApiMartProvider, url_style: str
    ) -> None:
        fake.scripts.append(ApiMartScript(url_style=url_style, polls=1))  # type: ignore[arg-type]
        result = await provider.generate(lite(count=2))
        assert result.task_id is not None
        assert [img.data for img in result.images] == fake.image_bytes(result.task_id)
        assert len(result.images) == 2

    @pytest.mark.parametrize("shape", ["object", "id"])
    async def test_submit_answer_variants(
        self, fake: FakeApiMart, provider: ApiMartProvider, shape: str
    ) -> None:
        fake.scripts.append(ApiMartScript(submit_shape=shape))  # type: ignore[arg-type]
        task_id = await provider.submit(lite())
        assert task_id in fake.tasks

    async def test_submit_answer_without_task_id(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        fake.scripts.append(ApiMartScript(submit_shape="missing"))
        with pytest.raises(ProviderUnavailable):
            await provider.submit(lite())
        assert fake.submit_calls == 1

    async def test_unknown_status_keeps_polling(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        task_id = await provider.submit(lite())
        fake.poll_faults.append(Fault(200, {"code": 200, "data": {"id": task_id, "status": "warming_up"}}))
        status = await provider.poll(task_id)
        assert status.state is TaskState.PENDING and status.raw_status == "warming_up"

    @pytest.mark.parametrize(
        "error",
        [
            "Upstream model error: quota of upstream exhausted",
            {"message": "Upstream returned no image", "code": 500},
        ],
    )
    async def test_failed_task(self, fake: FakeApiMart, provider: ApiMartProvider, error: Any) -> None:
        fake.scripts.append(ApiMartScript(outcome="failed", error=error))
        with pytest.raises(TaskFailed) as info:
            await provider.generate(lite())
        text = error if isinstance(error, str) else error["message"]
        assert text in info.value.message
        assert not isinstance(info.value, ContentRefused)

    @pytest.mark.parametrize(
        "error",
        [
            "Your prompt was blocked by the safety system",
            {"message": "The request violates our content moderation rules", "code": "content_rejected"},
            {"message": "检测到敏感内容", "code": 400},
            "PROHIBITED_CONTENT",
        ],
    )
    async def test_failed_for_safety_is_content_refused(
        self, fake: FakeApiMart, provider: ApiMartProvider, error: Any
    ) -> None:
        fake.scripts.append(ApiMartScript(outcome="failed", error=error))
        with pytest.raises(ContentRefused):
            await provider.generate(lite())

    async def test_cancelled_task(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        fake.scripts.append(ApiMartScript(outcome="cancelled"))
        with pytest.raises(TaskFailed, match="cancelled"):
            await provider.generate(lite())

    async def test_poll_of_unknown_task_is_task_failed(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        with pytest.raises(TaskFailed) as info:
            await provider.poll("task_does_not_exist")
        assert info.value.status == 404

    async def test_400_carries_the_providers_message(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        fake.submit_faults.append(
            Fault(
                400,
                {"error": {"message": "prompt is too long", "type": "invalid_request_error", "code": 400}},
            )
        )
        with pytest.raises(InvalidRequest, match="prompt is too long"):
            await provider.generate(lite())
        assert fake.submit_calls == 1

    async def test_validation_400_from_the_fake(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        # A ratio APIMart does not list: the adapter passes it through, the fake (like APIMart) refuses it.
        with pytest.raises(InvalidRequest, match="size"):
            await provider.generate(lite(aspect_ratio="4:1"))
        assert fake.submit_calls == 1

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (402, {"error": {"message": "Payment required", "type": "billing_error", "code": 402}}),
            (
                403,
                {
                    "error": {
                        "message": "用户额度不足",
                        "type": "new_api_error",
                        "code": "insufficient_user_quota",
                    }
                },
            ),
            (429, {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}),
        ],
    )
    async def test_out_of_credits_not_retried(
        self, fake: FakeApiMart, provider: ApiMartProvider, status: int, body: Any
    ) -> None:
        fake.submit_faults.append(Fault(status, body))
        with pytest.raises(OutOfCredits):
            await provider.generate(lite())
        assert fake.submit_calls == 1

    async def test_403_without_balance_words_is_auth_error(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        fake.submit_faults.append(
            Fault(403, {"error": {"message": "Insufficient permissions for this model", "code": 403}})
        )
        with pytest.raises(AuthError):
            await provider.generate(lite())

    async def test_400_safety_refusal_is_content_refused(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        fake.submit_faults.append(Fault(400, {"code": 400, "msg": "prompt contains sensitive words"}))
        with pytest.raises(ContentRefused):
            await provider.generate(lite())

    @pytest.mark.parametrize(
        ("code", "error"),
        [
            (402, OutOfCredits),
            (401, AuthError),
            (400, InvalidRequest),
            (429, RateLimited),
            (503, ProviderUnavailable),
        ],
    )
    async def test_envelope_code_on_http_200(
        self, fake: FakeApiMart, provider: ApiMartProvider, code: int, error: type[Exception]
    ) -> None:
        fake.submit_faults.append(Fault(200, {"code": code, "message": "something is wrong"}))
        with pytest.raises(error):
            await provider.submit(lite())
        assert fake.submit_calls == 1

    async def test_429_with_retry_after_is_retried(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        fake.submit_faults.append(
            Fault(429, {"error": {"message": "Too many requests", "code": 429}}, {"Retry-After": "1"})
        )
        result = await provider.generate(lite())
        assert result.images
        assert fake.submit_calls == 2 and len(fake.tasks) == 1

    async def test_500_once_is_retried(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        fake.submit_faults.append(Fault())
        result = await provider.generate(lite())
        assert result.images and fake.submit_calls == 2

    async def test_malformed_poll_once_is_tolerated(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        fake.poll_faults.append(Fault(malformed='{"code": 200, "data": {"status": "proc'))
        result = await provider.generate(lite())
        assert result.images and fake.submit_calls == 1

    async def test_failing_status_checks_do_not_abandon_the_task(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        fake.poll_faults.extend(Fault(malformed="<html>502 Bad Gateway</html>") for _ in range(5))
        # The task keeps running (and will be billed) at the provider: keep checking, never resubmit.
        result = await provider.generate(lite())
        assert result.images
        assert fake.submit_calls == 1

    async def test_poll_429_with_retry_after_is_retried(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        fake.poll_faults.append(Fault(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}))
        result = await provider.generate(lite())
        assert result.images
        assert result.task_id is not None and fake.polls[result.task_id] == 4  # 3 + the refused one

    async def test_dead_result_url(self, fake: FakeApiMart, provider: ApiMartProvider) -> None:
        fake.scripts.append(ApiMartScript(dead_links=True))
        with pytest.raises(ResultDownloadError) as info:
            await provider.generate(lite())
        assert info.value.provider == "apimart"

    async def test_50_concurrent_generations_share_one_client(
        self, fake: FakeApiMart, provider: ApiMartProvider
    ) -> None:
        client = provider.transport.client
        results = await asyncio.gather(*(provider.generate(lite(prompt=f"image {i}")) for i in range(50)))

        assert fake.submit_calls == 50
        assert len({r.task_id for r in results}) == 50
        for result in results:
            assert result.task_id is not None
            assert [img.data for img in result.images] == fake.image_bytes(result.task_id)
        assert provider.transport.client is client
