"""Property-based tests (hypothesis) over what users type and attach.

Command options go through :meth:`Generator.plan` with all four providers enabled: every input either
becomes a plan that the catalog and its routes really support, or a :class:`ValidationError` whose message
can be shown as it is. Attachment bytes go through :func:`inspect_image` and :func:`load_references`:
every input is either an accepted image or an :class:`InvalidImage` with a clear message. Nothing else
may escape.
"""

from __future__ import annotations

import asyncio
import io
import random
import struct
import unicodedata
import zlib
from collections.abc import Iterator
from functools import cache

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.catalog import MODELS, RESOLUTIONS, ModelSpec, get_model
from bot.errors import InvalidImage, ValidationError
from bot.generation import SEED_MAX, GenerationSpec, Generator, Plan, load_references
from bot.images import SUPPORTED_INPUT_MIME, ImageInfo, inspect_image
from bot.providers import build_providers
from bot.providers.base import Reference
from tests.conftest import make_settings

MAX_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 40_000_000
#: A user-facing message must fit a Discord message with room to spare.
MESSAGE_MAX = 1000

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the generator ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gen() -> Iterator[Generator]:
    """All four providers enabled with fake keys; plan() never touches the network."""
    config = make_settings(
        listenhub_api_key="fake-listenhub-key",
        nanobanana_pro_api_key="fake-nbp-key",
        apimart_api_key="fake-apimart-key",
        mountsea_api_key="fake-mountsea-key",
    )
    generator = Generator(config, build_providers(config))
    assert generator.enabled == {"listenhub", "nanobanana_pro", "apimart", "mountsea"}
    yield generator
    asyncio.run(generator.aclose())


def assert_showable(message: str) -> None:
    """A message we may put in front of a user as it is."""
    assert message.strip(), "empty message"
    assert len(message) <= MESSAGE_MAX, f"message of {len(message)} characters"
    bad = [ch for ch in message if unicodedata.category(ch) in ("Cc", "Cs")]
    assert not bad, f"raw control characters or surrogates in {message!r}"
    message.encode("utf-8")  # sendable to Discord


def check_plan(gen: Generator, spec: GenerationSpec) -> Plan | None:
    """Plan ``spec``; assert the plan is sound, or the refusal is a showable ValidationError."""
    try:
        plan = gen.plan(spec)
    except ValidationError as exc:
        assert_showable(exc.message)
        assert str(exc) == exc.message
        return None
    model = get_model(spec.model)
    assert model is not None and plan.model is model
    assert plan.aspect_ratio in model.aspect_ratios
    assert plan.resolution in model.resolutions
    assert model.min_count <= plan.count <= model.max_count and plan.count == spec.count
    if plan.seed is not None:
        assert model.supports_seed and 0 <= plan.seed <= SEED_MAX
    assert plan.routes, "a plan without routes"
    for route in plan.routes:
        assert route in model.routes and route.provider in gen.enabled
        assert plan.aspect_ratio in route.aspect_ratios
        assert plan.resolution in route.resolutions
        assert len(plan.references) <= route.max_references
        assert plan.seed is None or route.supports_seed
    # And no route that could serve it was left out.
    fitting = [
        r
        for r in model.routes
        if plan.aspect_ratio in r.aspect_ratios
        and plan.resolution in r.resolutions
        and (plan.seed is None or r.supports_seed)
        and len(plan.references) <= r.max_references
    ]
    assert sorted(r.provider for r in plan.routes) == sorted(r.provider for r in fitting)
    # The prompt is what a provider can take: trimmed, NFC, no control characters but newlines and tabs,
    # encodable as UTF-8 (a lone surrogate cannot go into a JSON request or SQLite).
    prompt = plan.prompt
    assert prompt and prompt == prompt.strip() and len(prompt) <= gen.settings.max_prompt_length
    assert all(ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs") for ch in prompt)
    prompt.encode("utf-8")
    return plan


# --- strategies: options ------------------------------------------------------------------------------------

MODEL_KEYS = [m.key for m in MODELS]
ALL_RATIOS = sorted({r for m in MODELS for r in m.aspect_ratios})
HOSTILE = [
    "",
    " ",
    "\n\t \r",
    "\x00",
    "\x1b[2J\x1b[31mred",
    "\u202eevil\u202c",  # right-to-left override
    "\u200b\u200c\u200d\ufeff",  # zero-width characters
    "\u0301",  # a lone combining acute accent
    "e\u0301",  # NFD, becomes é
    "\ud800",  # a lone surrogate (json.loads('"\\ud800"') yields one)
    "a\udfffb",
    "مرحبا بالعالم",
    "`@everyone`",
    "x" * 5000,
    "x" * 100_000,
]

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
models = st.one_of(
    st.sampled_from(MODEL_KEYS),
    st.sampled_from(MODEL_KEYS).map(lambda k: f"  {k.upper()}\t"),
    st.sampled_from(HOSTILE),
    any_text,
)
prompts = st.one_of(
    st.text(max_size=200),
    any_text,
    st.sampled_from(HOSTILE),
    st.sampled_from(["a" * 4000, "a" * 4001, " " * 10 + "a" * 4000 + "\n" * 10]),
    st.lists(st.sampled_from([*HOSTILE[:13], "a cat", "\n"]), max_size=6).map("".join),
)
ratios = st.one_of(st.none(), st.sampled_from(ALL_RATIOS), st.sampled_from(HOSTILE), any_text)
resolutions = st.one_of(
    st.none(), st.sampled_from([*RESOLUTIONS, "1k", "4k", " 2K", "8K"]), st.sampled_from(HOSTILE), any_text
)
counts = st.one_of(st.integers(-5, 10), st.integers(), st.sampled_from([2**31, -(2**63), 10**30]))
seeds = st.one_of(st.none(), st.integers(-5, 10), st.integers(), st.sampled_from([SEED_MAX, SEED_MAX + 1]))


@PROPERTY_SETTINGS
@given(model=models, prompt=prompts, ratio=ratios, resolution=resolutions, count=counts, seed=seeds)
def test_plan_accepts_sound_requests_and_refuses_the_rest_clearly(
    gen: Generator, model: str, prompt: str, ratio: str | None, resolution: str | None, count: int, seed: int
) -> None:
    spec = GenerationSpec(
        model=model, prompt=prompt, aspect_ratio=ratio, resolution=resolution, count=count, seed=seed
    )
    check_plan(gen, spec)


@PROPERTY_SETTINGS
@given(model=st.sampled_from(MODEL_KEYS), prompt=prompts)
def test_any_prompt_is_cleaned_or_refused(gen: Generator, model: str, prompt: str) -> None:
    plan = check_plan(gen, GenerationSpec(model=model, prompt=prompt))
    kept = "".join(ch for ch in prompt if unicodedata.category(ch) not in ("Cc", "Cs")).strip()
    # Visible: at least one letter, number, punctuation or symbol (zero-width/bidi/combining-only is empty).
    visible = kept if any(unicodedata.category(ch)[0] in "LNPS" for ch in kept) else ""
    if plan is not None:
        assert plan.prompt == unicodedata.normalize("NFC", plan.prompt)
        assert visible, f"an invisible prompt was accepted: {prompt!r}"
    elif visible and len(unicodedata.normalize("NFC", visible)) <= gen.settings.max_prompt_length:
        pytest.fail(f"a prompt with visible text was refused: {prompt!r}")


def test_every_model_ratio_resolution_and_seed_combination(gen: Generator) -> None:
    """Exhaustive: accepted exactly when one enabled route supports the combination."""
    accepted = refused = 0
    for model in MODELS:
        for ratio in [None, *ALL_RATIOS]:
            for resolution in [None, *RESOLUTIONS, *(r.lower() for r in RESOLUTIONS)]:
                for seed in (None, 0, 12345):
                    spec = GenerationSpec(
                        model=model.key,
                        prompt="a red fox",
                        aspect_ratio=ratio,
                        resolution=resolution,
                        seed=seed,
                    )
                    plan = check_plan(gen, spec)
                    wanted_ratio = ratio or model.default_aspect_ratio
                    wanted_res = (resolution or model.default_resolution).upper()
                    servable = any(
                        wanted_ratio in r.aspect_ratios
                        and wanted_res in r.resolutions
                        and (seed is None or r.supports_seed)
                        for r in model.routes
                    )
                    assert (plan is not None) == servable, (model.key, ratio, resolution, seed)
                    accepted += plan is not None
                    refused += plan is None
    assert accepted and refused


@PROPERTY_SETTINGS
@given(model=st.sampled_from(MODEL_KEYS), n_refs=st.integers(0, 20), count=st.integers(0, 6))
def test_reference_counts(gen: Generator, model: str, n_refs: int, count: int) -> None:
    refs = tuple(Reference("image/png", url=f"https://cdn.example.com/{i}.png") for i in range(n_refs))
    spec = GenerationSpec(model=model, prompt="combine these", references=refs, count=count)
    plan = check_plan(gen, spec)
    spec_model = get_model(model)
    assert isinstance(spec_model, ModelSpec)
    if plan is not None:
        assert n_refs <= spec_model.max_references
    elif 1 <= count <= 4:
        assert n_refs > spec_model.max_references


# --- attachment bytes ---------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims ``width`` x ``height``, with a token IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _idat_data_end(png: bytes) -> int:
    """Offset just past the last IDAT chunk's data (before its CRC)."""
    pos, end = 8, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == b"IDAT":
            end = pos + 8 + length
        pos += 12 + length
    return end


@cache
def samples() -> dict[str, bytes]:
    """Small real images of every accepted kind (pixels from a seeded RNG: reproducible)."""
    rng = random.Random(20240611)
    noise = Image.frombytes("RGB", (48, 40), rng.randbytes(48 * 40 * 3))
    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return {
        "png": _encode(noise, "PNG"),
        "jpeg": _encode(noise, "JPEG", quality=90),
        "jpeg-progressive": _encode(noise, "JPEG", quality=90, progressive=True),
        "webp": _encode(noise, "WEBP", quality=80),
        "webp-lossless": _encode(noise, "WEBP", lossless=True),
        "gif": _encode(noise.convert("P"), "GIF"),
        "gif-animated": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        "heic": _encode(noise, "HEIF", quality=80),  # bot.images registered pillow-heif on import
    }


def complete_from(name: str, data: bytes) -> int:
    """The shortest cut that may still hold every pixel of a single-frame sample: shorter must be refused."""
    if name == "png":
        return _idat_data_end(data) - 16  # the zlib checksum and a few padding bits are not pixels
    if name == "gif":
        return len(data) - 2  # the trailer byte and the last block terminator
    return len(data)


def first_frame(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        return img.convert("RGB").tobytes()


MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a",
    b"GIF87a",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"RIFF\xff\xff\xff\x7fWEBPVP8 ",
    b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1miaf",
    b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf",
]


@st.composite
def attachments(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "magic", "truncated", "corrupted", "sample"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "magic":
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=2048))
    name = draw(st.sampled_from(sorted(samples())))
    data = samples()[name]
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "corrupted":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        return bytes(buf)
    return data


def assert_clear_refusal(exc: InvalidImage) -> None:
    assert_showable(exc.message)
    assert len(exc.message) <= 300
    lowered = exc.message.lower()
    for leak in ("traceback", "errno", "pil", "oserror", "syntaxerror", "cannot identify", "none"):
        assert leak not in lowered, f"internal wording {leak!r} in {exc.message!r}"


def check_attachment(
    data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS
) -> ImageInfo | None:
    try:
        info = inspect_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except InvalidImage as exc:
        assert_clear_refusal(exc)
        return None
    assert info.mime_type in SUPPORTED_INPUT_MIME
    assert info.width > 0 and info.height > 0 and info.width * info.height <= max_pixels
    assert info.frames >= 1
    assert info.size_bytes == len(data) <= max_bytes
    return info


@PROPERTY_SETTINGS
@given(data=attachments())
def test_any_attachment_is_accepted_or_clearly_refused(data: bytes) -> None:
    check_attachment(data)


SINGLE_FRAME = sorted(set(samples()) - {"gif-animated"})


@PROPERTY_SETTINGS
@given(name=st.sampled_from(SINGLE_FRAME), fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_images_are_refused(name: str, fraction: float) -> None:
    data = samples()[name]
    cut = int(len(data) * fraction)
    assume(cut < complete_from(name, data))
    assert check_attachment(data[:cut]) is None, f"{name} cut at {cut} of {len(data)} was accepted"


def test_every_cut_point_of_every_sample() -> None:
    """Exhaustive over the small samples: a truncated file is only ever accepted when the frame we use
    (the first) is whole, and then it has the original's type, size and pixels."""
    for name, data in samples().items():
        whole = check_attachment(data)
        assert whole is not None, name
        pixels = first_frame(data)
        for cut in range(len(data)):
            info = check_attachment(data[:cut])
            if info is None:
                continue
            if name != "gif-animated":  # an animation cut after its first frame keeps that frame
                assert cut >= complete_from(name, data), (name, cut)
            assert (info.mime_type, info.width, info.height) == (whole.mime_type, whole.width, whole.height)
            assert first_frame(data[:cut]) == pixels, (name, cut)


@settings(max_examples=60, deadline=None)
@given(
    blobs=st.lists(st.tuples(attachments(), st.none() | st.just("https://cdn.example.com/a.png")), max_size=3)
)
def test_load_references_accepts_all_or_refuses_clearly(blobs: list[tuple[bytes, str | None]]) -> None:
    try:
        refs = asyncio.run(load_references(blobs, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS))
    except InvalidImage as exc:
        assert_clear_refusal(exc)
        assert any(check_attachment(data) is None for data, _ in blobs)
        return
    assert len(refs) == len(blobs)
    for ref, (data, url) in zip(refs, blobs, strict=True):
        info = check_attachment(data)
        assert info is not None
        assert (ref.data, ref.url, ref.mime_type) == (data, url, info.mime_type)


# --- attachments that must be handled a particular way -----------------------------------------------------


def test_header_claiming_100000_by_100000_pixels_is_refused_before_decoding() -> None:
    data = png_claiming(100_000, 100_000)
    assert len(data) < 200
    with pytest.raises(InvalidImage) as caught:
        inspect_image(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert_clear_refusal(caught.value)
    assert "too large" in caught.value.message


# Pillow warns (without refusing) between its bomb threshold and twice that; our own cap refuses there.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@PROPERTY_SETTINGS
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_any_claimed_size_over_the_pixel_cap_is_refused(width: int, height: int) -> None:
    assume(width * height > MAX_PIXELS)
    with pytest.raises(InvalidImage) as caught:
        inspect_image(png_claiming(width, height), max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert_clear_refusal(caught.value)


def test_pixel_cap_message_names_the_size() -> None:
    with pytest.raises(InvalidImage) as caught:
        inspect_image(png_claiming(8000, 6000), max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert caught.value.message.startswith("The image is 8000x6000 pixels (48 megapixels); the limit is 40")


async def test_30_mb_blob_is_refused_by_size() -> None:
    blob = b"\x89PNG\r\n\x1a\n" + bytes(30 * 1000 * 1000)
    with pytest.raises(InvalidImage) as caught:
        await load_references([(blob, None)], max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert_clear_refusal(caught.value)
    assert "the limit is 25 MB" in caught.value.message


async def test_text_file_is_refused() -> None:
    text = b"Dear diary, today I tried to upload a text file as an image.\n" * 40
    with pytest.raises(InvalidImage) as caught:
        await load_references(
            [(text, "https://cdn.example.com/cat.png")], max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS
        )
    assert_clear_refusal(caught.value)
    assert "not a supported image" in caught.value.message


async def test_animated_gif_is_accepted() -> None:
    (ref,) = await load_references(
        [(samples()["gif-animated"], None)], max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS
    )
    assert ref.mime_type == "image/gif"
    info = inspect_image(samples()["gif-animated"], max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert (info.width, info.height, info.frames) == (24, 24, 3)


async def test_heic_is_accepted() -> None:
    (ref,) = await load_references([(samples()["heic"], None)], max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert ref.mime_type == "image/heic"
    info = inspect_image(samples()["heic"], max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert (info.width, info.height) == (48, 40)
