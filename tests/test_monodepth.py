"""Self-supervised depth from video: the geometry and the photometric losses against
hand-built examples, the multi-scale decoder, and the commands end to end on a few real
7-Scenes frames."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.backbones import create_backbone
from selfsup.config import BackboneConfig
from selfsup.heads.depth_decoder import DispDecoder, PoseNet
from selfsup.losses.photometric import (
    min_reprojection_loss,
    photometric_error,
    smoothness_loss,
    ssim,
)
from selfsup.modules.geometry import (
    axis_angle_to_matrix,
    backproject,
    disp_to_depth,
    inverse_warp,
    pose_matrix,
    relative_pose,
    scale_intrinsics,
)
from tests.conftest import SHARED

SEVEN = SHARED / "sevenscenes" / "seq"


def _k(f: float = 10.0, h: int = 8, w: int = 12) -> torch.Tensor:
    return torch.tensor([[[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]]])


# --- geometry ----------------------------------------------------------------------------


def test_known_shift_with_known_depth_reconstructs_the_target() -> None:
    """A fronto-parallel plane at depth 2 and a camera moved 0.4 sideways (fx 10): every
    pixel moves 10 * 0.4 / 2 = 2 columns, so warping the source with the true depth gives
    the target exactly where the source saw it; twice the depth moves it 1 column: wrong."""
    g = torch.Generator().manual_seed(0)
    h, w = 8, 12
    source = torch.rand(1, 3, h, w, generator=g)
    target = torch.zeros_like(source)
    target[..., : w - 2] = source[..., 2:]  # target(x) = source(x + 2)
    pose = pose_matrix(torch.zeros(1, 3), torch.tensor([[0.4, 0.0, 0.0]]))
    k = _k(h=h, w=w)
    warped, valid = inverse_warp(source, torch.full((1, 1, h, w), 2.0), pose, k)
    inside = valid[0, 0].bool()
    assert inside[:, : w - 2].all() and not inside[:, w - 2 :].any()
    torch.testing.assert_close(warped[..., : w - 2], target[..., : w - 2], atol=1e-5, rtol=0)
    wrong, _ = inverse_warp(source, torch.full((1, 1, h, w), 4.0), pose, k)
    assert (wrong[..., : w - 2] - target[..., : w - 2]).abs().mean() > 0.1
    # And the photometric error tells them apart.
    assert photometric_error(warped, target)[..., 1:-1, 1 : w - 3].max() < 1e-4
    assert photometric_error(wrong, target)[..., 1:-1, 1 : w - 3].mean() > 0.05


def test_backproject_and_intrinsics() -> None:
    k = _k()
    pts = backproject(torch.full((1, 1, 8, 12), 3.0), torch.linalg.inv(k))
    # The principal point (5.5, 3.5) lies on the optical axis; a pixel 10 columns right of
    # it (fx = 10) at depth 3 is 3 units right.
    assert pts.shape == (1, 3, 96) and torch.allclose(pts[0, 2], torch.full((96,), 3.0))
    grid_x = pts[0, 0].reshape(8, 12)
    assert grid_x[0, 0] == pytest.approx(3 * (0 - 5.5) / 10)
    half = scale_intrinsics(k[0], 0.5, 0.5)
    assert float(half[0, 0]) == 5.0 and float(half[0, 2]) == pytest.approx(2.5)  # centre of 6


def test_rotations_and_poses() -> None:
    quarter = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2]]))[0]
    torch.testing.assert_close(quarter @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]),
                               atol=1e-6, rtol=0)  # fmt: skip
    torch.testing.assert_close(axis_angle_to_matrix(torch.zeros(1, 3))[0], torch.eye(3))
    r, t = torch.tensor([[0.1, -0.2, 0.3]]), torch.tensor([[0.5, 0.1, -0.2]])
    m = pose_matrix(r, t)
    torch.testing.assert_close(m @ pose_matrix(r, t, invert=True), torch.eye(4)[None],
                               atol=1e-6, rtol=0)  # fmt: skip
    torch.testing.assert_close(m[0, :3, :3] @ m[0, :3, :3].T, torch.eye(3), atol=1e-6, rtol=0)
    world = torch.eye(4)[None].clone()
    world[0, 0, 3] = 1.0  # the target camera 1 unit along x
    assert torch.allclose(relative_pose(world, world), torch.eye(4)[None], atol=1e-6)
    rel = relative_pose(world, torch.eye(4)[None])
    assert float(rel[0, 0, 3]) == pytest.approx(1.0)  # target point (0,0,0) is at x=1 there
    d = disp_to_depth(torch.tensor([0.0, 1.0]), 0.1, 10.0)
    assert d.tolist() == pytest.approx([10.0, 0.1])


# --- photometric losses ------------------------------------------------------------------


def test_ssim_photometric_and_smoothness_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 6, 7, generator=g)
    torch.testing.assert_close(ssim(a, a), torch.ones_like(a), atol=1e-5, rtol=0)
    assert float(photometric_error(a, a).abs().max()) < 1e-5
    # L1 part alone: a constant offset of 0.1 on a flat image leaves SSIM's structure
    # terms equal; 0.15 * 0.1 plus 0.85 * (1 - luminance term) / 2.
    flat = torch.full((1, 1, 5, 5), 0.5)
    lum = (2 * 0.5 * 0.6 + 0.01**2) / (0.5**2 + 0.6**2 + 0.01**2)
    expect = 0.85 * (1 - lum) / 2 + 0.15 * 0.1
    torch.testing.assert_close(photometric_error(flat + 0.1, flat),
                               torch.full((1, 1, 5, 5), expect), atol=1e-4, rtol=0)  # fmt: skip
    # Smoothness: constant disparity costs nothing; a jump costs less across an image edge.
    disp = torch.ones(1, 1, 4, 6)
    disp[..., 3:] = 2.0
    plain = torch.zeros(1, 3, 4, 6)
    edge = plain.clone()
    edge[..., 3:] = 1.0
    assert float(smoothness_loss(torch.ones(1, 1, 4, 6), plain)) == 0.0
    assert float(smoothness_loss(disp, edge)) < float(smoothness_loss(disp, plain))


def test_min_reprojection_and_automask() -> None:
    target = torch.zeros(1, 3, 4, 4)
    good = torch.zeros(1, 3, 4, 4)
    bad = torch.ones(1, 3, 4, 4)
    good[..., :2] = 1.0  # left half wrong in "good", right half right
    bad[..., 2:] = 0.0  # right half right in "bad" too, left half wrong
    loss, mask = min_reprojection_loss([good, bad], target)
    assert mask.all() and float(loss) > 0  # the left half is wrong in both
    best = torch.minimum(photometric_error(good, target), photometric_error(bad, target))
    assert float(loss) == pytest.approx(float(best.mean()))
    # Auto-masking: where the unwarped source matches better (a static camera), a pixel
    # does not count; a tie goes to the warped source.
    loss2, mask2 = min_reprojection_loss([torch.ones(1, 3, 4, 4)], target, sources=[target.clone()])
    assert not mask2.any() and float(loss2) == 0.0
    _, mask_tie = min_reprojection_loss([target.clone()], target, sources=[target.clone()])
    assert mask_tie.all()
    # Out-of-view pixels of one source fall back on the other.
    valid = torch.ones(1, 1, 4, 4)
    valid[..., 2:] = 0
    loss3, mask3 = min_reprojection_loss(
        [target.clone(), bad], target, valid=[valid, valid * 0 + 1]
    )
    assert mask3.all() and float(loss3) < float(photometric_error(bad, target).mean())


def test_disp_decoder_scales_and_pose_net() -> None:
    bb = create_backbone(BackboneConfig(name="resnet18", small_stem=False))
    dec = DispDecoder(bb.dense_specs(), width=64, scales=4)
    assert dec.strides == [1, 2, 4, 8]
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        disps = dec(bb.forward_dense(x), x)
    assert [tuple(d.shape) for d in disps] == [(2, 1, 48, 64), (2, 1, 24, 32), (2, 1, 12, 16),
                                               (2, 1, 6, 8)]  # fmt: skip
    assert all(float(d.min()) >= 0 and float(d.max()) <= 1 for d in disps)
    with torch.no_grad():
        rot, trans = PoseNet()(x, x)
    assert rot.shape == trans.shape == (2, 3) and float(rot.abs().max()) < 0.01


def test_initial_depth_sets_the_decoder_start() -> None:
    from selfsup.modules.geometry import disp_to_depth
    from selfsup.tasks.monodepth import MonodepthConfig, initial_disparity

    # Known poses: the geometric middle of the range; the pose network: PyTorch's default.
    cfg = MonodepthConfig(known_poses=True, min_depth=0.1, max_depth=10.0)
    d = initial_disparity(cfg)
    assert d is not None and abs(float(disp_to_depth(torch.tensor(d), 0.1, 10.0)) - 1.0) < 1e-6
    assert initial_disparity(MonodepthConfig()) is None
    d2 = initial_disparity(MonodepthConfig(init_depth=2.5))
    assert d2 is not None and abs(float(disp_to_depth(torch.tensor(d2), 0.1, 10.0)) - 2.5) < 1e-5
    with pytest.raises(ValueError, match="init_depth"):
        initial_disparity(MonodepthConfig(init_depth=20.0))
    bb = create_backbone(BackboneConfig(name="resnet18", small_stem=False))
    dec = DispDecoder(bb.dense_specs(), width=32, scales=2, init_disp=d)
    for h in dec.heads:
        assert torch.allclose(torch.sigmoid(h.bias), torch.tensor([d]))


# --- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seven(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 7-Scenes frames (links), their poses and the intrinsics."""
    out = tmp_path_factory.mktemp("seven")
    for i in range(16):
        for kind in ("color.jpg", "depth.png", "pose.txt"):
            name = f"frame-{i:06d}.{kind}"
            os.symlink(SEVEN / name, out / name)
    os.symlink(SEVEN / "camera-intrinsics.txt", out / "camera-intrinsics.txt")
    return out


def test_depth_train_eval_predict_cli(seven: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from selfsup.cli import main

    run = tmp_path / "run"
    common = ["--image-size", "64", "--batch-size", "2", "--workers", "0", "--precision",
              "fp32", "--no-progress", "--offsets=-2,2"]  # fmt: skip
    rc = main(["depth", "train", "--frames", str(seven), "--out", str(run), "--steps", "2",
               "--train-frames", "0:12", "--test-frames", "12:16", "--json", *common])  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    # Targets 2..9 have both sources inside frames 0..11.
    assert res["steps"] == 2 and res["train_examples"] == 8 and res["test_frames"] == 4
    for k in ("abs_rel", "rmse", "delta1"):
        assert math.isfinite(res[k]) and math.isfinite(
            res["baselines"]["constant_median_scaled"][k]
        )
    assert (run / "model.pt").exists() and (run / "metrics.csv").exists()
    assert sorted(p.suffix for p in (run / "dense").iterdir()) == [".json", ".png"]
    # The saved run scores the same again.
    assert main(["depth", "eval", "--run", str(run), "--frames", str(seven), "--test-frames",
                 "12:16", "--json"]) == 0  # fmt: skip
    again = json.loads(capsys.readouterr().out)
    assert again["abs_rel"] == pytest.approx(res["abs_rel"], rel=1e-4)
    # Resume: a longer budget continues from the checkpoint.
    assert main(["depth", "train", "--frames", str(seven), "--out", str(run), "--steps", "3",
                 "--train-frames", "0:12", "--resume", "--json", *common]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    # Known poses instead of the pose network.
    assert main(["depth", "train", "--frames", str(seven), "--out", str(tmp_path / "poses"),
                 "--steps", "1", "--train-frames", "0:12", "--poses", "--json", *common]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "pred"
    assert main(["depth", "predict", "--run", str(run), "--data", str(seven), "--out",
                 str(out)]) == 0  # fmt: skip
    maps = sorted(out.glob("*.depth.png"))
    assert len(maps) == 16
    arr = np.asarray(Image.open(maps[0]))
    assert arr.dtype == np.uint16 and arr.shape == (240, 320) and arr.min() > 0
    # Missing intrinsics are named.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    for i in range(6):
        os.symlink(SEVEN / f"frame-{i:06d}.color.jpg", lonely / f"frame-{i:06d}.color.jpg")
    assert main(["depth", "train", "--frames", str(lonely), "--out", str(tmp_path / "x"),
                 "--steps", "1", *common]) == 2  # fmt: skip
    assert "camera-intrinsics.txt" in capsys.readouterr().err
