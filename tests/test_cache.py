"""The decoded-image cache: pixel-exact, reused, rebuilt when data change, bad files kept
bad, and training on it gives the same losses as decoding every time."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images
from PIL import Image

import selfsup
from selfsup.data import DataError, scan_folder
from selfsup.data import cache as cache_mod
from selfsup.data.cache import CachedSource, open_cache
from selfsup.data.decode import to_tensor


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = make_images(tmp_path / "imgs", classes=2, per_class=4, size=20)
    Image.fromarray(np.full((30, 50, 3), 90, dtype=np.uint8)).save(root / "class0" / "wide.png")
    (root / "class1" / "broken.png").write_bytes(b"not an image")
    return root


def test_cache_is_pixel_exact_and_keeps_bad_files_bad(folder: Path, tmp_path: Path) -> None:
    src = scan_folder(folder)
    cached = open_cache(src, tmp_path / "cache", channels=3, progress=False)
    assert isinstance(cached, CachedSource) and len(cached) == len(src)
    assert cached.labels == src.labels and cached.describe(0) == src.describe(0)
    for i in range(len(src)):
        if src.path(i).name == "broken.png":
            with pytest.raises(DataError, match=r"broken\.png"):
                cached.load(i)
            continue
        ref = to_tensor(src.load(i), 3)
        assert torch.equal(to_tensor(cached.load(i), 3), ref)


def test_cache_is_reused_and_rebuilt_when_data_change(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    first = open_cache(scan_folder(folder), root, channels=3, progress=False)
    assert isinstance(first, CachedSource)

    def no_decoding(*_: object) -> None:
        raise AssertionError("the cache was rebuilt")

    with monkeypatch.context() as m:
        m.setattr(cache_mod._Decode, "__getitem__", no_decoding)
        again = open_cache(scan_folder(folder), root, channels=3, progress=False)
    assert isinstance(again, CachedSource) and again.folder == first.folder
    # Change one image: a new fingerprint, a new cache with the new pixels.
    target = folder / "class0" / "wide.png"
    Image.fromarray(np.full((30, 50, 3), 7, dtype=np.uint8)).save(target)
    src = scan_folder(folder)
    changed = open_cache(src, root, channels=3, progress=False)
    assert isinstance(changed, CachedSource) and changed.folder != first.folder
    # An interrupted build leaves a temp folder: never used, removed by the next build.
    (root / f"{changed.folder.name}.building-{socket.gethostname()}-999999999").mkdir()
    target.touch()  # a new modification time: rebuilt once more, the stale folder goes
    rebuilt = open_cache(scan_folder(folder), root, channels=3, progress=False)
    assert isinstance(rebuilt, CachedSource)
    assert not list(root.glob(f"{rebuilt.folder.name}.building-*"))
    i = src.files.index("class0/wide.png")
    assert int(np.asarray(changed.load(i)).max()) == 7


def test_cache_cap_shrinks_large_images(folder: Path, tmp_path: Path) -> None:
    src = scan_folder(folder)
    cached = open_cache(src, tmp_path / "cache", channels=1, cap=10, progress=False)
    i = src.files.index("class0/wide.png")
    arr = np.asarray(cached.load(i))
    assert arr.shape == (10, 16, 1)  # short side 30 -> 10, aspect kept (torchvision floors)


def _losses(run: Path) -> list[str]:
    with open(run / "metrics.csv") as f:
        return [r["loss"] for r in csv.DictReader(f) if r["loss"]]


def test_training_on_the_cache_gives_the_same_losses(tmp_path: Path) -> None:
    data = make_images(tmp_path / "imgs", classes=2, per_class=12)
    kw = dict(
        steps=4, batch_size=8, image_size=16, progress=False, workers=0,
        overrides=["monitor.knn=false", "train.log_every=1", "method.proj_hidden_dim=64"],
    )  # fmt: skip
    selfsup.pretrain("simclr", data=str(data), out=tmp_path / "a", **kw)  # type: ignore[arg-type]
    selfsup.pretrain("simclr", data=str(data), out=tmp_path / "b", cache=str(tmp_path / "c"), **kw)  # type: ignore[arg-type]
    assert any((tmp_path / "c").glob("*/pixels.u8"))
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") and len(_losses(tmp_path / "a")) == 4


def test_deep_images_are_not_cached_and_other_ranks_do_not_wait(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    root.mkdir()
    for i in range(3):
        arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * (i + 1)).astype(np.uint16)
        Image.fromarray(arr).save(root / f"d{i}.png")
    src = scan_folder(root)
    assert open_cache(src, tmp_path / "c", channels=1, progress=False) is src
    # A rank that does not build sees the decision at once instead of waiting forever.
    assert open_cache(src, tmp_path / "c", channels=1, progress=False, build=False) is src
