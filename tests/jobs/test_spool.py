"""The image spool: a memory budget on finished images, disk beyond it, re-encoding in encoder processes."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from bot.jobs import spool as spool_module
from bot.jobs.spool import EncoderPool, ImageSpool, prepare_upload
from bot.providers.base import GeneratedImage
from bot.providers.parsing import SpooledPayload
from tests.fakes.http import noisy_png


def generated(data: bytes) -> GeneratedImage:
    with Image.open(io.BytesIO(data)) as img:
        return GeneratedImage(data, "image/png", img.width, img.height)


async def test_admission_keeps_what_fits_the_budget_and_spools_the_rest(tmp_path: Path) -> None:
    data = noisy_png(64, 64)
    spool = ImageSpool(tmp_path / "spool", budget=len(data) * 2)
    held = await spool.admit([generated(data) for _ in range(5)])
    assert [h.data is not None for h in held] == [True, True, False, False, False]
    assert spool.budget.used == 2 * len(data) and spool.budget.peak <= spool.budget.limit
    assert all(h.path is not None and h.path.read_bytes() == data for h in held[2:])
    # Every one of them uploads the same, from memory or from its file.
    uploads = await asyncio.gather(*(prepare_upload(spool, None, h, limit_bytes=10**7) for h in held))
    assert {u.fitted.sha256 for u in uploads} == {uploads[0].fitted.sha256}
    assert [u.data is not None for u in uploads] == [True, True, False, False, False]
    await spool.discard(uploads)
    await spool.discard(held)
    assert spool.budget.used == 0 and not list((tmp_path / "spool").iterdir())


async def test_re_encoding_runs_in_another_process_and_spills_when_memory_is_short(tmp_path: Path) -> None:
    big = noisy_png(512, 512)
    limit = len(big) // 3
    spool = ImageSpool(tmp_path / "spool", budget=len(big) + limit // 2)
    encoders = EncoderPool(2)
    try:
        held = await spool.admit([generated(big), generated(big)])  # one in memory, one on disk
        assert held[0].data is not None and held[1].path is not None
        uploads = [await prepare_upload(spool, encoders, h, limit_bytes=limit) for h in held]
        for upload in uploads:
            assert upload.fitted.size_bytes <= limit and upload.fitted.mime_type in (
                "image/jpeg",
                "image/webp",
            )
            # No room left for the re-encoded bytes in memory: the encoder wrote them to the spool.
            assert upload.data is None and upload.path is not None
            assert os.path.getsize(upload.path) == upload.fitted.size_bytes
        assert spool.budget.peak <= spool.budget.limit
        await spool.discard(uploads)
        await spool.discard(held)
        assert spool.budget.used == 0 and not list((tmp_path / "spool").iterdir())
        pids = await asyncio.get_running_loop().run_in_executor(encoders._executor(), os.getpid)
        assert pids != os.getpid()
    finally:
        encoders.close()


# --- streamed results (SpoolSink) ------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _pieces(data: bytes, size: int = 48 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("expected", [0, 10**6])
async def test_a_streamed_result_on_disk_is_written_by_a_thread_whole_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: int
) -> None:
    """No budget: an announced result goes to a file from the first byte; one of unknown size starts in
    memory and moves to a file when the budget runs out. Either way the loop never writes the file."""
    threads: list[int] = []
    real = spool_module._write_all

    def recording(fd: int, buffers: list[bytes]) -> None:
        threads.append(threading.get_ident())
        real(fd, buffers)

    monkeypatch.setattr(spool_module, "_write_all", recording)
    spool = ImageSpool(tmp_path / "spool", budget=0)
    data = os.urandom(3 * 1024 * 1024 + 123)
    fds = _open_fds()
    sink = spool.sink(expected)
    for piece in _pieces(data):
        sink.write(piece)
        await sink.drain()
    payload = sink.finish()
    assert isinstance(payload, SpooledPayload) and payload.size == len(data)
    await sink.complete()
    assert Path(payload.path).read_bytes() == data
    assert len(threads) >= 2, "written in blocks, as the stream goes"
    assert threading.get_ident() not in threads
    assert _open_fds() == fds, "the file is closed once complete"
    assert spool.budget.used == 0 and spool.spilled == 1


async def test_a_slow_disk_holds_the_stream_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = spool_module._write_all

    def slow(fd: int, buffers: list[bytes]) -> None:
        time.sleep(0.02)
        real(fd, buffers)

    monkeypatch.setattr(spool_module, "_write_all", slow)
    monkeypatch.setattr(spool_module, "WRITE_BLOCK", 64 * 1024)
    monkeypatch.setattr(spool_module, "WRITE_BACKLOG", 256 * 1024)
    spool = ImageSpool(tmp_path / "spool", budget=0)
    data = os.urandom(2 * 1024 * 1024)
    sink = spool.sink(len(data))
    waiting: list[int] = []
    for piece in _pieces(data, 16 * 1024):
        sink.write(piece)
        await sink.drain()
        waiting.append(sink._pending_size)
    assert max(waiting) <= 256 * 1024, "drain() returns only once the backlog is within bounds"
    payload = sink.finish()
    await sink.complete()
    assert isinstance(payload, SpooledPayload) and Path(payload.path).read_bytes() == data


async def test_a_result_discarded_while_its_file_is_written_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = spool_module._write_all

    def stuck(fd: int, buffers: list[bytes]) -> None:
        release.wait(5)
        real(fd, buffers)

    monkeypatch.setattr(spool_module, "_write_all", stuck)
    spool = ImageSpool(tmp_path / "spool", budget=0)
    fds = _open_fds()
    sink = spool.sink(10**6)
    for piece in _pieces(os.urandom(2 * 1024 * 1024)):
        sink.write(piece)
    [path] = list((tmp_path / "spool").iterdir())
    sink.discard()  # a write is in flight: the file stays open until it ends
    assert path.exists()
    release.set()
    for _ in range(200):
        if not path.exists() and _open_fds() == fds:
            break
        await asyncio.sleep(0.01)
    assert not path.exists() and _open_fds() == fds


async def test_a_failed_write_fails_the_stream_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, buffers: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "_write_all", full)
    spool = ImageSpool(tmp_path / "spool", budget=0)
    fds = _open_fds()
    sink = spool.sink(10**6)
    with pytest.raises(OSError, match="No space"):
        for piece in _pieces(os.urandom(2 * 1024 * 1024)):
            sink.write(piece)
            await asyncio.sleep(0)  # let the write's result arrive
            await sink.drain()
        sink.finish()
        await sink.complete()
    # The stream may go on a little before it looks again: more bytes are dropped, the error stays.
    sink.write(os.urandom(2 * 1024 * 1024))
    with pytest.raises(OSError, match="No space"):
        await sink.drain()
    sink.discard()
    assert not list((tmp_path / "spool").iterdir()) and _open_fds() == fds


async def test_results_too_big_to_upload_as_they_are_wait_on_disk(tmp_path: Path) -> None:
    """``direct_bytes``: whatever room the budget has, such a result is re-encoded from a file."""
    small, big = noisy_png(32, 32), noisy_png(256, 256)
    spool = ImageSpool(tmp_path / "spool", budget=10**9, direct_bytes=len(big))
    sinks = [spool.sink(len(big)), spool.sink(len(small))]
    assert [sink.on_disk for sink in sinks] == [True, False]
    for sink in sinks:
        sink.discard()
    held = await spool.admit([generated(small), generated(big)])
    assert held[0].data == small and held[1].path is not None and held[1].path.read_bytes() == big
    assert spool.budget.used == len(small)
    await spool.discard(held)
    assert spool.budget.used == 0


def _encoder_children() -> set[int]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == os.getpid() and b"spawn_main" in cmdline:
            found.add(int(pid))
    return found


async def test_encoder_processes_can_start_before_the_first_result() -> None:
    """The worker role starts its encoders at start-up: the first 4K result does not wait for them."""
    encoders = EncoderPool(2)
    try:
        before = _encoder_children()
        await asyncio.to_thread(encoders.start)
        for _ in range(100):
            if len(_encoder_children() - before) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(_encoder_children() - before) == 2
    finally:
        encoders.close()
