"""The image store on its own: originals, thumbnails made on demand, unsafe names, deleting and pruning."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

from PIL import Image

from bot import imagestore
from bot.imagestore import THUMB_SIDE, ImageStore, stem_of


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, (10, 200, 30, 128)).save(out, "PNG")
    return out.getvalue()


async def test_save_writes_the_original_and_the_thumbnail_is_made_when_asked_for(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert await store.save(7, 42, [("palette-42-1.png", png((1600, 900)))]) == 1
    original = store.find_original(7, 42, "palette-42-1.png")
    assert original is not None and original[1] == "image/png"
    expected = store.thumb_path(7, 42, "palette-42-1.png")
    assert expected is not None and not expected.exists()  # delivering a result makes no thumbnail
    thumb = await store.thumbnail(7, 42, "palette-42-1.png")
    assert thumb == expected
    with Image.open(thumb) as img:
        assert img.format == "WEBP" and max(img.size) <= THUMB_SIDE
    made = thumb.stat().st_mtime_ns
    assert await store.thumbnail(7, 42, "palette-42-1.png") == thumb
    assert thumb.stat().st_mtime_ns == made  # kept, not made again


async def test_concurrent_requests_make_a_thumbnail_once(tmp_path: Path, monkeypatch: Any) -> None:
    store = ImageStore(tmp_path)
    await store.save(7, 43, [("palette-43-1.png", png((800, 800)))])
    calls = []
    real = imagestore.make_thumbnail

    def counting(data: bytes, **kwargs: Any) -> Any:
        calls.append(1)
        return real(data, **kwargs)

    monkeypatch.setattr(imagestore, "make_thumbnail", counting)
    got = await asyncio.gather(*(store.thumbnail(7, 43, "palette-43-1.png") for _ in range(5)))
    assert len(set(got)) == 1 and got[0] is not None and calls == [1]


async def test_no_thumbnail_without_an_original_or_from_a_corrupt_one(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert await store.thumbnail(1, 1, "missing.png") is None
    assert await store.thumbnail(1, 1, "../../etc/passwd") is None
    await store.save(1, 2, [("broken.png", png((64, 64))[:60])])  # a PNG header, then nothing
    assert store.find_original(1, 2, "broken.png") is not None
    assert await store.thumbnail(1, 2, "broken.png") is None


async def test_a_spooled_file_is_linked_not_copied(tmp_path: Path) -> None:
    spooled = tmp_path / "spooled.img"
    spooled.write_bytes(png((20, 20)))
    store = ImageStore(tmp_path / "store")
    assert await store.save(1, 4, [("palette-4-1.png", spooled)]) == 1
    found = store.find_original(1, 4, "palette-4-1.png")
    assert found is not None and found[0].read_bytes() == spooled.read_bytes()
    assert found[0].stat().st_ino == spooled.stat().st_ino


async def test_unsafe_names_and_non_images_are_skipped(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert stem_of("../../etc/passwd") is None and stem_of("a/b.png") is None
    assert await store.save(1, 2, [("../../x.png", png((8, 8))), ("ok.png", b"not an image")]) == 0
    assert not any(tmp_path.rglob("*.png"))


async def test_a_spooled_file_is_read_from_disk(tmp_path: Path) -> None:
    spooled = tmp_path / "spooled.img"
    spooled.write_bytes(png((20, 20)))
    store = ImageStore(tmp_path / "store")
    assert await store.save(1, 3, [("palette-3-1.png", spooled)]) == 1


async def test_prune_removes_old_originals_keeps_thumbnails(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention_days=30)
    await store.save(1, 1, [("old.png", png((8, 8)))])
    await store.save(1, 2, [("new.png", png((8, 8)))])
    old = store.find_original(1, 1, "old.png")
    assert old is not None
    past = time.time() - 31 * 86400
    os.utime(old[0], (past, past))
    assert not store.thumb_path(1, 1, "old.png").exists()  # type: ignore[union-attr]
    assert await store.prune() == 1
    assert store.find_original(1, 1, "old.png") is None
    assert store.find_original(1, 2, "new.png") is not None
    # The thumbnail nobody had asked for was made before its original went, and is still served.
    assert store.thumb_path(1, 1, "old.png").is_file()  # type: ignore[union-attr]
    assert await store.thumbnail(1, 1, "old.png") is not None
    assert not store.thumb_path(1, 2, "new.png").exists()  # type: ignore[union-attr]
    assert await ImageStore(tmp_path).prune() == 0  # no retention: nothing pruned


async def test_delete_job_and_user(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    await store.save(1, 1, [("a.png", png((8, 8)))])
    await store.save(1, 2, [("b.png", png((8, 8)))])
    await store.save(2, 3, [("c.png", png((8, 8)))])
    await store.delete_job(1, 1)
    assert store.find_original(1, 1, "a.png") is None and store.find_original(1, 2, "b.png") is not None
    await store.delete_user(1)
    assert store.find_original(1, 2, "b.png") is None and store.find_original(2, 3, "c.png") is not None


async def test_held_images_outlive_the_spool_and_are_cleaned_up(tmp_path: Path) -> None:
    spooled = tmp_path / "spool" / "x.img"
    spooled.parent.mkdir()
    spooled.write_bytes(png((30, 30)))
    store = ImageStore(tmp_path / "store")
    held = await store.hold([("palette-9-1.png", spooled), ("palette-9-2.png", png((10, 10)))])
    spooled.unlink()  # the spool lets go of it when the delivery is done
    assert await store.save(5, 9, held) == 2
    assert store.find_original(5, 9, "palette-9-1.png") is not None
    assert not any(store.incoming.iterdir())
