"""MountseaProvider against a loopback fake of the Mountsea hub (no real host is ever contacted)."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio

from bot.catalog import EXTREME_RATIOS, SOCIAL_RATIOS, STANDARD_RATIOS
from bot.errors import (
    AuthError,
    ContentRefused,
    InvalidRequest,
    OutOfCredits,
    ProviderTimeout,
    ProviderUnavailable,
    ResultDownloadError,
    TaskFailed,
)
from bot.providers import build_downloader, build_providers
from bot.providers.base import ProviderRequest, Reference, TaskState
from bot.providers.mountsea import (
    GPT_MAX_PIXELS,
    GPT_MIN_PIXELS,
    MountseaProvider,
    gpt_image_size,
    gpt_size_allowed,
)
from tests.conftest import make_settings
from tests.fakes.http import RecordedRequest, jpeg_bytes, png_bytes
from tests.fakes.providers.mountsea import DOC_MODELS, FakeMountsea, Fault, MountseaScript, check_image_size

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def fake() -> AsyncIterator[FakeMountsea]:
    """A fake of its own, for tests that need special settings or stall the server."""
    async with FakeMountsea() as server:
        yield server


@asynccontextmanager
async def open_provider(fake: FakeMountsea, **overrides: Any) -> AsyncIterator[MountseaProvider]:
    """A provider built the way the bot builds it, pointed at the fake."""
    overrides.setdefault("mountsea_api_key", fake.key)
    settings = make_settings(mountsea_base_url=fake.base_url, **overrides)
    downloader = build_downloader(settings)
    provider = build_providers(settings, downloader)["mountsea"]
    assert isinstance(provider, MountseaProvider)
    try:
        yield provider
    finally:
        await provider.aclose()
        await downloader.aclose()


def req(model_id: str = "nano-banana-pro", **kw: Any) -> ProviderRequest:
    kw.setdefault("prompt", "a black lab swimming in a pool")
    return ProviderRequest(model_id=model_id, **kw)


def submits(fake: FakeMountsea) -> list[RecordedRequest]:
    return [r for r in fake.server.requests if r.method == "POST"]


def sent_input(fake: FakeMountsea) -> dict[str, Any]:
    return submits(fake)[-1].json["input"]


URL_REF = Reference("image/jpeg", url="https://cdn.example/ref.jpg")


GPT_RATIOS = STANDARD_RATIOS + SOCIAL_RATIOS + ("3:1", "1:3")
TARGETS = {"1K": 1024 * 1024, "2K": 2048 * 2048}


@pytest.mark.parametrize("resolution", ["1K", "2K", "4K"])
@pytest.mark.parametrize("ratio", GPT_RATIOS)
def test_gpt_image_size_table(ratio: str, resolution: str) -> None:
    width, height = gpt_image_size(ratio, resolution)
    a, b = (int(x) for x in ratio.split(":"))

    assert width % 16 == 0 and height % 16 == 0
    assert max(width, height) <= 3840
    assert max(width, height) <= 3 * min(width, height)
    assert GPT_MIN_PIXELS <= width * height <= GPT_MAX_PIXELS
    assert width * b == height * a, "every catalog ratio has an exact allowed size"
    assert gpt_size_allowed(width, height)
    assert check_image_size({"width": width, "height": height}, edit=False) is None  # the fake agrees
    if resolution in TARGETS:
        assert abs(math.log(width * height / TARGETS[resolution])) < math.log(1.3)


@pytest.mark.parametrize("ratio", GPT_RATIOS)
def test_gpt_image_size_grows_with_resolution(ratio: str) -> None:
    areas = [math.prod(gpt_image_size(ratio, res)) for res in ("1K", "2K", "4K")]
    assert areas[0] < areas[1] < areas[2]
    # 4K is as large as allowed: no exact-ratio size 16 px larger in each dimension still fits.
    width, height = gpt_image_size(ratio, "4K")
    a, b = (int(x) for x in ratio.split(":"))
    g = math.gcd(a, b)
    a, b = a // g, b // g
    step = math.lcm(16 // math.gcd(16, a), 16 // math.gcd(16, b))
    assert not gpt_size_allowed(width + step * a, height + step * b)


@pytest.mark.parametrize(
    ("ratio", "resolution", "expected"),
    [
        ("1:1", "1K", (1024, 1024)),
        ("1:1", "2K", (2048, 2048)),
        ("1:1", "4K", (2880, 2880)),
        ("16:9", "1K", (1280, 720)),
        ("16:9", "4K", (3840, 2160)),
        ("9:16", "4K", (2160, 3840)),
        ("3:2", "1K", (1248, 832)),
    ],
)
def test_gpt_image_size_known_values(ratio: str, resolution: str, expected: tuple[int, int]) -> None:
    assert gpt_image_size(ratio, resolution) == expected


@pytest.mark.parametrize(
    ("ratio", "resolution"), [*((r, "1K") for r in EXTREME_RATIOS), ("1:1", "8K"), ("x", "1K")]
)
def test_gpt_image_size_refuses_what_gpt_image_2_cannot_make(ratio: str, resolution: str) -> None:
    with pytest.raises(InvalidRequest):
        gpt_image_size(ratio, resolution)


def test_fake_model_table_matches_the_adapter() -> None:
    from bot.providers.mountsea import MODELS

    assert set(MODELS) == set(DOC_MODELS)
    for name, schema in MODELS.items():
        assert schema.edit == DOC_MODELS[name].edit
        assert set(schema.aspect_ratios) == set(DOC_MODELS[name].aspect_ratios)
        assert set(schema.resolutions or ()) == set(DOC_MODELS[name].resolutions)


async def test_never_finishing_task_times_out_at_the_deadline(fake: FakeMountsea) -> None:
    fake.scripts.append(MountseaScript(outcome="never"))
    async with open_provider(fake, task_deadline=0.3) as provider:
        started = time.monotonic()
        with pytest.raises(ProviderTimeout):
            await provider.generate(req())
        elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 2.0
    [task_id] = fake.tasks
    assert fake.polls[task_id] >= 3


async def test_resume_after_restart_never_submits_again(fake: FakeMountsea) -> None:
    request = req("gpt-image-2", aspect_ratio="1:1", count=3)
    async with open_provider(fake) as before_restart:
        task_id = await before_restart.submit(request)
    async with open_provider(fake) as after_restart:
        result = await after_restart.wait(task_id, request)
    assert fake.submit_calls == 1 and len(fake.tasks) == 1
    assert [img.data for img in result.images] == fake.image_bytes(task_id)


async def test_wrong_key_is_auth_error_not_retried(fake: FakeMountsea) -> None:
    async with open_provider(fake, mountsea_api_key="not-the-key") as provider:
        with pytest.raises(AuthError) as info:
            await provider.generate(req())
    assert fake.submit_calls == 1
    assert "not-the-key" not in str(info.value) and "not-the-key" not in (info.value.detail or "")


async def test_slow_submit_hits_read_timeout_and_is_not_resubmitted(fake: FakeMountsea) -> None:
    fake.submit_delay = 2.0
    async with open_provider(fake, http_read_timeout=0.2) as provider:
        started = time.monotonic()
        with pytest.raises(ProviderTimeout):
            await provider.generate(req())
    assert time.monotonic() - started < 1.5
    assert fake.submit_calls == 1


async def test_slow_poll_hits_read_timeout(fake: FakeMountsea) -> None:
    fake.poll_delay = 2.0
    async with open_provider(fake, http_read_timeout=0.2, http_max_retries=1) as provider:
        with pytest.raises(ProviderTimeout):
            await provider.generate(req())
    [task_id] = fake.tasks
    assert fake.polls[task_id] == 2


@pytest_asyncio.fixture(loop_scope="class", scope="class")
async def shared() -> AsyncIterator[tuple[FakeMountsea, MountseaProvider]]:
    """One fake server and one provider for all of :class:`TestSharedServer` (on the class's loop)."""
    async with FakeMountsea() as server, open_provider(server) as provider:
        yield server, provider


@pytest.mark.asyncio(loop_scope="class")
class TestSharedServer:
    """Tests sharing one fake server and one provider (one pooled client), reset before each test.

    Tests that need their own settings or a stalling server stay module-level with their own fake.
    """

    @pytest.fixture
    def fake(self, shared: tuple[FakeMountsea, MountseaProvider]) -> FakeMountsea:
        shared[0].reset()
        return shared[0]

    @pytest.fixture
    def provider(self, shared: tuple[FakeMountsea, MountseaProvider]) -> MountseaProvider:
        return shared[1]

    async def test_text_to_image_end_to_end(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        result = await provider.generate(req(aspect_ratio="16:9", resolution="2K", seed=7))

        assert result.task_id is not None
        assert [img.data for img in result.images] == fake.image_bytes(result.task_id)
        assert (result.images[0].mime_type, result.images[0].width, result.images[0].height) == (
            "image/png",
            40,
            24,
        )
        assert result.provider == "mountsea" and result.provider_model == "nano-banana-pro"
        assert result.cost is None  # the doc publishes no price

        [submit] = submits(fake)
        assert submit.path == "/hub/v1/image"
        assert submit.headers["authorization"] == f"Bearer {fake.key}"
        assert submit.json == {
            "model": "nano-banana-pro",
            "input": {
                "prompt": "a black lab swimming in a pool",
                "num_images": 1,
                "aspect_ratio": "16:9",
                "resolution": "2K",
                "seed": 7,
                "output_format": "png",
            },
        }
        assert type(submit.json["input"]["num_images"]) is int

    async def test_strict_safety_sends_the_strictest_tolerance(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        await provider.generate(
            req("nano-banana-2", strict_safety=True, aspect_ratio="8:1", resolution="0.5K")
        )
        assert sent_input(fake)["safety_tolerance"] == "1"
        assert sent_input(fake)["aspect_ratio"] == "8:1"

    async def test_plain_nano_banana_sends_no_resolution(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        await provider.generate(req("nano-banana", aspect_ratio="4:5"))
        assert "resolution" not in sent_input(fake)

    async def test_plain_nano_banana_refuses_2k(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        with pytest.raises(InvalidRequest):
            await provider.submit(req("nano-banana", resolution="2K"))
        assert fake.submit_calls == 0

    @pytest.mark.parametrize(
        ("model", "ratio"), [("nano-banana-pro", "4:1"), ("nano-banana", "auto"), ("nano-banana-pro", "7:5")]
    )
    async def test_ratio_outside_the_models_table_is_refused(
        self, fake: FakeMountsea, provider: MountseaProvider, model: str, ratio: str
    ) -> None:
        with pytest.raises(InvalidRequest):
            await provider.submit(req(model, aspect_ratio=ratio))
        assert fake.submit_calls == 0

    async def test_unknown_model_is_refused(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        with pytest.raises(InvalidRequest):
            await provider.submit(req("veo-3.1-fast"))
        assert fake.submit_calls == 0

    async def test_multiple_images(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        result = await provider.generate(req(count=4))
        assert sent_input(fake)["num_images"] == 4
        assert result.task_id is not None
        served = fake.image_bytes(result.task_id)
        assert len(set(served)) == 4 and [img.data for img in result.images] == served

    async def test_reference_url_uses_the_edit_model(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        # The orchestrator normally picks "-edit"; the adapter adds it when a caller did not.
        await provider.generate(req("nano-banana-2", references=(URL_REF,), resolution="4K"))
        [submit] = submits(fake)
        assert submit.json["model"] == "nano-banana-2-edit"
        assert submit.json["input"]["image_urls"] == ["https://cdn.example/ref.jpg"]

    async def test_reference_without_url_is_sent_as_data_uri(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        png, jpeg = png_bytes(12, 12), jpeg_bytes()
        refs = (
            Reference("image/png", data=png),
            Reference("image/jpeg", data=jpeg, url="https://cdn.example/j.jpg"),
        )
        await provider.generate(req("nano-banana-pro-edit", references=refs))
        urls = sent_input(fake)["image_urls"]
        assert urls[0].startswith("data:image/png;base64,")
        assert base64.b64decode(urls[0].split(",", 1)[1]) == png
        assert urls[1] == "https://cdn.example/j.jpg"  # a public URL is preferred: a smaller request

    async def test_edit_model_without_references_is_refused(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        with pytest.raises(InvalidRequest):
            await provider.submit(req("nano-banana-edit"))
        assert fake.submit_calls == 0

    async def test_wait_accepts_an_edit_model_without_references(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        # A resumed job rebuilds its request without the reference bytes: waiting must still work.
        task_id = await provider.submit(req("nano-banana-edit", references=(URL_REF,)))
        result = await provider.wait(task_id, req("nano-banana-edit"))
        assert result.images and result.provider_model == "nano-banana-edit"

    async def test_gpt_image_2_body(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        result = await provider.generate(
            req("gpt-image-2", aspect_ratio="16:9", resolution="4K", seed=3, strict_safety=True, count=2)
        )
        assert len(result.images) == 2
        assert submits(fake)[0].json == {
            "model": "gpt-image-2",
            "input": {
                "prompt": "a black lab swimming in a pool",
                "num_images": 2,
                "image_size": {"width": 3840, "height": 2160},
                "quality": "high",
                "output_format": "png",
            },
        }

    async def test_gpt_image_2_without_ratio_is_square(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        await provider.generate(req("gpt-image-2", resolution="1K"))
        assert sent_input(fake)["image_size"] == {"width": 1024, "height": 1024}

    async def test_gpt_image_2_edit_sizes(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        await provider.generate(req("gpt-image-2-edit", references=(URL_REF,)))
        assert sent_input(fake)["image_size"] == "auto"
        await provider.generate(
            req("gpt-image-2", references=(URL_REF,), aspect_ratio="3:2", resolution="2K")
        )
        assert submits(fake)[-1].json["model"] == "gpt-image-2-edit"
        assert sent_input(fake)["image_size"] == {"width": 2496, "height": 1664}

    async def test_polls_through_pending_and_processing(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        task_id = await provider.submit(req())
        statuses = [await provider.poll(task_id) for _ in range(3)]
        assert [s.raw_status for s in statuses[:2]] == ["pending", "processing"]
        assert all(s.state is TaskState.PENDING for s in statuses[:2])
        assert statuses[2].state is TaskState.DONE and len(statuses[2].outputs) == 1
        assert fake.polls[task_id] == 3

    async def test_completed_but_not_ready_keeps_polling(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.scripts.append(MountseaScript(polls=1, completed_not_ready=2))
        result = await provider.generate(req())
        assert result.task_id is not None and fake.polls[result.task_id] == 3

    @pytest.mark.parametrize("shape", ["task_id", "taskId", "wrapped"])
    async def test_submit_answer_spellings(
        self, fake: FakeMountsea, provider: MountseaProvider, shape: str
    ) -> None:
        fake.scripts.append(MountseaScript(submit_shape=shape))  # type: ignore[arg-type]
        result = await provider.generate(req())
        assert result.task_id in fake.tasks

    @pytest.mark.parametrize("shape", ["images", "image_strings", "urls", "list", "data_uris", "output"])
    async def test_result_data_shapes(
        self, fake: FakeMountsea, provider: MountseaProvider, shape: str
    ) -> None:
        fake.scripts.append(MountseaScript(data_shape=shape, polls=1))  # type: ignore[arg-type]
        result = await provider.generate(req(count=2))
        assert result.task_id is not None
        assert [img.data for img in result.images] == fake.image_bytes(result.task_id)
        assert len(result.images) == 2

    async def test_result_data_single_image_object(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.scripts.append(MountseaScript(data_shape="image_object", polls=1))
        result = await provider.generate(req())
        assert result.task_id is not None
        assert [img.data for img in result.images] == fake.image_bytes(result.task_id)

    async def test_failed_task(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        fake.scripts.append(
            MountseaScript(outcome="failed", error_message="Upstream model returned no image")
        )
        with pytest.raises(TaskFailed, match="Upstream model returned no image") as info:
            await provider.generate(req())
        assert not isinstance(info.value, ContentRefused)

    @pytest.mark.parametrize(
        ("code", "message"),
        [
            ("content_policy_violation", "The request was rejected"),
            ("generation_failed", "NSFW content detected in the output"),
            (None, "Image blocked by the safety checker"),
        ],
    )
    async def test_failed_for_safety_is_content_refused(
        self, fake: FakeMountsea, provider: MountseaProvider, code: str | None, message: str
    ) -> None:
        fake.scripts.append(MountseaScript(outcome="failed", error_code=code, error_message=message))
        with pytest.raises(ContentRefused):
            await provider.generate(req())

    async def test_provider_side_timeout_is_provider_timeout(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.scripts.append(MountseaScript(outcome="timeout", polls=2))
        started = time.monotonic()
        with pytest.raises(ProviderTimeout) as info:
            await provider.generate(req())
        assert time.monotonic() - started < 1.0  # reported by the provider, not our deadline
        assert info.value.retryable

    async def test_cancelled_task(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        fake.scripts.append(MountseaScript(outcome="cancelled"))
        with pytest.raises(TaskFailed, match="cancelled"):
            await provider.generate(req())

    async def test_poll_of_unknown_task_is_task_failed(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        with pytest.raises(TaskFailed) as info:
            await provider.poll("hub-00000000-missing")
        assert info.value.status == 404

    async def test_400_carries_the_providers_message(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.submit_faults.append(
            Fault(400, {"message": "prompt is too long", "error_code": "invalid_input"})
        )
        with pytest.raises(InvalidRequest, match="prompt is too long"):
            await provider.generate(req())
        assert fake.submit_calls == 1

    async def test_400_content_policy_is_content_refused(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.submit_faults.append(
            Fault(400, {"error": {"code": "content_policy_violation", "message": "rejected"}})
        )
        with pytest.raises(ContentRefused):
            await provider.generate(req())
        assert fake.submit_calls == 1

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (402, {"message": "Payment required"}),
            (403, {"error_code": "insufficient_balance", "error_message": "Insufficient balance"}),
        ],
    )
    async def test_out_of_credits_not_retried(
        self, fake: FakeMountsea, provider: MountseaProvider, status: int, body: Any
    ) -> None:
        fake.submit_faults.append(Fault(status, body))
        with pytest.raises(OutOfCredits):
            await provider.generate(req())
        assert fake.submit_calls == 1

    async def test_429_with_retry_after_is_retried(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.submit_faults.append(Fault(429, {"message": "Too many requests"}, {"Retry-After": "2"}))
        result = await provider.generate(req())
        assert result.images and fake.submit_calls == 2 and len(fake.tasks) == 1

    async def test_500_once_is_retried(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        fake.submit_faults.append(Fault())
        result = await provider.generate(req())
        assert result.images and fake.submit_calls == 2

    async def test_submit_answer_without_task_id(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.submit_faults.append(Fault(200, {"status": "pending", "model": "nano-banana-pro"}))
        with pytest.raises(ProviderUnavailable):
            await provider.submit(req())
        assert fake.submit_calls == 1

    async def test_malformed_poll_once_is_tolerated(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.poll_faults.append(Fault(malformed='{"task_id": "hub-1", "status": '))
        result = await provider.generate(req())
        assert result.images and fake.submit_calls == 1

    async def test_failing_status_checks_do_not_abandon_the_task(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.poll_faults.extend(Fault(malformed="not json at all") for _ in range(5))
        # The task keeps running (and will be billed) at the provider: keep checking, never resubmit.
        result = await provider.generate(req())
        assert result.images
        assert fake.submit_calls == 1

    async def test_poll_429_with_retry_after_is_retried(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        fake.poll_faults.append(Fault(429, {"message": "slow down"}, {"Retry-After": "1"}))
        result = await provider.generate(req())
        assert result.task_id is not None and fake.polls[result.task_id] == 4

    async def test_dead_result_url(self, fake: FakeMountsea, provider: MountseaProvider) -> None:
        fake.scripts.append(MountseaScript(dead_links=True))
        with pytest.raises(ResultDownloadError) as info:
            await provider.generate(req())
        assert info.value.provider == "mountsea"

    async def test_50_concurrent_generations_share_one_client(
        self, fake: FakeMountsea, provider: MountseaProvider
    ) -> None:
        client = provider.transport.client
        results = await asyncio.gather(*(provider.generate(req(prompt=f"dog {i}")) for i in range(50)))
        assert fake.submit_calls == 50
        assert len({r.task_id for r in results}) == 50
        for result in results:
            assert result.task_id is not None
            assert [img.data for img in result.images] == fake.image_bytes(result.task_id)
        assert provider.transport.client is client
