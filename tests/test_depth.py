"""Depth: readers and their errors, the metrics and the SILog loss by hand, the probe from
the command line on a few real 7-Scenes frames."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.depth import open_depth, parse_frames, read_depth, read_intrinsics
from selfsup.data.sources import DataError
from selfsup.eval.depth import DepthMetrics, image_metrics
from selfsup.losses.depth import silog_loss
from tests.conftest import SHARED

SEVEN = SHARED / "sevenscenes" / "seq"


def _png16(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint16)).save(path)
    return path


def _rgb(path: Path, h: int = 4, w: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)
    return path


# --- readers ---------------------------------------------------------------------------


def test_read_depth_formats_and_invalid_values(tmp_path: Path) -> None:
    mm = np.array([[0, 1000, 2500], [65535, 500, 4000]])
    d = read_depth(_png16(tmp_path / "a.png", mm))
    np.testing.assert_allclose(d, [[0, 1.0, 2.5], [0, 0.5, 4.0]], rtol=1e-6)
    assert d.dtype == np.float32
    assert read_depth(tmp_path / "a.png", scale=0.0001)[0, 1] == pytest.approx(0.1)
    metres = np.array([[1.5, np.nan], [-1.0, 2.0]], np.float32)
    np.save(tmp_path / "b.npy", metres)
    np.testing.assert_allclose(read_depth(tmp_path / "b.npy"), [[1.5, 0], [0, 2.0]])
    Image.fromarray(metres).save(tmp_path / "c.tif")
    np.testing.assert_allclose(read_depth(tmp_path / "c.tif"), [[1.5, 0], [0, 2.0]])
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "e.png")
    with pytest.raises(DataError, match=r"e\.png is 8-bit"):
        read_depth(tmp_path / "e.png")
    _rgb(tmp_path / "f.png")
    with pytest.raises(DataError, match=r"f\.png has shape"):
        read_depth(tmp_path / "f.png")
    (tmp_path / "g.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read depth map .*g\.png"):
        read_depth(tmp_path / "g.png")


def test_depth_folder_layouts_and_errors(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    for i in range(5):
        _rgb(frames / f"frame-{i:06d}.color.jpg")
        _png16(frames / f"frame-{i:06d}.depth.png", np.full((4, 6), 1000 + i))
    f = open_depth(frames, "1:3")
    assert f.layout == "frames" and f.stems == ["frame-000001", "frame-000002"]
    s = f.load(1)
    assert s.image.shape == (3, 4, 6) and s.image.dtype == torch.uint8
    assert float(s.depth[0, 0]) == pytest.approx(1.002) and s.stem == "frame-000002"
    assert f.index_of("frame-000002") == 2 and f.intrinsics() is None
    assert len(open_depth(frames, "3:")) == 2 and len(open_depth(frames)) == 5
    # A depth map of another size names both files.
    _png16(frames / "frame-000004.depth.png", np.full((3, 6), 1000))
    with pytest.raises(DataError, match=r"frame-000004\.depth\.png is 6x3 .*frame-000004\.color"):
        open_depth(frames, "4:5").load(0)
    # A frame without depth is named.
    _rgb(frames / "frame-000009.color.jpg")
    with pytest.raises(DataError, match=r"frame-000009\.color\.jpg"):
        open_depth(frames)
    # The split layout.
    split = tmp_path / "split"
    _rgb(split / "images" / "a.png")
    (split / "depth").mkdir()
    np.save(split / "depth" / "a.npy", np.ones((4, 6)))
    g = open_depth(split)
    assert g.layout == "split" and float(g.load(0).depth.mean()) == 1.0
    with pytest.raises(DataError, match="no depth/"):
        _rgb(tmp_path / "nodepth" / "images" / "a.png")
        open_depth(tmp_path / "nodepth")
    with pytest.raises(DataError, match="START:END"):
        parse_frames("800", 1000)
    assert parse_frames("800:1000", 1000) == slice(800, 1000)
    assert parse_frames("0:2000", 1000) == slice(0, 1000)


def test_read_intrinsics(tmp_path: Path) -> None:
    (tmp_path / "k.txt").write_text("292.5 0 160\n0 292.5 120\n0 0 1\n")
    k = read_intrinsics(tmp_path / "k.txt")
    assert k.shape == (3, 3) and float(k[0, 0]) == 292.5 and float(k[1, 2]) == 120
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    with pytest.raises(DataError, match=r"bad\.txt holds"):
        read_intrinsics(tmp_path / "bad.txt")


# --- metrics and loss ------------------------------------------------------------------


def test_depth_metrics_by_hand() -> None:
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # the last pixel has no reading
    pred = torch.tensor([[1.0, 3.0], [2.0, 7.0]])
    m = image_metrics(pred, gt)
    assert m is not None
    # Valid pixels: (1, 1), (3, 2), (2, 4).
    assert m["abs_rel"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert m["sq_rel"] == pytest.approx((0 + 1 / 2 + 4 / 4) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 4) / 3))
    assert m["rmse_log"] == pytest.approx(
        math.sqrt((0 + math.log(1.5) ** 2 + math.log(2) ** 2) / 3)
    )
    # Ratios 1, 1.5, 2: below 1.25 one, below 1.5625 two, below 1.953 two.
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))
    # Median scaling: medians of truth 2 and of prediction 2 -> scale 1 here; a prediction
    # off by a constant factor is perfect once scaled.
    s = image_metrics(pred * 3, gt, median_scale=True)
    assert s is not None and s["scale"] == pytest.approx(1 / 3)
    assert s["abs_rel"] == pytest.approx(m["abs_rel"])
    # The range: truth beyond max_depth is not scored; predictions are clamped into it.
    r = image_metrics(torch.tensor([20.0, 2.0]), torch.tensor([5.0, 20.0]), max_depth=10.0)
    assert r is not None and r["abs_rel"] == pytest.approx(1.0)  # |10 - 5| / 5
    assert image_metrics(pred, torch.zeros(2, 2)) is None
    acc = DepthMetrics()
    acc.update(torch.stack([pred, pred]), torch.stack([gt, torch.zeros(2, 2)]))
    res = acc.result()
    assert res["images"] == 1 and res["empty"] == 1 and res["abs_rel"] == pytest.approx(1 / 3)


def test_silog_loss_by_hand() -> None:
    gt = torch.tensor([[[1.0, 2.0, 0.0]]])
    pred = torch.tensor([[[2.0, 2.0, 5.0]]])  # the third is invalid
    g = torch.tensor([math.log(2.0), 0.0])
    expect = 10 * math.sqrt(float((g**2).mean() - 0.85 * g.mean() ** 2))
    assert float(silog_loss(pred, gt)) == pytest.approx(expect, rel=1e-5)
    # lam = 1: a prediction off by a constant factor costs nothing.
    assert float(silog_loss(gt[..., :2] * 3, gt[..., :2], lam=1.0)) == pytest.approx(0, abs=0.02)
    assert float(silog_loss(gt[..., :2] * 3, gt[..., :2], lam=0.85)) > 1.0
    x = torch.ones(1, 1, 3, requires_grad=True)
    loss = silog_loss(x, torch.zeros(1, 1, 3))
    loss.backward()
    assert float(loss.detach()) == 0.0 and x.grad is not None


# --- the probe, end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def seven(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 7-Scenes frames (links) and the intrinsics."""
    out = tmp_path_factory.mktemp("seven")
    for i in range(12):
        for kind in ("color.jpg", "depth.png"):
            name = f"frame-{i:06d}.{kind}"
            os.symlink(SEVEN / name, out / name)
    os.symlink(SEVEN / "camera-intrinsics.txt", out / "camera-intrinsics.txt")
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, seven: Path) -> Path:
    import selfsup

    out = tmp_path_factory.mktemp("depthrun") / "run"
    images = tmp_path_factory.mktemp("colour")
    for p in sorted(seven.glob("*.color.jpg")):
        os.symlink(p, images / p.name)
    selfsup.pretrain("simclr", data=str(images), out=out, steps=1, batch_size=4, image_size=64,
                     workers=0, progress=False, precision="fp32",
                     overrides=["monitor.knn=false", "method.proj_hidden_dim=64"])  # fmt: skip
    return out


def test_eval_depth_cli(tiny_run: Path, seven: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from selfsup.cli import main

    rc = main(["eval", "depth", "--checkpoint", str(tiny_run), "--data", str(seven),
               "--train-frames", "0:8", "--test-frames", "8:12", "--max-steps", "3",
               "--image-size", "64", "--batch-size", "2", "--workers", "0", "--json",
               "--no-progress", "--precision", "fp32"])  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3"):
        assert math.isfinite(res[k]) and math.isfinite(res["baselines"]["constant"][k])
    assert 0 <= res["delta1"] <= res["delta2"] <= res["delta3"] <= 1
    assert res["train_frames"] == 8 and res["test_frames"] == 4 and res["steps"] == 3
    base = res["baselines"]
    assert set(base) == {"train_median", "constant", "constant_median_scaled"}
    # Saved beside the run, for its report: the result and a picture of four test frames.
    saved = sorted((tiny_run / "dense").glob("depth-linear-*"))
    assert [x.suffix for x in saved] == [".json", ".png"]
    assert json.loads(saved[0].read_text())["abs_rel"] == res["abs_rel"]
    assert 0.5 < base["train_median"]["depth"] < 5.0  # an office, in metres
    # Frames of one video need a split by time, without overlap: said, not a traceback.
    assert main(["eval", "depth", "--checkpoint", str(tiny_run), "--data", str(seven)]) == 2
    assert main(["eval", "depth", "--checkpoint", str(tiny_run), "--data", str(seven),
                 "--train-frames", "0:8", "--test-frames", "6:12", "--no-progress"]) == 2  # fmt: skip
    assert "share 2 frames" in capsys.readouterr().err
