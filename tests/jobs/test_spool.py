"""The image spool: a memory budget on finished images, disk beyond it, re-encoding in encoder processes."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

from PIL import Image

from bot.jobs.spool import EncoderPool, ImageSpool, prepare_upload
from bot.providers.base import GeneratedImage
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
