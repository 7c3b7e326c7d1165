"""The generation pipeline: reference fitting, failover, count splitting, concurrency caps, task hooks.

Providers here are small in-test :class:`ImageProvider` subclasses: no network is involved.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from PIL import Image

from bot import images
from bot.catalog import Route, get_model
from bot.errors import (
    AuthError,
    ContentRefused,
    InvalidImage,
    InvalidRequest,
    OutOfCredits,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from bot.generation import GenerationSpec, Generator, load_references, prepare_references
from bot.images import inspect_image
from bot.providers.base import (
    GeneratedImage,
    ImageProvider,
    ProviderRequest,
    ProviderResult,
    Reference,
    TaskProvider,
    TaskState,
    TaskStatus,
)
from bot.providers.transport import Downloader, Transport
from tests.conftest import make_settings
from tests.fakes.http import jpeg_bytes, noisy_png, png_bytes

MAX_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 40_000_000


def route_of(model: str, provider: str) -> Route:
    spec = get_model(model)
    assert spec is not None
    return next(r for r in spec.routes if r.provider == provider)


def heic_bytes(width: int = 64, height: int = 48) -> bytes:
    ramp = Image.linear_gradient("L").resize((width, height))
    buf = io.BytesIO()
    Image.merge("RGB", (ramp, ramp.rotate(90), ramp)).save(buf, "HEIF", quality=80)
    return buf.getvalue()


# --- prepare_references -------------------------------------------------------------------------------------


async def test_oversized_reference_is_shrunk_for_a_route_with_a_byte_limit() -> None:
    route = route_of("nano-banana-pro", "nanobanana_pro")
    assert route.max_reference_bytes == 2_500_000
    data = noisy_png(1000, 1000)
    assert len(data) > 2_500_000  # ~3 MB: random pixels do not compress
    ref = Reference("image/png", data=data, url="https://cdn.example.com/ref.png")

    (fitted,) = await prepare_references(route, [ref])

    assert fitted.data is not None
    assert len(fitted.data) <= 2_500_000
    assert fitted.url is None  # the URL describes the original bytes, not these
    assert fitted.mime_type in route.reference_mime
    info = inspect_image(fitted.data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert info.mime_type == fitted.mime_type
    assert info.width / info.height == pytest.approx(1.0, abs=0.01)


async def test_fitting_reference_passes_through_unchanged() -> None:
    route = route_of("nano-banana-pro", "nanobanana_pro")
    data = png_bytes(64, 64)
    ref = Reference("image/png", data=data, url="https://cdn.example.com/ok.png")
    url_only = Reference("image/jpeg", url="https://cdn.example.com/remote.jpg")

    fitted = await prepare_references(route, [ref, url_only])

    assert fitted[0].data == data  # byte-identical
    assert fitted[0].url == "https://cdn.example.com/ok.png"
    assert fitted[0].mime_type == "image/png"
    assert fitted[1] == url_only


async def test_heic_reference_is_converted_for_a_route_without_heic() -> None:
    route = route_of("nano-banana-lite", "apimart")
    assert "image/heic" not in route.reference_mime
    data = heic_bytes(64, 48)
    ref = Reference("image/heic", data=data, url="https://cdn.example.com/photo.heic")

    (fitted,) = await prepare_references(route, [ref])

    assert fitted.mime_type in {"image/jpeg", "image/png", "image/webp"}
    assert fitted.url is None
    assert fitted.data is not None
    info = inspect_image(fitted.data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert (info.mime_type, info.width, info.height) == (fitted.mime_type, 64, 48)


async def test_heic_reference_is_kept_for_a_route_that_takes_heic() -> None:
    route = route_of("nano-banana-pro", "listenhub")
    data = heic_bytes()
    (fitted,) = await prepare_references(route, [Reference("image/heic", data=data, url="https://x/a.heic")])
    assert (fitted.data, fitted.url) == (data, "https://x/a.heic")


async def test_reference_conversion_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = images.normalize_reference

    def recording(*args: Any, **kwargs: Any) -> images.EncodedImage:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "normalize_reference", recording)
    route = route_of("nano-banana-lite", "apimart")
    refs = [Reference("image/heic", data=heic_bytes()), Reference("image/heic", data=heic_bytes(32, 32))]

    fitted = await prepare_references(route, refs)

    assert len(threads) == 2
    assert threading.get_ident() not in threads
    assert all(f.mime_type != "image/heic" for f in fitted)


# --- fake providers -----------------------------------------------------------------------------------------

Behaviour = Callable[[ProviderRequest, int], Any]  # (request, call number from 1) -> error to raise or None


def result_image(size: int = 8) -> GeneratedImage:
    return GeneratedImage(png_bytes(size, size), "image/png", size, size)


class FakeProvider(ImageProvider):
    """A synchronous provider answering ``request.count`` images, or raising what ``behaviour`` returns."""

    def __init__(self, name: str, behaviour: Behaviour | None = None, delay: float = 0.0) -> None:
        super().__init__(transport=None)  # type: ignore[arg-type]  # never used: no network here
        self.name = name  # type: ignore[misc]
        self.behaviour = behaviour
        self.delay = delay
        self.requests: list[ProviderRequest] = []
        self.in_flight = 0
        self.peak = 0

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        self.requests.append(request)
        number = len(self.requests)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            error = self.behaviour(request, number) if self.behaviour else None
            if error is not None:
                raise error
            return ProviderResult(
                images=[result_image() for _ in range(request.count)],
                provider=self.name,
                provider_model=request.model_id,
                latency_s=0.0,
                cost=1.0,
                cost_unit="credits",
            )
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        return None


def always(error: ProviderError) -> Behaviour:
    return lambda request, number: error


def generator(*providers: ImageProvider, **settings: Any) -> Generator:
    return Generator(make_settings(**settings), {p.name: p for p in providers})


def pro_plan(gen: Generator, **overrides: Any) -> Any:
    values: dict[str, Any] = {"model": "nano-banana-pro", "prompt": "a lighthouse at dusk"}
    values.update(overrides)
    return gen.plan(GenerationSpec(**values))


# --- failover -----------------------------------------------------------------------------------------------


async def test_retryable_error_fails_over_to_the_next_route() -> None:
    first = FakeProvider("listenhub", always(ProviderUnavailable(provider="listenhub", status=503)))
    second = FakeProvider("nanobanana_pro")
    gen = generator(first, second)
    plan = pro_plan(gen)
    assert [r.provider for r in plan.routes] == ["listenhub", "nanobanana_pro"]

    outcome = await gen.run(plan)

    assert outcome.provider == "nanobanana_pro"
    assert outcome.failovers == [("listenhub", "ProviderUnavailable")]
    assert len(first.requests) == 1 and len(second.requests) == 1
    assert second.requests[0].model_id == "nano-banana-pro"
    assert len(outcome.images) == 1


@pytest.mark.parametrize(
    "error",
    [
        ContentRefused(provider="listenhub", status=400),
        InvalidRequest(provider="listenhub", status=400, detail="bad size"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_errors_about_the_request_do_not_fail_over(error: ProviderError) -> None:
    first = FakeProvider("listenhub", always(error))
    second = FakeProvider("nanobanana_pro")
    gen = generator(first, second)

    with pytest.raises(type(error)) as caught:
        await gen.run(pro_plan(gen))

    assert caught.value is error
    assert len(first.requests) == 1
    assert second.requests == []


@pytest.mark.parametrize(
    "error",
    [OutOfCredits(provider="listenhub", status=402), AuthError(provider="listenhub", status=401)],
    ids=lambda e: type(e).__name__,
)
async def test_account_faults_fail_over(error: ProviderError) -> None:
    # Our account at one provider being empty or misconfigured says nothing about the next provider.
    first = FakeProvider("listenhub", always(error))
    second = FakeProvider("nanobanana_pro")
    gen = generator(first, second)

    outcome = await gen.run(pro_plan(gen))

    assert outcome.provider == "nanobanana_pro"
    assert outcome.failovers == [("listenhub", type(error).__name__)]


async def test_last_routes_error_is_raised() -> None:
    first_error = ProviderTimeout(provider="listenhub")
    last_error = RateLimited(provider="nanobanana_pro", status=429, retry_after=3.0)
    first = FakeProvider("listenhub", always(first_error))
    second = FakeProvider("nanobanana_pro", always(last_error))
    gen = generator(first, second)

    with pytest.raises(RateLimited) as caught:
        await gen.run(pro_plan(gen))

    assert caught.value is last_error
    assert len(first.requests) == 1 and len(second.requests) == 1


async def test_single_route_retryable_error_is_raised() -> None:
    error = ProviderUnavailable(provider="listenhub", status=502)
    only = FakeProvider("listenhub", always(error))
    gen = generator(only)
    with pytest.raises(ProviderUnavailable) as caught:
        await gen.run(pro_plan(gen))
    assert caught.value is error


# --- count splitting ----------------------------------------------------------------------------------------


async def test_count_is_split_into_calls_of_max_per_call() -> None:
    provider = FakeProvider("listenhub")
    gen = generator(provider)
    plan = pro_plan(gen, count=4)
    assert plan.routes[0].max_per_call == 1

    outcome = await gen.run(plan)

    assert [r.count for r in provider.requests] == [1, 1, 1, 1]
    assert len(outcome.images) == 4
    assert outcome.failed == 0
    assert (outcome.cost, outcome.cost_unit) == (4.0, "credits")


async def test_count_fits_one_call_where_the_route_allows() -> None:
    provider = FakeProvider("mountsea")
    gen = generator(provider)
    outcome = await gen.run(pro_plan(gen, count=3))
    assert [r.count for r in provider.requests] == [3]
    assert len(outcome.images) == 3


async def test_one_failed_call_of_four_delivers_three() -> None:
    error = ProviderUnavailable(provider="listenhub")
    provider = FakeProvider("listenhub", lambda request, number: error if number == 2 else None)
    backup = FakeProvider("nanobanana_pro")
    gen = generator(provider, backup)

    outcome = await gen.run(pro_plan(gen, count=4))

    assert len(provider.requests) == 4
    assert len(outcome.images) == 3
    assert outcome.failed == 1
    assert outcome.provider == "listenhub"
    assert backup.requests == []  # a partial result is delivered, not failed over
    assert outcome.failovers == []


async def test_all_calls_failing_raise_their_error() -> None:
    errors = [ContentRefused(provider="listenhub", detail=str(i)) for i in range(4)]
    provider = FakeProvider("listenhub", lambda request, number: errors[number - 1])
    gen = generator(provider)

    with pytest.raises(ContentRefused) as caught:
        await gen.run(pro_plan(gen, count=4))

    assert caught.value in errors
    assert len(provider.requests) == 4


# --- concurrency caps ---------------------------------------------------------------------------------------


async def test_provider_concurrency_cap_is_respected_across_jobs() -> None:
    provider = FakeProvider("listenhub", delay=0.03)
    gen = generator(provider, listenhub_concurrency=2)
    plans = [pro_plan(gen, prompt=f"picture {i}") for i in range(10)]

    outcomes = await asyncio.gather(*(gen.run(plan) for plan in plans))

    assert len(provider.requests) == 10
    assert sorted(r.prompt for r in provider.requests) == sorted(f"picture {i}" for i in range(10))
    assert all(len(o.images) == 1 for o in outcomes)
    assert provider.peak == 2  # never more than the cap, and the cap is actually used


async def test_concurrency_cap_also_bounds_split_calls() -> None:
    provider = FakeProvider("listenhub", delay=0.03)
    gen = generator(provider, listenhub_concurrency=3)
    outcomes = await asyncio.gather(*(gen.run(pro_plan(gen, count=4)) for _ in range(3)))
    assert len(provider.requests) == 12
    assert sum(len(o.images) for o in outcomes) == 12
    assert provider.peak == 3


# --- task providers -----------------------------------------------------------------------------------------


class FakeTaskProvider(TaskProvider):
    name = "mountsea"

    def __init__(self, transport: Transport, events: list[Any]) -> None:
        super().__init__(transport, poll_interval=0.01, deadline=5.0)
        self.events = events
        self.polls = 0

    async def submit(self, request: ProviderRequest) -> str:
        self.events.append("submit")
        return "task-42"

    async def wait(self, task_id: str, request: ProviderRequest, **kwargs: Any) -> ProviderResult:
        self.events.append("wait")
        return await super().wait(task_id, request, **kwargs)

    async def poll(self, task_id: str) -> TaskStatus:
        self.events.append("poll")
        self.polls += 1
        if self.polls < 2:
            return TaskStatus(TaskState.PENDING)
        uri = "data:image/png;base64," + base64.b64encode(png_bytes(12, 10)).decode()
        return TaskStatus(TaskState.DONE, outputs=[uri])


@pytest.fixture
async def task_transport() -> AsyncIterator[Transport]:
    downloader = Downloader(max_bytes=1_000_000, timeout=1.0)
    transport = Transport("mountsea", "http://127.0.0.1:9", None, downloader=downloader)
    yield transport
    await transport.aclose()
    await downloader.aclose()


async def test_on_task_is_called_with_the_task_id_before_waiting(task_transport: Transport) -> None:
    events: list[Any] = []
    provider = FakeTaskProvider(task_transport, events)
    gen = Generator(make_settings(), {"mountsea": provider})

    async def on_task(provider_name: str, model: str, task_id: str) -> None:
        events.append(("on_task", provider_name, model, task_id))

    outcome = await gen.run(pro_plan(gen), on_task=on_task)

    assert events == ["submit", ("on_task", "mountsea", "nano-banana-pro", "task-42"), "wait", "poll", "poll"]
    assert outcome.task_ids == ["task-42"]
    assert (outcome.images[0].width, outcome.images[0].height) == (12, 10)


async def test_on_task_uses_the_edit_model_with_references(task_transport: Transport) -> None:
    seen: list[tuple[str, str, str]] = []
    provider = FakeTaskProvider(task_transport, [])
    gen = Generator(make_settings(), {"mountsea": provider})

    async def on_task(provider_name: str, model: str, task_id: str) -> None:
        seen.append((provider_name, model, task_id))

    refs = (Reference("image/png", data=png_bytes(16, 16)),)
    await gen.run(pro_plan(gen, references=refs), on_task=on_task)
    assert seen == [("mountsea", "nano-banana-pro-edit", "task-42")]


# --- load_references ----------------------------------------------------------------------------------------


async def test_load_references_inspects_in_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each inspection waits for the other two: run one after another, they would time out.
    barrier = threading.Barrier(3, timeout=5)
    real = images.inspect_image

    def meeting(*args: Any, **kwargs: Any) -> images.ImageInfo:
        barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "inspect_image", meeting)
    blobs = [(png_bytes(8, 8), None), (jpeg_bytes(10, 6), None), (heic_bytes(16, 16), None)]

    refs = await load_references(blobs, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)

    assert [r.mime_type for r in refs] == ["image/png", "image/jpeg", "image/heic"]


async def test_load_references_keeps_urls_and_bytes() -> None:
    png, jpeg = png_bytes(8, 8), jpeg_bytes(10, 6)
    refs = await load_references(
        [(png, "https://cdn.example.com/a.png"), (jpeg, None)], max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS
    )
    assert refs == (
        Reference("image/png", data=png, url="https://cdn.example.com/a.png"),
        Reference("image/jpeg", data=jpeg, url=None),
    )


async def test_load_references_rejects_a_text_file() -> None:
    with pytest.raises(InvalidImage) as caught:
        await load_references(
            [(png_bytes(8, 8), None), (b"just some notes\n" * 50, "https://cdn.example.com/cat.png")],
            max_bytes=MAX_BYTES,
            max_pixels=MAX_PIXELS,
        )
    assert "not a supported image" in caught.value.message


async def test_load_references_applies_the_caps() -> None:
    with pytest.raises(InvalidImage, match="limit"):
        await load_references([(png_bytes(64, 64), None)], max_bytes=MAX_BYTES, max_pixels=1000)
    with pytest.raises(InvalidImage, match="limit"):
        await load_references([(noisy_png(64, 64), None)], max_bytes=1000, max_pixels=MAX_PIXELS)
