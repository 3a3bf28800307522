from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_images
from PIL import Image

from selfsup.data import (
    DataError,
    EpochSampler,
    ViewDataset,
    collate_views,
    open_source,
    scan_folder,
    stratified_split,
    subset,
)


def test_labelled_folder_at_any_depth(tmp_path: Path) -> None:
    make_images(tmp_path, classes=3, per_class=4, depth=3)
    src = scan_folder(tmp_path)
    assert len(src) == 12 and src.classes == ["class0", "class1", "class2"]
    assert src.labels is not None and sorted(set(src.labels)) == [0, 1, 2]
    assert src.load(0).size == (20, 20)


def test_unlabelled_folder(tmp_path: Path) -> None:
    make_images(tmp_path / "a", classes=1, per_class=3)
    Image.new("RGB", (8, 8)).save(tmp_path / "top.jpg")
    src = scan_folder(tmp_path)
    assert len(src) == 4 and src.labels is None  # an image at the top level: no labels


def test_missing_and_empty_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        scan_folder(tmp_path / "empty")


def test_named_set_read_from_imagefolder_root(cifar10: Path) -> None:
    src = open_source("cifar10", split="test", root=str(cifar10))
    assert len(src) == 10000 and len(src.classes) == 10


def test_named_set_without_network_explains(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data-root"):
        open_source("cifar10", split="train", root=str(tmp_path), download=False)


def test_stratified_split_and_subset() -> None:
    labels = [0] * 80 + [1] * 20
    taken, rest = stratified_split(labels, 100, 10, seed=0)
    assert len(taken) == 10 and len(rest) == 90 and not set(taken) & set(rest)
    assert sum(labels[i] for i in taken) == 2  # 20% of class 1 -> 2 of 10
    assert stratified_split(labels, 100, 10, seed=0) == (taken, rest)
    assert stratified_split(labels, 100, 10, seed=1) != (taken, rest)


def test_sampler_is_seeded_resumable_and_sharded() -> None:
    full = list(EpochSampler(20, 4, seed=1, epoch=0))
    assert len(full) == 20 and sorted(i for i, _ in full) == list(range(20))
    assert full == list(EpochSampler(20, 4, seed=1, epoch=0))
    assert full != list(EpochSampler(20, 4, seed=1, epoch=1))
    # Resuming after 8 samples yields exactly the rest, with the same seeds.
    assert list(EpochSampler(20, 4, seed=1, epoch=0, start=8)) == full[8:]
    # Two ranks split every global batch between them.
    r0 = list(EpochSampler(20, 4, seed=1, epoch=0, rank=0, world=2))
    r1 = list(EpochSampler(20, 4, seed=1, epoch=0, rank=1, world=2))
    assert sorted(r0 + r1) == sorted(full) and r0 == full[0::2]
    # drop_last keeps only full global batches.
    assert len(list(EpochSampler(22, 4, seed=1, epoch=0))) == 20


def test_sampler_repeat_shows_each_image_that_many_times_with_new_seeds() -> None:
    full = list(EpochSampler(5, 4, seed=1, epoch=0, repeat=4))
    assert len(full) == 20
    assert sorted(i for i, _ in full) == sorted(list(range(5)) * 4)
    assert len({s for _, s in full}) == 20  # every appearance gets its own crops
    assert list(EpochSampler(5, 4, seed=1, epoch=0, start=8, repeat=4)) == full[8:]
    with pytest.raises(ValueError, match="repeat"):
        EpochSampler(5, 4, seed=1, epoch=0, repeat=0)


def test_view_dataset_is_deterministic_per_seed(tiny_folder: Path) -> None:
    import selfsup

    m = selfsup.create_method("simclr", image_size=16)
    src = scan_folder(tiny_folder)
    ds = ViewDataset(src, m.default_transform(16, [0.5] * 3, [0.5] * 3))
    a, la, _ = ds[(3, 1234)]
    b, lb, _ = ds[(3, 1234)]
    c, _, _ = ds[(3, 999)]
    assert torch.equal(a[0], b[0]) and la == lb == src.labels[3]
    assert not torch.equal(a[0], c[0])
    views, labels, skipped = collate_views([ds[(i, i)] for i in range(4)])
    assert [v.shape for v in views] == [(4, 3, 16, 16)] * 2 and labels.shape == (4,)
    assert skipped == []


def test_bad_files_skip_or_fail(tiny_folder: Path) -> None:
    import selfsup

    bad = tiny_folder / "class0" / "000.png"
    bad.write_bytes(b"not an image")
    src = scan_folder(tiny_folder)
    i = src.files.index("class0/000.png")
    t = selfsup.create_method("simclr", image_size=16).default_transform(16, [0.5] * 3, [0.5] * 3)
    views, _, skipped = ViewDataset(src, t, bad_files="skip")[(i, 7)]
    assert views[0].shape == (3, 16, 16) and len(skipped) == 1 and str(bad) in skipped[0]
    with pytest.raises(DataError, match=r"000\.png.*bad_files=skip"):
        ViewDataset(src, t, bad_files="fail")[(i, 7)]


def test_subset_limit(cifar10: Path) -> None:
    src = subset(open_source(str(cifar10 / "test")), 100, seed=0)
    assert len(src) == 100 and src.labels is not None
    assert sorted(src.labels.count(c) for c in range(10)) == [10] * 10
