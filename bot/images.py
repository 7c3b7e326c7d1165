"""Image handling: type sniffing, validation of user references, re-encoding for providers and Discord.

Everything here is a pure function of its arguments. Decoding and encoding are CPU-heavy, so each such
function ``x`` has an ``x_async`` twin that runs it in a worker thread (:func:`asyncio.to_thread`): the bot
must never block its event loop on Pillow. :func:`sniff_mime` is cheap (it looks at 64 bytes at most) and
may be called on the loop directly.

Untrusted input is handled defensively:

* the type comes from magic bytes, never from a file name, and Pillow is only allowed to open the format that
  was sniffed (no fallback to other plugins);
* pixel counts are checked from the header before anything is decoded (decompression bombs), and Pillow's own
  ``DecompressionBombError`` is turned into :class:`~bot.errors.InvalidImage`;
* an image must decode completely; truncated files are rejected (this relies on Pillow's default
  ``ImageFile.LOAD_TRUNCATED_IMAGES = False``, which this module never changes).

Re-encoding searches are bounded: a fixed list of (scale, encoders) steps. For large images the size of each
candidate is first predicted by encoding a small mosaic of tiles sampled across the image, so encodings that
are clearly too big (a lossless WebP of a noisy photo, say) are skipped instead of paid for.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import mmap
import os
import struct
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pillow_heif
from PIL import Image, ImageOps

from bot.errors import InvalidImage
from bot.i18n import N_, Number, Size, Text, msg

#: Image bytes in memory, or a file's memory map (checks of spooled results read files that way).
Buffer = bytes | mmap.mmap

__all__ = [
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_INPUT_MIME",
    "EncodedImage",
    "FittedImage",
    "ImageInfo",
    "extension_for",
    "fit_for_upload",
    "fit_for_upload_async",
    "fit_upload_file",
    "image_size",
    "inspect_image",
    "inspect_image_async",
    "make_thumbnail",
    "make_thumbnail_async",
    "normalize_reference",
    "normalize_reference_async",
    "sha256_hex",
    "sha256_hex_async",
    "sniff_mime",
]

# HEIC/HEIF decoding through Pillow. Registering twice is harmless, but once at import is enough.
pillow_heif.register_heif_opener()

SUPPORTED_INPUT_MIME: tuple[str, ...] = (
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "image/heic",
    "image/heif",
)

DEFAULT_MAX_INPUT_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow plugin allowed to open each sniffed type.
_PIL_FORMAT: dict[str, str] = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/heic": "HEIF",
    "image/heif": "HEIF",
}

_EXTENSIONS: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/heic": "heic",
    "image/heif": "heif",
}

_SNIFF_BYTES = 64
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"heif"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})

# Hashing small buffers is faster than a thread hop.
_HASH_INLINE_MAX = 256 * 1024

# --- re-encoding search parameters --------------------------------------------------------------------------

# fit_for_upload: lossless WebP first. Measured on this project's 2-core box: method 0 encodes ~16 MP/s (a
# 4096x4096 image in ~1 s); methods 1-4 are 4-10x slower for a 10-25 % smaller file, which does not pay for
# itself on the upload path.
_WEBP_LOSSLESS_PARAMS: Mapping[str, Any] = {"lossless": True, "method": 0, "quality": 0}
_WEBP_METHOD = 4  # lossy WebP: libwebp's default speed/size trade-off
_FIT_WEBP_QUALITY = 90
_FIT_JPEG_QUALITY = 92
# Lossy WebP (method 4) encodes ~5-10 MP/s here (4096x4096 noise: 3-4 s; 3482x3482: 1.5-2 s), JPEG ~150 MP/s.
# For opaque images, where JPEG q92 is always a candidate, WebP is only tried up to this many pixels
# (~2450x2450, at most ~0.8 s).
_FIT_WEBP_MAX_PIXELS = 6_000_000
_FIT_SCALE_STEP = 0.85
_FIT_MAX_DOWNSCALES = 24  # 0.85**24 ~= 0.02: any sane limit is reached long before

# normalize_reference: quality ladder, then downscale.
_NORM_QUALITIES = (90, 85, 75)
_NORM_SCALE_STEP = 0.75
_NORM_MAX_DOWNSCALES = 12  # 0.75**12 ~= 0.03

_THUMB_WEBP_QUALITY = 80

# Size prediction: a 3x3 mosaic of tiles (at most 256 px each) sampled across the image. An encoding is
# skipped when its predicted size exceeds limit * _PREDICT_MARGIN. On synthetic test images predictions were
# within -28 %..+26 % of the real size (lossless WebP tends to be under-predicted, JPEG at odd scales
# sometimes over-predicted); the margin keeps borderline candidates (a wrong skip costs one 0.85 step of
# size, a wrong try costs one resize + encode). Images smaller than _PREDICT_MIN_RATIO mosaics are encoded
# directly (cheap enough, and prediction is noisier there).
_PREDICT_GRID = 3
_PREDICT_TILE = 256
_PREDICT_MIN_TILE = 64
_PREDICT_MIN_RATIO = 4
_PREDICT_MARGIN = 1.1
# In a "keep the smallest" step, an extra candidate is only encoded if it is predicted to save >= 5 %.
_PREDICT_GAIN = 0.95

_MIN_SIDE = 1
_MAX_WEBP_SIDE = 16383


# --- sniffing -----------------------------------------------------------------------------------------------


def _ftyp_brands(head: bytes) -> list[bytes] | None:
    """Major + compatible brands of an ISO-BMFF ``ftyp`` box at the start of ``head``, or None."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    box_size = int.from_bytes(head[0:4], "big")
    # 0 = box runs to end of file, 1 = 64-bit size follows (never seen for ftyp): read what we have.
    end = len(head) if box_size in (0, 1) else min(box_size, len(head))
    if end < 12:
        return None
    brands = [head[8:12]]
    brands.extend(head[i : i + 4] for i in range(16, end - 3, 4))
    return brands


def _is_avif(data: Buffer) -> bool:
    brands = _ftyp_brands(data[:_SNIFF_BYTES])
    return bool(brands) and any(b in _AVIF_BRANDS for b in brands or ())


def sniff_mime(data: Buffer) -> str | None:
    """Return the real MIME type of ``data`` from its magic bytes, or None if it is not a supported image.

    Never trusts file names. Recognises PNG, JPEG, WebP, GIF and HEIC/HEIF (ISO-BMFF ``ftyp`` brands
    heic/heix/hevc/hevx/heim/heis give ``image/heic``; mif1/msf1/heif give ``image/heif``). AVIF is an
    ISO-BMFF image too but is not supported: it gives None. Looks at the first 64 bytes only, so it is cheap
    enough for the event loop.
    """
    head = bytes(data[:_SNIFF_BYTES])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head[0:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    brands = _ftyp_brands(head)
    if brands:
        if brands[0] in _AVIF_BRANDS:
            return None
        if any(b in _HEIC_BRANDS for b in brands):
            return "image/heic"
        if any(b in _AVIF_BRANDS for b in brands):
            return None
        if any(b in _HEIF_BRANDS for b in brands):
            return "image/heif"
    return None


def extension_for(mime_type: str) -> str:
    """File extension (no dot) for a supported image MIME type; ``bin`` for anything else."""
    return _EXTENSIONS.get(mime_type, "bin")


# --- results ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` learned about a valid image.

    ``width``/``height`` are as displayed (EXIF orientation applied); ``frames`` > 1 for animations.
    """

    mime_type: str
    width: int
    height: int
    frames: int
    size_bytes: int


@dataclass(frozen=True)
class EncodedImage:
    """Encoded image bytes with their MIME type and displayed dimensions."""

    data: bytes = field(repr=False)
    mime_type: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        """File extension without dot: ``png``, ``jpg``, ``webp``, ``gif`` (``heic``/``heif`` for HEIF)."""
        return extension_for(self.mime_type)

    @property
    def size_bytes(self) -> int:
        return len(self.data)


# --- messages -----------------------------------------------------------------------------------------------


def _fmt_bytes(n: int) -> Size:
    """Human size (formatted for the reader's locale), binary units written MB/KB as users expect:
    32715571 -> '31.2 MB', 25 MiB -> '25 MB'."""
    return Size(n)


def _fmt_megapixels(pixels: int) -> Text:
    return msg("{value} megapixels", value=Number(round(pixels / 1_000_000, 1)))


_MSG_UNREADABLE = N_(
    "The image could not be read completely; the file may be truncated or damaged. "
    "Please export it again or try another image."
)
_MSG_UNSUPPORTED = N_("This file is not a supported image. Please use PNG, JPEG, WebP, GIF or HEIC.")


# --- decoding helpers ---------------------------------------------------------------------------------------


def _require_mime(data: Buffer) -> str:
    if not data:
        raise InvalidImage("The image is empty (0 bytes). Please attach the file again.")
    mime = sniff_mime(data)
    if mime is None:
        if _is_avif(data):
            raise InvalidImage("AVIF images are not supported. Please convert it to PNG, JPEG or WebP.")
        raise InvalidImage(_MSG_UNSUPPORTED)
    return mime


def _effective_pixel_limit(max_pixels: int | None) -> int | None:
    """Our pixel limit, capped at Pillow's own bomb-warning threshold.

    Pillow only *warns* (``DecompressionBombWarning``) between ``MAX_IMAGE_PIXELS`` and twice that; capping
    our limit there turns that case into :class:`InvalidImage` without touching the (process-global, not
    thread-safe) warning filters.
    """
    pil_limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is None:
        return int(pil_limit) if pil_limit is not None else None
    if pil_limit is None:
        return max_pixels
    return min(max_pixels, int(pil_limit))


def _open(data: Buffer, mime: str, *, max_pixels: int | None) -> Image.Image:
    """Open ``data`` lazily (header only) with the plugin of its sniffed type and check its pixel count."""
    if isinstance(data, mmap.mmap):
        data.seek(0)  # a memory map is a file object already: Pillow reads it without a copy
    try:
        img = Image.open(
            data if isinstance(data, mmap.mmap) else io.BytesIO(data), formats=[_PIL_FORMAT[mime]]
        )
    except Image.DecompressionBombError as e:
        raise InvalidImage(
            "The image's dimensions are far too large to process. Please use a smaller image."
        ) from e
    except Exception as e:  # any parser failure on untrusted bytes
        raise InvalidImage(_MSG_UNREADABLE) from e
    width, height = img.size
    limit = _effective_pixel_limit(max_pixels)
    if width <= 0 or height <= 0:
        img.close()
        raise InvalidImage(_MSG_UNREADABLE)
    if limit is not None and width * height > limit:
        img.close()
        raise InvalidImage(
            "The image is {width}x{height} pixels ({size}); the limit is {limit}. "
            "Please use a smaller image.",
            width=width,
            height=height,
            size=_fmt_megapixels(width * height),
            limit=_fmt_megapixels(limit),
        )
    return img


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1-8), without forcing a decode.

    A PNG's eXIf chunk may sit after the pixel data; Pillow puts it in ``info`` once the image is loaded, and
    ``PngImageFile.getexif`` would decode the whole image to look for it, so unloaded PNGs count as upright.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF never makes an image unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    return (height, width) if _orientation(img) in (5, 6, 7, 8) else (width, height)


def _has_alpha(img: Image.Image) -> bool:
    """True if ``img`` (RGB or RGBA) has at least one pixel that is not fully opaque."""
    if img.mode != "RGBA":
        return False
    low, _high = img.getchannel("A").getextrema()
    return bool(low < 255)


def _to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    """``img`` as RGB, or RGBA if some pixel is transparent. Returns ``img`` itself when it already is one.

    Copies of a 4096x4096 image cost 50-250 ms on a small VM (fresh pages), so none is made needlessly.
    """
    if img.mode.startswith("I"):  # 16/32-bit grey: scale to 8 bits instead of clipping to white
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode != "RGBA":
        transparent = img.mode in ("LA", "PA", "La", "RGBa") or "transparency" in img.info
        img = img.convert("RGBA" if transparent else "RGB")
    if img.mode == "RGBA" and not _has_alpha(img):
        img = img.convert("RGB")
    return img


def _decode_first_frame(
    data: bytes, *, max_pixels: int | None, draft: tuple[int, int] | None = None
) -> tuple[str, Image.Image]:
    """Fully decode the first frame, apply EXIF orientation, return (sniffed mime, RGB/RGBA image).

    ``draft``: let JPEG decode directly at a reduced scale, no smaller than this box.
    The image is not closed on purpose: it is backed by a BytesIO (nothing to leak) and may be returned as is.
    """
    mime = _require_mime(data)
    img = _open(data, mime, max_pixels=max_pixels)
    try:
        img.seek(0)
        if draft is not None:
            img.draft(None, draft)
        img.load()
        out = _to_rgb_or_rgba(img)
        ImageOps.exif_transpose(out, in_place=True)
    except InvalidImage:
        raise
    except Image.DecompressionBombError as e:
        raise InvalidImage(
            "The image's dimensions are far too large to process. Please use a smaller image."
        ) from e
    except Exception as e:
        raise InvalidImage(_MSG_UNREADABLE) from e
    return mime, out


def _flatten(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    if img.mode != "RGBA":
        return img
    base = Image.new("RGB", img.size, background)
    base.paste(img, mask=img.getchannel("A"))
    return base


# --- encoding search ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoder:
    pil_format: str
    mime_type: str
    params: Mapping[str, Any]
    # Skip this encoder for images with more pixels (too slow there; a faster alternative exists).
    max_pixels: int | None = None


_PNG = _Encoder("PNG", "image/png", {"compress_level": 6})
_WEBP_LOSSLESS = _Encoder("WEBP", "image/webp", _WEBP_LOSSLESS_PARAMS)


def _jpeg(quality: int) -> _Encoder:
    return _Encoder("JPEG", "image/jpeg", {"quality": quality})


def _webp(quality: int, *, max_pixels: int | None = None) -> _Encoder:
    return _Encoder("WEBP", "image/webp", {"quality": quality, "method": _WEBP_METHOD}, max_pixels)


@dataclass(frozen=True)
class _Step:
    """Scale of the source, encoders to try. ``smallest``: try all, keep the smallest fit; else first fit."""

    scale: float
    encoders: tuple[_Encoder, ...]
    smallest: bool = False


def _encode(img: Image.Image, enc: _Encoder) -> bytes | None:
    """Encode, or None if this encoder cannot take this image (WebP side limit, libwebp overflow...)."""
    if enc.pil_format == "WEBP" and max(img.size) > _MAX_WEBP_SIDE:
        return None
    if enc.pil_format == "JPEG" and img.mode != "RGB":
        img = _flatten(img)
    params = dict(enc.params)
    icc = img.info.get("icc_profile")
    if icc:
        params["icc_profile"] = icc
    buf = io.BytesIO()
    try:
        img.save(buf, format=enc.pil_format, **params)
    except (OSError, ValueError):
        return None
    return buf.getvalue()


def _scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return (max(_MIN_SIDE, round(size[0] * scale)), max(_MIN_SIDE, round(size[1] * scale)))


def _fit_box(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down (never up), keeping its aspect ratio, so that both sides are <= ``max_side``."""
    factor = min(1.0, max_side / max(size))
    return (
        max(1, min(max_side, round(size[0] * factor))),
        max(1, min(max_side, round(size[1] * factor))),
    )


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size == img.size:
        return img
    resized = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    if "icc_profile" in img.info:
        resized.info["icc_profile"] = img.info["icc_profile"]
    return resized


class _Predictor:
    """Predicts encoded sizes of a large image from a mosaic of tiles sampled across it."""

    def __init__(self, img: Image.Image) -> None:
        width, height = img.size
        tile = min(_PREDICT_TILE, width // _PREDICT_GRID, height // _PREDICT_GRID)
        self.mosaic: Image.Image | None = None
        if tile < _PREDICT_MIN_TILE:
            return
        side = tile * _PREDICT_GRID
        if width * height < _PREDICT_MIN_RATIO * side * side:
            return
        mosaic = Image.new(img.mode, (side, side))
        for row in range(_PREDICT_GRID):
            for col in range(_PREDICT_GRID):
                cx = (2 * col + 1) * width // (2 * _PREDICT_GRID)
                cy = (2 * row + 1) * height // (2 * _PREDICT_GRID)
                box = (cx - tile // 2, cy - tile // 2, cx - tile // 2 + tile, cy - tile // 2 + tile)
                mosaic.paste(img.crop(box), (col * tile, row * tile))
        self.mosaic = mosaic
        self.size = img.size
        self._scaled: dict[float, Image.Image] = {}

    def predict(self, scale: float, enc: _Encoder) -> float | None:
        """Predicted byte size of the whole image at ``scale`` with ``enc``; None if not predictable."""
        if self.mosaic is None:
            return None
        sample = self._scaled.get(scale)
        if sample is None:
            sample = _resize(self.mosaic, _scaled_size(self.mosaic.size, scale))
            self._scaled[scale] = sample
        encoded = _encode(sample, enc)
        if encoded is None:
            return None
        target_w, target_h = _scaled_size(self.size, scale)
        return len(encoded) * (target_w * target_h) / (sample.width * sample.height)


def _first_fit(img: Image.Image, steps: Sequence[_Step], limit: int) -> EncodedImage | None:
    """Walk ``steps`` in order and return the first encoding (or smallest, per step) of at most ``limit``."""
    predictor = _Predictor(img)
    for step in steps:
        size = _scaled_size(img.size, step.scale)
        scaled: Image.Image | None = None
        best: bytes | None = None
        best_enc: _Encoder | None = None
        for enc in step.encoders:
            if enc.max_pixels is not None and size[0] * size[1] > enc.max_pixels:
                continue
            predicted = predictor.predict(step.scale, enc)
            if predicted is not None:
                if predicted > limit * _PREDICT_MARGIN:
                    continue
                if best is not None and predicted > len(best) * _PREDICT_GAIN:
                    continue
            if scaled is None:
                scaled = _resize(img, size)
            encoded = _encode(scaled, enc)
            if encoded is None or len(encoded) > limit:
                continue
            if best is None or len(encoded) < len(best):
                best, best_enc = encoded, enc
            if not step.smallest:
                break
        if best is not None and best_enc is not None:
            return EncodedImage(best, best_enc.mime_type, size[0], size[1])
    return None


# --- inspection ---------------------------------------------------------------------------------------------


def inspect_image(data: Buffer, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Validate a user-supplied reference image and describe it.

    Raises :class:`InvalidImage` (message meant for the user) if ``data`` is empty, larger than ``max_bytes``,
    not a PNG/JPEG/WebP/GIF/HEIC/HEIF image (by content), larger than ``max_pixels`` according to its header
    (checked before decoding anything), or does not decode completely (truncated or corrupt). Animated
    GIF/WebP/APNG are accepted; ``frames`` counts their frames and only the first one is decoded.
    """
    if not data:
        raise InvalidImage("The image is empty (0 bytes). Please attach the file again.")
    if len(data) > max_bytes:
        raise InvalidImage(
            "The image is {size}; the limit is {limit}. Please use a smaller or more compressed image.",
            size=_fmt_bytes(len(data)),
            limit=_fmt_bytes(max_bytes),
        )
    mime = _require_mime(data)
    img = _open(data, mime, max_pixels=max_pixels)
    with img:
        try:
            frames = int(getattr(img, "n_frames", 1) or 1)
            img.seek(0)
            img.load()
            width, height = _displayed_size(img)
        except InvalidImage:
            raise
        except Image.DecompressionBombError as e:
            raise InvalidImage(
                "The image's dimensions are far too large to process. Please use a smaller image."
            ) from e
        except Exception as e:
            raise InvalidImage(_MSG_UNREADABLE) from e
    return ImageInfo(mime_type=mime, width=width, height=height, frames=frames, size_bytes=len(data))


async def inspect_image_async(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """:func:`inspect_image` in a worker thread."""
    return await asyncio.to_thread(inspect_image, data, max_bytes=max_bytes, max_pixels=max_pixels)


def image_size(data: Buffer) -> tuple[int, int]:
    """(width, height) as displayed, read from the header without decoding the pixels.

    Raises :class:`InvalidImage` if ``data`` is not a supported image. No pixel limit is applied beyond
    Pillow's own decompression-bomb guard.
    """
    mime = _require_mime(data)
    with _open(data, mime, max_pixels=None) as img:
        return _displayed_size(img)


def _png_complete(data: Buffer) -> bool:
    """Every chunk present with a matching CRC, up to IEND (no pixel decoding, no copy of the data)."""
    view = memoryview(data)
    pos = 8
    while pos + 12 <= len(view):
        (length,) = struct.unpack_from(">I", view, pos)
        end = pos + 12 + length
        if end > len(view):
            return False
        if zlib.crc32(view[pos + 4 : pos + 8 + length]) != struct.unpack_from(">I", view, end - 4)[0]:
            return False
        if view[pos + 4 : pos + 8] == b"IEND":
            return True
        pos = end
    return False


def _ends_with(data: Buffer, trailer: bytes) -> bool:
    """Whether ``data`` ends with ``trailer``, NUL padding after it ignored (read from the end in blocks)."""
    end = len(data)
    while end > 0:
        block = bytes(data[max(0, end - 4096) : end]).rstrip(b"\0")
        if block:
            start = max(0, end - 4096) + len(block)
            return bytes(data[max(0, start - len(trailer)) : start]) == trailer
        end -= 4096
    return False


def _structurally_complete(data: Buffer, mime: str) -> bool | None:
    """Whether the file is whole, judged from its container (None: this format needs a decode)."""
    if mime == "image/png":
        return _png_complete(data)
    if mime == "image/jpeg":
        return _ends_with(data, b"\xff\xd9")
    if mime == "image/webp":
        return len(data) >= 12 and struct.unpack_from("<I", data, 4)[0] + 8 <= len(data)
    if mime == "image/gif":
        return _ends_with(data, b"\x3b")
    return None


def verify_result(data: Buffer, *, max_pixels: int) -> ImageInfo:
    """Check an image a provider returned: real type, complete file, size from the header.

    Cheaper than :func:`inspect_image`: PNG chunk CRCs, JPEG/GIF trailers and the WebP RIFF length show
    truncation without decoding pixels (a full decode costs tens of ms per 1K image, hundreds at 4K);
    formats without such a structure are fully decoded. ``data`` may be a memory map of a file
    (:func:`verify_result_file`): nothing here copies it.
    """
    mime = _require_mime(data)
    complete = _structurally_complete(data, mime)
    if complete is None:
        return inspect_image(data, max_bytes=len(data), max_pixels=max_pixels)
    if not complete:
        raise InvalidImage(_MSG_UNREADABLE)
    width, height = image_size(data)
    if width * height > max_pixels:
        raise InvalidImage("The image is {size}, more than allowed.", size=_fmt_megapixels(width * height))
    return ImageInfo(mime_type=mime, width=width, height=height, frames=1, size_bytes=len(data))


def verify_result_file(path: str, *, max_pixels: int) -> ImageInfo:
    """:func:`verify_result` for an image in a file, read through a memory map (no copy of it on the heap)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return verify_result(b"", max_pixels=max_pixels)  # the "empty image" message
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return verify_result(mapped, max_pixels=max_pixels)


async def verify_result_async(data: bytes, *, max_pixels: int) -> ImageInfo:
    return await asyncio.to_thread(verify_result, data, max_pixels=max_pixels)


# --- normalisation for providers ----------------------------------------------------------------------------


def _pick_reference_encoder(has_alpha: bool, allowed: Collection[str]) -> _Encoder:
    """Alpha: PNG, else WebP (keeps alpha), else JPEG (flattened). Opaque: JPEG, else WebP, else PNG."""
    order = (
        ("image/png", "image/webp", "image/jpeg") if has_alpha else ("image/jpeg", "image/webp", "image/png")
    )
    for mime in order:
        if mime in allowed:
            if mime == "image/png":
                return _PNG
            if mime == "image/webp":
                return _webp(_NORM_QUALITIES[0])
            return _jpeg(_NORM_QUALITIES[0])
    raise ValueError(f"allowed_mime has no type we can encode (need PNG, JPEG or WebP): {sorted(allowed)}")


def normalize_reference(
    data: bytes,
    *,
    max_bytes: int,
    allowed_mime: Collection[str],
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> EncodedImage:
    """Make a (validated) reference image acceptable to a provider route.

    If its sniffed type is in ``allowed_mime``, it is at most ``max_bytes`` and its longest side is at most
    ``max_side`` (if given), the very same bytes are returned. Otherwise the first frame is decoded, EXIF
    orientation applied, the image downscaled to ``max_side`` if needed, and re-encoded: PNG if it has
    transparency and PNG is allowed (else WebP, else JPEG on white); opaque images as JPEG q90 (else WebP q90,
    else PNG). If that is still over ``max_bytes``: quality 85 then 75 (lossy only), then downscaling by 0.75
    per step, at most 12 steps. Raises :class:`InvalidImage` if the image is unusable or cannot be made to
    fit, ``ValueError`` if ``allowed_mime`` contains none of PNG/JPEG/WebP.
    """
    mime = _require_mime(data)
    with _open(data, mime, max_pixels=max_pixels) as header:
        width, height = _displayed_size(header)
    if (
        mime in allowed_mime
        and len(data) <= max_bytes
        and (max_side is None or max(width, height) <= max_side)
    ):
        return EncodedImage(data=data, mime_type=mime, width=width, height=height)

    _mime, img = _decode_first_frame(data, max_pixels=max_pixels)
    if max_side is not None:
        img = _resize(img, _fit_box(img.size, max_side))
    alpha = img.mode == "RGBA"
    enc = _pick_reference_encoder(alpha, allowed_mime)
    if enc.pil_format == "JPEG":
        img = _flatten(img)

    steps: list[_Step] = []
    if enc.pil_format == "PNG":
        steps.append(_Step(1.0, (enc,)))
        last = enc
    else:
        make = _jpeg if enc.pil_format == "JPEG" else _webp
        steps.extend(_Step(1.0, (make(q),)) for q in _NORM_QUALITIES)
        last = make(_NORM_QUALITIES[-1])
    steps.extend(_Step(_NORM_SCALE_STEP**k, (last,)) for k in range(1, _NORM_MAX_DOWNSCALES + 1))

    result = _first_fit(img, steps, max_bytes)
    if result is None:
        raise InvalidImage(
            "The image could not be made smaller than {limit} for this model. Please use a smaller image.",
            limit=_fmt_bytes(max_bytes),
        )
    return result


async def normalize_reference_async(
    data: bytes,
    *,
    max_bytes: int,
    allowed_mime: Collection[str],
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> EncodedImage:
    """:func:`normalize_reference` in a worker thread."""
    return await asyncio.to_thread(
        normalize_reference,
        data,
        max_bytes=max_bytes,
        allowed_mime=allowed_mime,
        max_side=max_side,
        max_pixels=max_pixels,
    )


# --- fitting generated images into Discord uploads ----------------------------------------------------------


def _upload_steps(has_alpha: bool) -> list[_Step]:
    jpeg = _jpeg(_FIT_JPEG_QUALITY)
    steps = [_Step(1.0, (_WEBP_LOSSLESS,))]
    if has_alpha:
        # WebP is the only lossy format with alpha: always a candidate, whatever it costs.
        webp = _webp(_FIT_WEBP_QUALITY)
        steps.append(_Step(1.0, (webp,), smallest=True))
        downscale: tuple[_Encoder, ...] = (webp,)
    else:
        # JPEG first: it encodes ~20x faster, so a cheap fit can make the slow WebP unnecessary (a "smallest"
        # step only encodes WebP if it is predicted to be >= 5 % smaller). Above _FIT_WEBP_MAX_PIXELS, lossy
        # WebP is not tried at all for opaque images: it would take seconds (see the constant).
        webp = _webp(_FIT_WEBP_QUALITY, max_pixels=_FIT_WEBP_MAX_PIXELS)
        steps.append(_Step(1.0, (jpeg, webp), smallest=True))
        downscale = (jpeg, webp)
    steps.extend(_Step(_FIT_SCALE_STEP**k, downscale) for k in range(1, _FIT_MAX_DOWNSCALES + 1))
    return steps


def fit_for_upload(data: bytes, *, limit_bytes: int) -> EncodedImage:
    """Make a generated image fit a Discord upload limit of ``limit_bytes``.

    If it already fits, it is returned unchanged (type sniffed, dimensions from the header). Otherwise the
    first frame is re-encoded, trying in order and returning the first step that fits:

    1. lossless WebP (fast settings: method 0);
    2. WebP q90 and, if the image has no transparency, JPEG q92: the smaller that fits;
    3. downscaling by 0.85 per step (at most 24 steps), each step trying JPEG q92 (opaque images only) and
       then WebP q90.

    For opaque images larger than 6 MP lossy WebP is skipped (it takes seconds there; JPEG q92 does not).

    Transparency is preserved (JPEG is never used for images with transparent pixels). For large images, each
    candidate's size is predicted from a sample first and encodings predicted to be clearly too big are
    skipped, so the search stays fast. Raises :class:`InvalidImage` if ``data`` is not a usable image or
    cannot be made to fit.
    """
    mime = _require_mime(data)
    if len(data) <= limit_bytes:
        with _open(data, mime, max_pixels=None) as header:
            width, height = _displayed_size(header)
        return EncodedImage(data=data, mime_type=mime, width=width, height=height)

    _mime, img = _decode_first_frame(data, max_pixels=None)
    result = _first_fit(img, _upload_steps(img.mode == "RGBA"), limit_bytes)
    if result is None:
        raise InvalidImage(
            "The image could not be made smaller than {limit} to upload it.", limit=_fmt_bytes(limit_bytes)
        )
    return result


async def fit_for_upload_async(data: bytes, *, limit_bytes: int) -> EncodedImage:
    """:func:`fit_for_upload` in a worker thread."""
    return await asyncio.to_thread(fit_for_upload, data, limit_bytes=limit_bytes)


@dataclass(frozen=True)
class FittedImage:
    """What :func:`fit_upload_file` made: the upload's metadata, and its bytes (``data``) or the file they
    were written to (``path``)."""

    mime_type: str
    width: int
    height: int
    size_bytes: int
    sha256: str
    data: bytes | None = field(default=None, repr=False)
    path: str | None = None

    @property
    def extension(self) -> str:
        return extension_for(self.mime_type)


def fit_upload_file(source: bytes | str, *, limit_bytes: int, out_path: str | None = None) -> FittedImage:
    """:func:`fit_for_upload` for a separate process: the image from ``source`` (its bytes, or a file), the
    result with its SHA-256 returned as bytes or, with ``out_path``, written there (only the metadata
    travels back). An image that already fits and came from a file is left in that file.

    Module-level and pickle-friendly: this is what the worker's encoder processes run.
    """
    from_file = isinstance(source, str)
    if isinstance(source, str):
        with open(source, "rb") as f:
            data = f.read()
    else:
        data = source
    fitted = fit_for_upload(data, limit_bytes=limit_bytes)
    digest = sha256_hex(fitted.data)
    size = len(fitted.data)
    if from_file and fitted.data is data:
        return FittedImage(fitted.mime_type, fitted.width, fitted.height, size, digest, path=source)
    if out_path is not None:
        with open(out_path, "wb") as f:
            f.write(fitted.data)
        return FittedImage(fitted.mime_type, fitted.width, fitted.height, size, digest, path=out_path)
    return FittedImage(fitted.mime_type, fitted.width, fitted.height, size, digest, data=fitted.data)


# --- misc ---------------------------------------------------------------------------------------------------


def make_thumbnail(data: bytes, *, max_side: int = 256, max_pixels: int | None = None) -> EncodedImage:
    """A WebP thumbnail of the first frame whose longest side is at most ``max_side`` (never upscaled).

    EXIF orientation is applied and transparency kept. Raises :class:`InvalidImage` on unusable data, and
    on a source of more than ``max_pixels`` pixels when that is given.
    """
    if max_side < 1:
        raise ValueError("max_side must be >= 1")
    # The target box is square, so decoding a JPEG at reduced scale is safe whatever its EXIF orientation.
    _mime, out = _decode_first_frame(data, max_pixels=max_pixels, draft=(max_side, max_side))
    size = _fit_box(out.size, max_side)
    if size != out.size:
        out = out.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    encoded = _encode(out, _webp(_THUMB_WEBP_QUALITY))
    if encoded is None:  # pragma: no cover - a <=max_side WebP always encodes
        raise InvalidImage(_MSG_UNREADABLE)
    return EncodedImage(data=encoded, mime_type="image/webp", width=out.width, height=out.height)


async def make_thumbnail_async(data: bytes, *, max_side: int = 256) -> EncodedImage:
    """:func:`make_thumbnail` in a worker thread."""
    return await asyncio.to_thread(make_thumbnail, data, max_side=max_side)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


async def sha256_hex_async(data: bytes) -> str:
    """:func:`sha256_hex`, in a worker thread when ``data`` is large enough for that to matter."""
    if len(data) <= _HASH_INLINE_MAX:
        return sha256_hex(data)
    return await asyncio.to_thread(sha256_hex, data)
