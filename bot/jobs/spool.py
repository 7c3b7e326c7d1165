"""Images on their way to Discord: a memory budget, a spool on disk beyond it, encoder processes.

Between a provider's answer and the upload, a worker holds finished images. However many large jobs are
in flight, the bytes it keeps in memory stay within ``IMAGE_MEMORY_BUDGET``: an image that does not fit
the budget when it arrives is written to the spool directory (in a thread) and dropped from memory; one
too big to upload as it is waits on disk whatever the budget (``direct_bytes``: it is re-encoded by an
encoder process (:class:`EncoderPool`), which reads a file as cheaply as memory, and the gallery keeps
the file by a hard link). Encoders read from and write to the spool when the bytes are not in memory.
Uploads read spooled files as they stream them (``discord.File`` with a path). Nothing waits for the
budget, so nothing can deadlock on it: what does not fit goes to disk.

Images a provider inlines in its answer (ListenHub's base64) are decoded straight into the spool while
they stream in (:meth:`ImageSpool.sink`, handed to the provider transport through
:data:`bot.providers.transport.RESULT_SINK`): into memory when the budget has room for the size the
answer announces, else into a file written by a thread, so the budget also covers downloads in flight
and the event loop never writes a file. A download of unknown size takes the budget chunk by chunk and
moves to a file when it runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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

from bot.images import FittedImage, fit_upload_file, sniff_mime
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

    def __init__(self, directory: Path, budget: int, *, direct_bytes: int = 0) -> None:
        """``direct_bytes``: results at least this big wait on disk whatever the budget (0: never), see
        :class:`SpoolSink`; the worker sets it to Discord's default upload limit."""
        self.directory = directory
        self.budget = ImageBudget(budget)
        self.direct_bytes = direct_bytes
        #: Images that waited on disk (for tests and the benchmark).
        self.spilled = 0
        self._made = False

    def _ensure_dir(self) -> None:
        if not self._made:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._made = True

    def waits_on_disk(self, size: int) -> bool:
        """Whether a result of ``size`` bytes goes to disk whatever the budget (``direct_bytes``)."""
        return bool(self.direct_bytes) and size >= self.direct_bytes

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
                if not self.waits_on_disk(size) and self.budget.try_take(size):
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


#: File writes of a streamed result are handed to a thread in blocks of about this many bytes...
WRITE_BLOCK = 1024 * 1024
#: ... and the stream waits (:meth:`SpoolSink.drain`) while more than this waits to be written.
WRITE_BACKLOG = 4 * 1024 * 1024
#: Buffers given to one ``writev`` at most (Linux takes 1024).
_IOV_MAX = 512


def _write_all(fd: int, buffers: list[bytes]) -> None:
    if len(buffers) > _IOV_MAX:
        buffers = [b"".join(buffers)]
    total = sum(len(b) for b in buffers)
    written = os.writev(fd, buffers)
    if written < total:  # a short write (rare on a local disk): the rest in plain writes
        rest = memoryview(b"".join(buffers))[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


class SpoolSink:
    """One streamed result on its way in (a :class:`bot.providers.parsing.PayloadSink`).

    Where its bytes go is decided from the size the answer announces:

    - at least the spool's ``direct_bytes`` (a result too big to upload as it is): a spool file from the
      first byte. It will be re-encoded by an encoder process, which reads a file as cheaply as memory,
      and the gallery keeps the file by a hard link; held in memory it would only cost copies, a pipe
      transfer to the encoder and a second write for the gallery.
    - room in the budget: memory, under that reservation (given back when :meth:`finish` hands the bytes
      on: :meth:`ImageSpool.admit` counts them again).
    - else: a spool file. A download of unknown size takes the budget as it grows and moves to a file
      when the budget runs out or it reaches ``direct_bytes``.

    The event loop only collects the decoded pieces; file writes run in a thread, in blocks of
    :data:`WRITE_BLOCK`, one at a time and in order. :meth:`drain` holds the stream back while more than
    :data:`WRITE_BACKLOG` waits (a disk slower than the network); :meth:`complete` waits for the last
    write and closes the file. The file is whole only after :meth:`complete`.
    """

    def __init__(self, spool: ImageSpool, expected: int) -> None:
        self.spool = spool
        self.size = 0
        self._counted = 0
        self._chunks: list[bytes] | None = None
        self._fd: int | None = None
        self._path: Path | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._writing: asyncio.Future[None] | None = None
        self._finishing = False
        self._discarded = False
        self._error: BaseException | None = None
        self._done: asyncio.Event | None = None
        if not spool.waits_on_disk(expected) and (expected <= 0 or spool.budget.try_take(expected)):
            self._counted = max(0, expected)
            self._chunks = []
        else:
            self._open()

    @property
    def on_disk(self) -> bool:
        return self._path is not None

    def _open(self) -> None:
        self._path = self.spool.new_path()
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._chunks is not None:
            spool, beyond = self.spool, self.size - self._counted
            if not spool.waits_on_disk(self.size) and (beyond <= 0 or spool.budget.try_take(beyond)):
                self._counted = max(self._counted, self.size)
                self._chunks.append(data)
                return
            # A size nobody announced outgrew the budget, or what may be uploaded as it is: to disk.
            self._open()
            self._pending, self._chunks = self._chunks, None
            self._pending_size = self.size - len(data)
            self.spool.budget.give(self._counted)
            self._counted = 0
        if self._error is not None or self._discarded:
            return  # the file is closed: drain() or complete() raises the error
        self._pending.append(data)
        self._pending_size += len(data)
        if self._writing is None and self._pending_size >= WRITE_BLOCK:
            self._write_next()

    def _write_next(self) -> None:
        assert self._fd is not None
        buffers, self._pending, self._pending_size = self._pending, [], 0
        self._writing = asyncio.get_running_loop().run_in_executor(None, _write_all, self._fd, buffers)
        self._writing.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._writing = None
        if not future.cancelled() and future.exception() is not None:
            self._error = future.exception()
        if self._discarded or self._error is not None:
            self._pending, self._pending_size = [], 0
            self._close(unlink=self._discarded)
        elif self._pending and (self._finishing or self._pending_size >= WRITE_BLOCK):
            self._write_next()
        elif self._finishing:
            self._close(unlink=False)

    def _close(self, *, unlink: bool) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if unlink and self._path is not None:
            _unlink_all([self._path])
        if self._done is not None:
            self._done.set()

    async def drain(self) -> None:
        """Wait while the file writes are more than :data:`WRITE_BACKLOG` behind the stream."""
        while self._writing is not None and self._pending_size > WRITE_BACKLOG:
            await asyncio.shield(self._writing)  # never cancelled: the thread would still use the file
        if self._error is not None:
            raise self._error

    def finish(self) -> bytes | SpooledPayload:
        if self._chunks is not None:
            data, self._chunks = b"".join(self._chunks), None
            self.spool.budget.give(self._counted)
            self._counted = 0
            return data
        assert self._path is not None
        self._finishing = True
        self._done = asyncio.Event()
        if self._writing is None:
            if self._pending:
                self._write_next()
            else:
                self._close(unlink=False)
        self.spool.spilled += 1
        return SpooledPayload(str(self._path), self.size)

    async def complete(self) -> None:
        """Wait until a finished payload's file is whole and closed (raises the error of a failed write)."""
        if self._done is not None:
            await self._done.wait()
        if self._error is not None:
            raise self._error

    def discard(self) -> None:
        """Let go of the payload: memory back to the budget, the file deleted (once a write in flight has
        ended: the thread still uses it)."""
        self._discarded = True
        self._chunks = None
        if self._counted:
            self.spool.budget.give(self._counted)
            self._counted = 0
        self._pending, self._pending_size = [], 0
        if self._writing is None:
            self._close(unlink=True)


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

    def start(self) -> None:
        """Start the processes now, while nothing waits for them (each spends ~0.1 s importing), instead
        of when the first result needs re-encoding. Submitting one small task per process spawns them
        all: the pool adds a process whenever none is idle."""
        pool = self._executor()
        for _ in range(self.processes):
            pool.submit(sniff_mime, b"")

    async def fit(self, source: bytes | str, *, limit_bytes: int, out_path: str | None) -> FittedImage:
        loop = asyncio.get_running_loop()
        # bot.images' own function: an encoder process imports that module only (0.1 s, against 0.8 s
        # for this one and the provider stack behind it).
        job = functools.partial(fit_upload_file, source, limit_bytes=limit_bytes, out_path=out_path)
        return await loop.run_in_executor(self._executor(), job)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


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
