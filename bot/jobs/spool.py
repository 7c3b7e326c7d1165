"""Images on their way to Discord: a memory budget, a spool on disk beyond it, encoder processes.

Between a provider's answer and the upload, a worker holds finished images. However many large jobs are
in flight, the bytes it keeps in memory stay within ``IMAGE_MEMORY_BUDGET``: an image that does not fit
the budget when it arrives is written to the spool directory (in a thread) and dropped from memory; one
that must be re-encoded to fit an upload is re-encoded in an encoder process (:class:`EncoderPool`),
reading from and writing to the spool when its bytes are not in memory. Uploads read spooled files as
they stream them (``discord.File`` with a path). Nothing waits for the budget, so nothing can deadlock on
it: what does not fit goes to disk.

Images a provider inlines in its answer (ListenHub's base64) are decoded straight into the spool while
they stream in (:meth:`ImageSpool.sink`, handed to the provider transport through
:data:`bot.providers.transport.RESULT_SINK`): into memory when the budget has room for the size the
answer announces, else into a file, so the budget also covers downloads in flight. A download of unknown
size takes the budget chunk by chunk and moves to a file when it runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.images import FittedImage, fit_upload_file
from bot.providers.base import GeneratedImage
from bot.providers.parsing import SpooledPayload

log = logging.getLogger(__name__)

SPOOL_DIR_NAME = "spool"


class ImageBudget:
    """Bytes of image data held in memory, against a limit. ``peak`` is the highest ``used`` seen."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()  # taken from the loop only, but cheap and safe from threads too

    def try_take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


@dataclass(eq=False)
class SpooledImage:
    """One finished image: in memory (counted in the budget) or in a spool file."""

    mime_type: str
    width: int
    height: int
    size: int
    data: bytes | None = field(default=None, repr=False)
    path: Path | None = None

    @property
    def source(self) -> bytes | str:
        """What an encoder reads: the bytes, or the file's path."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return str(self.path)


@dataclass(eq=False)
class Upload:
    """An image ready to upload: its bytes in memory (``data``, counted as ``counted``) or a file."""

    fitted: FittedImage
    counted: int = 0
    owned_path: Path | None = None  # a file this upload made (deleted with it)

    @property
    def data(self) -> bytes | None:
        return self.fitted.data

    @property
    def path(self) -> str | None:
        return self.fitted.path


class ImageSpool:
    """Holds finished images within the memory budget and spools the rest to ``directory``."""

    def __init__(self, directory: Path, budget: int) -> None:
        self.directory = directory
        self.budget = ImageBudget(budget)
        #: Images that waited on disk (for tests and the benchmark).
        self.spilled = 0
        self._made = False

    def _ensure_dir(self) -> None:
        if not self._made:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._made = True

    def new_path(self, suffix: str = ".img") -> Path:
        self._ensure_dir()
        return self.directory / f"{uuid.uuid4().hex}{suffix}"

    def sink(self, expected: int) -> SpoolSink:
        """Where one streamed result is decoded to (``expected``: its likely size, 0 if unknown)."""
        return SpoolSink(self, expected)

    async def admit(self, images: Sequence[GeneratedImage]) -> list[SpooledImage]:
        """Take over a provider's images: kept in memory while the budget allows, else written to disk
        (images the transport decoded to a spool file stay there)."""
        held: list[SpooledImage] = []
        try:
            for image in images:
                if image.path is not None:
                    path = Path(image.path)
                    held.append(
                        SpooledImage(image.mime_type, image.width, image.height, image.file_size, path=path)
                    )
                    continue
                size = len(image.data)
                item = SpooledImage(image.mime_type, image.width, image.height, size)
                if self.budget.try_take(size):
                    item.data = image.data
                else:
                    path = await asyncio.to_thread(self._write, image.data)
                    item.path = path
                    self.spilled += 1
                held.append(item)
        except BaseException:
            await self.discard(held)
            raise
        return held

    def _write(self, data: bytes) -> Path:
        path = self.new_path()
        path.write_bytes(data)
        return path

    async def discard(self, items: Sequence[SpooledImage | Upload]) -> None:
        """Let go of images (memory back to the budget, spool files deleted)."""
        paths: list[Path] = []
        for item in items:
            if isinstance(item, SpooledImage):
                if item.data is not None:
                    self.budget.give(item.size)
                    item.data = None
                if item.path is not None:
                    paths.append(item.path)
                    item.path = None
            else:
                if item.counted:
                    self.budget.give(item.counted)
                    item.counted = 0
                if item.owned_path is not None:
                    paths.append(item.owned_path)
                    item.owned_path = None
        if paths:
            await asyncio.to_thread(_unlink_all, paths)

    def clear(self) -> None:
        """Remove spool files left behind by an earlier run of this process's role (at start-up)."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)
        self._made = False


class SpoolSink:
    """One streamed result on its way in (a :class:`bot.providers.parsing.PayloadSink`).

    With an announced size that the budget has room for, the bytes are collected in memory under that
    reservation (given back when :meth:`finish` hands them on: :meth:`ImageSpool.admit` counts them
    again); without room, they go to a new spool file from the first byte. Each write is one network
    chunk's worth (tens of KB), written where it arrives; only a download of unknown size that outgrows
    the budget writes what it collected so far at once."""

    def __init__(self, spool: ImageSpool, expected: int) -> None:
        self.spool = spool
        self.size = 0
        self._counted = 0
        self._buffer: bytearray | None = None
        self._file: Any = None
        self._path: Path | None = None
        if expected <= 0 or spool.budget.try_take(expected):
            self._counted = max(0, expected)
            self._buffer = bytearray()
        else:
            self._open()

    def _open(self) -> None:
        self._path = self.spool.new_path()
        self._file = open(self._path, "wb")  # noqa: SIM115 - closed by finish() / discard()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._buffer is not None:
            beyond = self.size - self._counted
            if beyond <= 0 or self.spool.budget.try_take(beyond):
                self._counted = max(self._counted, self.size)
                self._buffer += data
                return
            self._open()  # the budget ran out (a size nobody announced): the rest goes to disk
            self._file.write(self._buffer)
            self._buffer = None
            self.spool.budget.give(self._counted)
            self._counted = 0
        self._file.write(data)

    def finish(self) -> bytes | SpooledPayload:
        if self._buffer is not None:
            data, self._buffer = bytes(self._buffer), None
            self.spool.budget.give(self._counted)
            self._counted = 0
            return data
        assert self._path is not None
        self._file.close()
        self.spool.spilled += 1
        return SpooledPayload(str(self._path), self.size)

    def discard(self) -> None:
        self._buffer = None
        if self._counted:
            self.spool.budget.give(self._counted)
            self._counted = 0
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._path is not None:
            _unlink_all([self._path])
            self._path = None


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class EncoderPool:
    """The processes that re-encode results for upload (CPU-heavy: never on the loop that talks to
    Discord, nor in its threads). Started on first use; closed by the worker composition."""

    def __init__(self, processes: int = 0) -> None:
        self.processes = processes or os.cpu_count() or 2
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the bot's process has threads (database, DNS); forking it would copy their locks.
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    async def fit(self, source: bytes | str, *, limit_bytes: int, out_path: str | None) -> FittedImage:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), _fit_in_process, source, limit_bytes, out_path)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _fit_in_process(source: bytes | str, limit_bytes: int, out_path: str | None) -> FittedImage:
    return fit_upload_file(source, limit_bytes=limit_bytes, out_path=out_path)


async def prepare_upload(
    spool: ImageSpool, encoders: EncoderPool | None, image: SpooledImage, *, limit_bytes: int
) -> Upload:
    """Fit one image into ``limit_bytes`` for upload.

    An image that already fits is only looked at (type, size, hash; in a thread) and uploaded from where
    it is. One that must be re-encoded goes to an encoder process; its result comes back in memory when
    the budget has room for it, else the process writes it to the spool.
    """
    if image.size <= limit_bytes or encoders is None:
        fitted = await asyncio.to_thread(fit_upload_file, image.source, limit_bytes=limit_bytes)
        # Bytes already held (and counted) by ``image``, or its spool file: nothing new to count.
        return Upload(fitted)
    room = min(limit_bytes, image.size)
    if spool.budget.try_take(room):
        try:
            fitted = await encoders.fit(image.source, limit_bytes=limit_bytes, out_path=None)
        except BaseException:
            spool.budget.give(room)
            raise
        size = len(fitted.data or b"")
        spool.budget.give(room - size)
        return Upload(fitted, counted=size)
    out = spool.new_path()
    try:
        fitted = await encoders.fit(image.source, limit_bytes=limit_bytes, out_path=str(out))
    except BaseException:
        await asyncio.to_thread(_unlink_all, [out])
        raise
    return Upload(fitted, owned_path=out if fitted.path == str(out) else None)
