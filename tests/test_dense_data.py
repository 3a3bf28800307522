"""Dense-task data: segmentation and COCO readers, paired transforms, the data check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED
from PIL import Image

from selfsup.data.check_dense import check_dense, dense_layout
from selfsup.data.coco import CocoDetection
from selfsup.data.segmentation import SegmentationFolder, open_segmentation
from selfsup.data.sources import DataError
from selfsup.transforms.dense import (
    DetEval,
    DetTrain,
    SegDataset,
    SegEval,
    SegTrain,
    collate_detection,
    collate_segmentation,
)

CAMVID, DRIVE, PENNFUDAN = SHARED / "camvid", SHARED / "drive", SHARED / "pennfudan"


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_split(
    root: Path, n: int = 4, h: int = 12, w: int = 16, classes: int = 3, binary: bool = False
) -> Path:
    """images/ (RGB PNG, grey for the last) + masks/ of class indices (or 0/255)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        _save(root / "images" / f"im{i}.png", img[..., 0] if i == n - 1 else img)
        mask = rng.integers(0, classes, (h, w)).astype(np.uint8)
        _save(root / "masks" / f"im{i}.png", mask * 255 if binary else mask)
    return root


# ---------------------------------------------------------------- segmentation reader


def test_class_index_masks_with_parent_classes_file(tmp_path: Path) -> None:
    split = make_split(tmp_path / "set" / "train")
    (tmp_path / "set" / "classes.json").write_text(
        json.dumps({"classes": ["a", "b", "c"], "ignore_index": 2})
    )
    f = open_segmentation(split)
    assert (f.classes, f.num_classes, f.ignore_index, f.binary) == (["a", "b", "c"], 3, 2, False)
    assert f.stems == ["im0", "im1", "im2", "im3"] and not f.has_fov and len(f) == 4
    s = f.load(3)  # a grey image
    assert s.image.shape == (3, 12, 16) and s.image.dtype == torch.uint8
    assert s.mask.shape == (12, 16) and s.mask.dtype == torch.int64 and s.fov is None
    raw = np.asarray(Image.open(split / "masks" / "im3.png"))
    assert torch.equal(s.mask, torch.from_numpy(raw.astype(np.int64)))


def test_binary_masks_and_fov(tmp_path: Path) -> None:
    split = make_split(tmp_path, classes=2, binary=True)
    fov = np.zeros((12, 16), np.uint8)
    fov[2:10, 3:13] = 255
    for i in range(4):
        _save(split / "fov" / f"im{i}.png", fov)
    f = SegmentationFolder(split)
    assert f.binary and f.classes == ["background", "foreground"] and f.ignore_index == 255
    assert f.has_fov
    s = f.load(0)
    raw = np.asarray(Image.open(split / "masks" / "im0.png"))
    inside = torch.from_numpy(fov != 0)
    assert s.fov is not None and torch.equal(s.fov, inside)
    assert torch.equal(s.mask[inside], torch.from_numpy(raw // 255).long()[inside])
    assert bool((s.mask[~inside] == 255).all())


def test_second_observer_subset_and_sample(tmp_path: Path) -> None:
    split = make_split(tmp_path, n=10, classes=2, binary=True)
    for i in range(10):
        _save(split / "masks_2nd" / f"im{i}.png", np.full((12, 16), 255, np.uint8))
    f2 = SegmentationFolder(split, masks="masks_2nd")
    assert bool((f2.load(0).mask == 1).all()) and "masks_2nd" in f2.name
    f = SegmentationFolder(split)
    sub = f.subset([3, 1])
    assert isinstance(sub, SegmentationFolder) and sub.stems == ["im3", "im1"]
    assert sub.load(0).stem == "im3" and len(f) == 10
    a, b = f.sample(fraction=0.3, seed=1), f.sample(fraction=0.3, seed=1)
    assert a.stems == b.stems and len(a) == 3
    assert len(f.sample(shots=1)) == 1 and len(f.sample(fraction=0.01)) == 1
    assert f.sample(shots=4, seed=0).stems != f.sample(shots=4, seed=5).stems


def test_segmentation_errors_name_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="masks"):
        SegmentationFolder(tmp_path)
    split = make_split(tmp_path / "s", n=7)
    for i in range(6):
        (split / "masks" / f"im{i}.png").unlink()
    with pytest.raises(DataError, match=r"6 image\(s\).*im0.png.*and 1 more"):
        SegmentationFolder(split)

    split = make_split(tmp_path / "t")
    _save(split / "masks" / "im1.png", np.zeros((5, 7), np.uint8))
    _save(split / "masks" / "im2.png", np.full((12, 16), 9, np.uint8))
    (split / "images" / "im3.png").write_bytes(b"not a png")
    (split / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    f = SegmentationFolder(split)
    with pytest.raises(DataError, match=r"masks/im1.png is 7x5.*images/im1.png is 16x12"):
        f.load(1)
    with pytest.raises(DataError, match=r"masks/im2.png has values \[9\]"):
        f.load(2)
    with pytest.raises(DataError, match=r"images/im3.png"):
        f.load(3)


def test_real_segmentation_sets() -> None:
    cam = open_segmentation(CAMVID / "val")
    assert cam.num_classes == 11 and cam.ignore_index == 11 and cam.classes[0] == "sky"
    s = cam.load(0)
    assert s.image.shape == (3, 360, 480) and s.mask.shape == (360, 480)
    assert int(s.mask.max()) <= 11
    drive = open_segmentation(DRIVE / "train")
    d = drive.load(0)
    assert drive.binary and drive.has_fov and d.fov is not None
    assert set(d.mask.unique().tolist()) == {0, 1, 255}
    assert bool((d.mask[~d.fov] == 255).all())


# ---------------------------------------------------------------- transforms


def _encoded(size: int = 128, block: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose pixels encode their class: channel 0 the column stripe (16 * x // block),
    channel 1 the row stripe; class = col + 8 * row. Stripes next to each other differ by
    one step, so a blended pixel still rounds to the stripe under its centre."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    col, row = x // block, y // block
    image = torch.stack([col * 16, row * 16, torch.zeros_like(col)]).to(torch.uint8)
    return image, col + 8 * row


def _decoded(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes read back from the pixels, and where a pixel centre sits on a stripe boundary
    (a blend of one half: either class is right there)."""
    steps = img[:2] * 255 / 16
    tie = ((steps - steps.floor() - 0.5).abs() < 0.02).any(0)
    steps = steps.round().long()
    return steps[0] + 8 * steps[1], tie


def test_seg_train_keeps_image_and_mask_aligned() -> None:
    image, mask = _encoded()
    t = SegTrain(96, mean=[0, 0, 0], std=[1, 1, 1], scale=(0.5, 2.0))
    g = torch.Generator().manual_seed(0)
    flipped = 0
    for _ in range(12):
        img, m = t(image, mask, generator=g)
        assert img.shape == (3, 96, 96) and img.dtype == torch.float32
        assert m.shape == (96, 96) and m.dtype == torch.int64
        scored = m != 255
        classes, tie = _decoded(img)
        assert torch.equal(classes[scored & ~tie], m[scored & ~tie])
        assert float(tie.float().mean()) < 0.1
        assert bool((img[:, ~scored] == 0).all())  # padding
        flipped += int(img[0, 0, 0] > img[0, 0, -1])
    assert 0 < flipped < 12
    folder = open_segmentation(CAMVID / "val")
    with pytest.raises(ValueError, match="ignore_index=11"):
        SegDataset(folder, t)
    x, y = SegDataset(folder, SegTrain(64, [0] * 3, [1] * 3, ignore_index=11))[0]
    assert x.shape == (3, 64, 64) and int(y.max()) <= 11
    exact = SegTrain(64, [0, 0, 0], [1, 1, 1], scale=(1.0, 1.0), hflip=1.0)
    img, m = exact(image, mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_decoded(img)[0], m)


def test_seg_eval_resizes_image_only() -> None:
    image, mask = torch.zeros(3, 40, 60, dtype=torch.uint8), torch.zeros(40, 60)
    img, m = SegEval(20, [0.5] * 3, [0.5] * 3)(image, mask)
    assert img.shape == (3, 20, 30) and m.shape == (40, 60) and m.dtype == torch.int64
    assert torch.allclose(img, torch.full_like(img, -1.0))
    assert SegEval((16, 24), [0] * 3, [1] * 3)(image, mask)[0].shape == (3, 16, 24)
    batch = collate_segmentation([(img, m), (img, m)])
    assert batch[0].shape == (2, 3, 20, 30) and batch[1].shape == (2, 40, 60)


def test_detection_boxes_scale_and_flip() -> None:
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    masks = torch.zeros(1, 100, 200, dtype=torch.uint8)
    masks[0, 20:60, 10:50] = 1
    target = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]), "masks": masks,
              "labels": torch.tensor([1]), "image_id": 7}  # fmt: skip
    img, t = DetEval(100, [0.4] * 3, [0.2] * 3)(image, target)
    assert img.shape == (3, 50, 100) and img.dtype == torch.float32
    assert torch.allclose(t["boxes"], torch.tensor([[5.0, 10.0, 25.0, 30.0]]))
    assert t["masks"].shape == (1, 50, 100) and t["orig_size"].tolist() == [100, 200]
    img, t = DetTrain(100, [0.4] * 3, [0.2] * 3, hflip=1.0)(image, target)
    assert torch.allclose(t["boxes"], torch.tensor([[75.0, 10.0, 95.0, 30.0]]))
    ys, xs = torch.nonzero(t["masks"][0], as_tuple=True)
    assert [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] == [75, 10, 95, 30]
    kw = DetTrain(100, [0.4] * 3, [0.2] * 3).model_kwargs()
    assert kw["min_size"] == kw["max_size"] == 100 and kw["image_mean"] == [0.4] * 3
    images, targets = collate_detection([(img, t), (img, t)])
    assert len(images) == len(targets) == 2


# ---------------------------------------------------------------- COCO


def test_coco_reader_on_pennfudan() -> None:
    ds = CocoDetection(PENNFUDAN / "test")
    assert ds.classes == ["person"] and ds.category_ids == [1] and ds.has_masks
    assert len(ds) == 50
    for i in range(3):
        image, t = ds.load(i)
        anns = ds.coco.imgToAnns[t["image_id"]]
        assert image.shape[0] == 3 and image.dtype == torch.uint8
        assert t["boxes"].shape == (len(anns), 4) and t["labels"].tolist() == [1] * len(anns)
        assert t["masks"].shape == (len(anns), *image.shape[1:])
        for box, m in zip(t["boxes"], t["masks"], strict=True):
            ys, xs = torch.nonzero(m, as_tuple=True)
            got = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert (got - box).abs().max() <= 1.0
    sub = ds.sample(shots=4, seed=0)
    assert len(sub) == 4 and len(sub.coco.getImgIds()) == 4


def _coco_split(root: Path) -> Path:
    _save(root / "images" / "a.png", np.zeros((20, 30, 3), np.uint8))
    poly = [[2, 2, 12, 2, 12, 10, 2, 10]]
    data = {
        "images": [{"id": 5, "file_name": "images/a.png", "width": 30, "height": 20}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [2, 2, 10, 8], "iscrowd": 0,
             "segmentation": poly},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [15, 5, 10, 10], "iscrowd": 0,
             "segmentation": {"size": [20, 30], "counts": [320, 10, 10, 10, 250]}},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }  # fmt: skip
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def test_coco_polygons_rle_and_labels(tmp_path: Path) -> None:
    ds = CocoDetection(_coco_split(tmp_path))
    assert ds.classes == ["dog", "cat"] and ds.category_ids == [3, 7]
    _, t = ds.load(0)
    assert t["labels"].tolist() == [2, 1] and t["image_id"] == 5
    assert t["boxes"][0].tolist() == [2.0, 2.0, 12.0, 10.0]
    assert t["masks"].dtype == torch.uint8 and int(t["masks"][1].sum()) == 20
    assert int(t["masks"][0, 5, 5]) == 1 and int(t["masks"][0, 15, 20]) == 0


def test_coco_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"annotations.json does not exist"):
        CocoDetection(tmp_path)
    (tmp_path / "annotations.json").write_text("{broken")
    with pytest.raises(DataError, match=r"annotations.json is not readable JSON"):
        CocoDetection(tmp_path)
    root = _coco_split(tmp_path / "b")
    data = json.loads((root / "annotations.json").read_text())
    data["annotations"][0]["bbox"] = [25, 2, 10, 8]
    (root / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations.json.*annotation 1 .*outside images/a.png"):
        CocoDetection(root)
    (root / "images" / "a.png").unlink()
    with pytest.raises(DataError, match=r"missing.*images/a.png"):
        CocoDetection(root)


# ---------------------------------------------------------------- data check


def test_check_camvid() -> None:
    assert dense_layout(CAMVID) == "segmentation-splits"
    assert dense_layout(PENNFUDAN / "train") == "coco"
    r = check_dense(CAMVID, limit=3)
    assert set(r["splits"]) == {"train", "val", "test"} and r["problems"] == []
    val = r["splits"]["val"]
    assert val["pairs"] == 101 and val["num_classes"] == 11 and not val["binary"]
    assert val["histogram"]["masks_read"] == 3
    h = val["histogram"]
    assert abs(sum(h["share"].values()) + h["ignore_share"] - 1) < 1e-6


def test_check_broken_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    split = make_split(tmp_path / "broken", n=5, classes=2, binary=True)
    (split / "masks" / "im0.png").unlink()
    _save(split / "masks" / "im1.png", np.zeros((5, 7), np.uint8))
    _save(split / "masks" / "im2.png", np.full((12, 16), 7, np.uint8))
    r = check_dense(split)
    assert r["layout"] == "segmentation" and r["pairs"] == 4
    assert r["missing_masks"]["count"] == 1 and "im0.png" in r["missing_masks"]["files"][0]
    assert len(r["size_mismatches"]) == 1 and r["size_mismatches"][0]["mask_size"] == (7, 5)
    text = "\n".join(r["problems"])
    assert "images/im0.png" in text and "masks/im1.png" in text and "masks/im2.png" in text
    from selfsup.cli import main

    assert main(["data", "check", str(split), "--out", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "problem:" in out and "im2.png" in out
    assert json.loads((tmp_path / "r.json").read_text())["pairs"] == 4
