"""Palette's own copy of every delivered image, so the web gallery never depends on Discord's expiring
attachment links.

Layout under the root (``<data dir>/images`` by default)::

    originals/<user id>/<job id>/<stem>.<ext>    the image as the provider made it
    thumbs/<user id>/<job id>/<stem>.webp        a small WebP (at most THUMB_SIDE pixels a side)

``<stem>`` is the name the result was posted under (``results.filename`` without its extension). A job's
files go when its owner deletes it or a moderator removes it, a user's when they clear their history.
``IMAGE_RETENTION_DAYS`` prunes originals past that age; thumbnails stay. All file and Pillow work runs
in a thread: never on the event loop.

Delivering a result stores its original only (a hard link of the spooled file where it can be). The
thumbnail is made the first time someone asks for it (:meth:`ImageStore.thumbnail`, the web gallery) and
kept; pruning makes the missing ones before it deletes an original. Decoding a 1K PNG and encoding its
WebP is most of a worker's CPU per job otherwise, spent on every result while few are ever looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bot.images import InvalidImage, extension_for, make_thumbnail, sniff_mime
from bot.singleflight import SingleFlight

log = logging.getLogger(__name__)

IMAGES_DIR_NAME = "images"
THUMB_SIDE = 384
#: Originals a browser shows as they are (anything else is offered as a download only).
BROWSER_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
ORIGINAL_TYPES = {**BROWSER_TYPES, "heic": "image/heic", "heif": "image/heif"}
_SAFE_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
# Decompression-bomb guard for thumbnails (results are checked before delivery, this is a second line).
MAX_THUMB_SOURCE_PIXELS = 100_000_000


def stem_of(filename: str) -> str | None:
    """The store name of a result (its posted file name without extension), or None if it is unsafe."""
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    return stem if _SAFE_STEM.match(stem) and ".." not in stem else None


class ImageStore:
    """Originals and thumbnails of delivered images in a folder."""

    def __init__(self, root: Path, *, retention_days: float | None = None) -> None:
        self.root = Path(root)
        self.retention_days = retention_days
        #: Thumbnails being made in this process, so that a page asking for one twice makes it once.
        self._making: SingleFlight[Path, Path | None] = SingleFlight()

    # ------------------------------------------------------------------ paths

    def _job_dir(self, kind: str, user_id: int, job_id: int) -> Path:
        return self.root / kind / str(int(user_id)) / str(int(job_id))

    def thumb_path(self, user_id: int, job_id: int, filename: str) -> Path | None:
        stem = stem_of(filename)
        return None if stem is None else self._job_dir("thumbs", user_id, job_id) / f"{stem}.webp"

    def find_original(self, user_id: int, job_id: int, filename: str) -> tuple[Path, str] | None:
        """The original's path and MIME type, if it is still kept (blocking: call in a thread)."""
        stem = stem_of(filename)
        if stem is None:
            return None
        folder = self._job_dir("originals", user_id, job_id)
        for ext, mime in ORIGINAL_TYPES.items():
            path = folder / f"{stem}.{ext}"
            if path.is_file():
                return path, mime
        return None

    # ------------------------------------------------------------------ writing

    async def save(self, user_id: int, job_id: int, items: Sequence[tuple[str, bytes | str | Path]]) -> int:
        """Store ``(posted file name, bytes or file path)`` pairs; returns how many were stored. Errors
        are logged, never raised: the gallery missing an image must not fail a delivered job."""
        try:
            return await asyncio.to_thread(self._save_all, user_id, job_id, list(items))
        except Exception:
            log.exception("job %s: could not store its images for the web gallery", job_id)
            return 0

    async def hold(self, items: Sequence[tuple[str, bytes | str | Path]]) -> list[tuple[str, bytes | Path]]:
        """Keep images past the spool that holds them, for a :meth:`save` later: bytes by reference, spool
        files hard-linked (or copied) into the store's ``.incoming`` folder, which :meth:`save` empties."""
        try:
            return await asyncio.to_thread(self._hold, list(items))
        except Exception:
            log.exception("could not keep delivered images for the web gallery")
            return []

    def _hold(self, items: list[tuple[str, bytes | str | Path]]) -> list[tuple[str, bytes | Path]]:
        held: list[tuple[str, bytes | Path]] = []
        for name, source in items:
            if isinstance(source, bytes):
                held.append((name, source))
                continue
            self.incoming.mkdir(parents=True, exist_ok=True)
            target = self.incoming / uuid.uuid4().hex
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            held.append((name, target))
        return held

    @property
    def incoming(self) -> Path:
        return self.root / ".incoming"

    def _save_all(self, user_id: int, job_id: int, items: list[tuple[str, bytes | str | Path]]) -> int:
        try:
            return self._save_items(user_id, job_id, items)
        finally:
            for _name, source in items:
                if isinstance(source, Path) and source.parent == self.incoming:
                    with contextlib.suppress(OSError):
                        source.unlink()

    def _save_items(self, user_id: int, job_id: int, items: list[tuple[str, bytes | str | Path]]) -> int:
        stored = 0
        for filename, source in items:
            stem = stem_of(filename)
            if stem is None:
                continue
            mime = sniff_mime(source if isinstance(source, bytes) else _head(Path(source)))
            if mime is None:
                continue
            originals = self._job_dir("originals", user_id, job_id)
            originals.mkdir(parents=True, exist_ok=True)
            target = originals / f"{stem}.{extension_for(mime)}"
            if isinstance(source, bytes):
                _write_atomic(target, source)
            else:
                _link_atomic(Path(source), target)
            stored += 1
        return stored

    # ------------------------------------------------------------------ thumbnails

    async def thumbnail(self, user_id: int, job_id: int, filename: str) -> Path | None:
        """The thumbnail's path, made now from the original if it is not there yet; None when neither
        exists or the original cannot be decoded."""
        path = self.thumb_path(user_id, job_id, filename)
        if path is None:
            return None
        if await asyncio.to_thread(path.is_file):
            return path
        return await self._making.run(
            path, lambda: asyncio.to_thread(self._make_thumbnail, user_id, job_id, filename, path)
        )

    def _make_thumbnail(self, user_id: int, job_id: int, filename: str, path: Path) -> Path | None:
        found = self.find_original(user_id, job_id, filename)
        if found is None:
            return None
        try:
            thumb = make_thumbnail(
                found[0].read_bytes(), max_side=THUMB_SIDE, max_pixels=MAX_THUMB_SOURCE_PIXELS
            )
        except InvalidImage:
            log.warning("job %s: its stored image %s cannot be decoded for a thumbnail", job_id, filename)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, thumb.data)
        return path

    # ------------------------------------------------------------------ deleting

    async def delete_job(self, user_id: int, job_id: int) -> None:
        await asyncio.to_thread(
            self._remove, [self._job_dir(k, user_id, job_id) for k in ("originals", "thumbs")]
        )

    async def delete_user(self, user_id: int) -> None:
        await asyncio.to_thread(
            self._remove, [self.root / k / str(int(user_id)) for k in ("originals", "thumbs")]
        )

    @staticmethod
    def _remove(paths: list[Path]) -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)

    async def prune(self, now: float | None = None) -> int:
        """Delete originals older than ``retention_days`` (by file time); thumbnails stay."""
        if not self.retention_days:
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        return await asyncio.to_thread(self._prune, cutoff)

    def _prune(self, cutoff: float) -> int:
        removed = 0
        day_ago = time.time() - 86400
        if self.incoming.is_dir():  # left by a process that died between delivering and storing
            for path in self.incoming.iterdir():
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < day_ago:
                        path.unlink()
        base = self.root / "originals"
        if not base.is_dir():
            return 0
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        self._keep_thumbnail_of(path)
                        path.unlink()
                        removed += 1
        return removed

    def _keep_thumbnail_of(self, original: Path) -> None:
        """Make the thumbnail of an original about to be pruned, if nobody asked for it yet."""
        try:
            user_id, job_id = int(original.parent.parent.name), int(original.parent.name)
        except ValueError:
            return
        thumb = self.thumb_path(user_id, job_id, original.name)
        if thumb is not None and not thumb.is_file():
            self._make_thumbnail(user_id, job_id, original.name, thumb)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _link_atomic(source: Path, path: Path) -> None:
    """``path`` becomes ``source``'s content: a hard link where the file system allows, else a copy."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)


def _head(path: Path, size: int = 64) -> bytes:
    with path.open("rb") as f:
        return f.read(size)
