"""The image store on its own: thumbnails, unsafe names, deleting and pruning originals."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from PIL import Image

from bot.imagestore import THUMB_SIDE, ImageStore, stem_of


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, (10, 200, 30, 128)).save(out, "PNG")
    return out.getvalue()


async def test_save_writes_original_and_small_webp(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert await store.save(7, 42, [("palette-42-1.png", png((1600, 900)))]) == 1
    original = store.find_original(7, 42, "palette-42-1.png")
    assert original is not None and original[1] == "image/png"
    thumb = store.thumb_path(7, 42, "palette-42-1.png")
    assert thumb is not None
    with Image.open(thumb) as img:
        assert img.format == "WEBP" and max(img.size) <= THUMB_SIDE


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
    assert await store.prune() == 1
    assert store.find_original(1, 1, "old.png") is None
    assert store.find_original(1, 2, "new.png") is not None
    assert store.thumb_path(1, 1, "old.png").is_file()  # type: ignore[union-attr]
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
