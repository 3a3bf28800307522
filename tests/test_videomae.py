"""VideoMAE: tubes, tube masking, the masked-tube loss, clips from videos, and the method
end to end from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images, make_videos

from selfsup.losses.mae import TubeMAELoss
from selfsup.modules.tubes import (
    patchify_video,
    sincos_pos_embed_3d,
    tube_masking,
    unpatchify_video,
)


def test_patchify_video_by_hand() -> None:
    clips = torch.arange(2 * 3 * 4 * 6 * 4, dtype=torch.float32).reshape(2, 3, 4, 6, 4)
    u, p = 2, 2
    tubes = patchify_video(clips, p, u)
    gt, gh, gw = 2, 3, 2
    assert tubes.shape == (2, gt * gh * gw, u * p * p * 3)
    for b in range(2):
        for s in range(gt):
            for r in range(gh):
                for c in range(gw):
                    n = (s * gh + r) * gw + c
                    for f in range(u):
                        for i in range(p):
                            for j in range(p):
                                for ch in range(3):
                                    k = ((f * p + i) * p + j) * 3 + ch
                                    want = clips[b, ch, s * u + f, r * p + i, c * p + j]
                                    assert tubes[b, n, k] == want
    assert torch.equal(unpatchify_video(tubes, p, u, (gt, gh, gw)), clips)
    with pytest.raises(ValueError, match="does not tile"):
        patchify_video(torch.zeros(1, 3, 3, 4, 4), 2, 2)


def test_tube_masking_hides_the_same_places_in_every_frame_slot() -> None:
    grid = (4, 3, 5)
    g = torch.Generator().manual_seed(0)
    keep, mask, restore = tube_masking(6, grid, 0.75, generator=g)
    per_slot = mask.reshape(6, 4, 15)
    assert torch.equal(per_slot, per_slot[:, :1].expand_as(per_slot))
    assert (per_slot[:, 0].sum(1) == 15 - round(15 * 0.25)).all()
    assert keep.shape == (6, 4 * round(15 * 0.25))
    assert (torch.gather(mask, 1, keep) == 0).all()
    # restore undoes the shuffle: [visible, hidden] back to tube order.
    n = 60
    shuffle = restore.argsort(1)
    assert torch.equal(shuffle[:, : keep.shape[1]], keep)
    seq = torch.gather(torch.arange(n).expand(6, n), 1, shuffle)
    assert torch.equal(torch.gather(seq, 1, restore), torch.arange(n).expand(6, n))
    # Different clips, different places.
    assert not torch.equal(per_slot[0, 0], per_slot[1, 0]) or not torch.equal(
        per_slot[1, 0], per_slot[2, 0]
    )


def test_space_time_positions_split_the_width_in_three() -> None:
    pe = sincos_pos_embed_3d(12, (2, 3, 4))
    assert pe.shape == (24, 12)
    t1 = pe.reshape(2, 3, 4, 12)
    # Same place, another frame slot: only the time third differs.
    assert torch.equal(t1[0, 1, 2, 4:], t1[1, 1, 2, 4:])
    assert not torch.equal(t1[0, 1, 2, :4], t1[1, 1, 2, :4])
    # Time 0, row 0, column 0: sin 0 = 0 and cos 0 = 1 in every third.
    assert torch.allclose(pe[0], torch.tensor([0.0, 0, 1, 1] * 3))
    with pytest.raises(ValueError, match="divisible by 6"):
        sincos_pos_embed_3d(8, (1, 1, 1))


def test_tube_loss_against_a_direct_computation() -> None:
    torch.manual_seed(0)
    clips = torch.randn(2, 3, 4, 4, 4)
    loss_fn = TubeMAELoss(patch_size=2, tubelet=2)
    n, k = 2 * 2 * 2, 2 * 2 * 2 * 3
    pred = torch.randn(2, n, k)
    mask = torch.zeros(2, n)
    mask[0, [1, 5]] = 1
    mask[1, [0]] = 1
    total, count = 0.0, 0
    for b in range(2):
        for s in range(2):
            for r in range(2):
                for c in range(2):
                    idx = (s * 2 + r) * 2 + c
                    if not mask[b, idx]:
                        continue
                    tube = clips[b, :, 2 * s : 2 * s + 2, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
                    t = tube.permute(1, 2, 3, 0).reshape(-1)
                    t = (t - t.mean()) / (t.var() + 1e-6).sqrt()
                    total += float(((pred[b, idx] - t) ** 2).mean())
                    count += 1
    assert float(loss_fn(pred, clips, mask)) == pytest.approx(total / count, rel=1e-5)


def _method(frames: int = 4) -> torch.nn.Module:
    import selfsup

    cfg = selfsup.make_config("videomae", image_size=16,
                              overrides=[f"backbone.kwargs={{patch_size: 4, depth: 2, frames: {frames}}}"])  # fmt: skip
    return selfsup.build_method(cfg).eval()


def test_the_encoder_never_sees_hidden_tubes() -> None:
    m = _method()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 16, 16)
    pred, mask = m(x, generator=torch.Generator().manual_seed(3))
    tubes = patchify_video(x, 4, 2)
    hidden = mask.bool().unsqueeze(-1)
    changed = unpatchify_video(torch.where(hidden, torch.randn_like(tubes) * 9, tubes), 4, 2,
                               (2, 4, 4))  # fmt: skip
    pred2, mask2 = m(changed, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, mask2) and torch.allclose(pred, pred2, atol=1e-5)
    # ... while the visible ones matter.
    shown = unpatchify_video(torch.where(hidden, tubes, tubes + 1), 4, 2, (2, 4, 4))
    pred3, _ = m(shown, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(pred, pred3, atol=1e-3)
    # A still image is a still clip of the backbone's frames.
    img = torch.randn(2, 3, 16, 16)
    still = img.unsqueeze(2).expand(-1, -1, 4, -1, -1)
    assert torch.allclose(m.backbone(img), m.backbone(still))


def test_clips_come_from_one_video_at_the_stride(tmp_path: Path) -> None:
    from selfsup.data.loader import ViewDataset
    from selfsup.data.sources import open_source
    from selfsup.data.video import VideoSource
    from selfsup.transforms.batched import ViewSpec
    from selfsup.transforms.views import ClipView

    root = make_videos(tmp_path / "v", classes=1, per_class=2, frames=12, size=16)
    src = open_source(str(root))
    assert isinstance(src, VideoSource)
    v = src.frames(0)
    clip = src.load_clip(0, seed=5, frames=4, stride=3)
    starts = [t for t in range(len(v)) if np.array_equal(v[t].permute(1, 2, 0).numpy(), clip[0])]
    assert starts and starts[0] + 9 < len(v)
    s = starts[0]
    for k in range(4):
        np.testing.assert_array_equal(clip[k], v[s + 3 * k].permute(1, 2, 0).numpy())
    assert all(np.array_equal(a, b) for a, b in zip(clip, src.load_clip(0, 5, 4, 3), strict=True))
    spec = ViewSpec(size=16, scale=(1.0, 1.0), hflip_prob=0.0, mean=(0.0,) * 3, std=(1.0,) * 3)
    ds = ViewDataset(src, ClipView(spec, frames=4, stride=3))
    (view,), label, _ = ds[(0, 5)]
    assert view.shape == (3, 4, 16, 16) and label == 0
    expect = torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in clip]).float() / 255
    assert torch.allclose(view.transpose(0, 1), expect, atol=1e-6)


def test_videomae_refuses_a_folder_of_images(tmp_path: Path) -> None:
    import selfsup
    from selfsup.config import ConfigError

    data = make_images(tmp_path / "imgs", per_class=4, size=16)
    with pytest.raises(ConfigError, match="learns from clips"):
        selfsup.pretrain("videomae", data=str(data), out=tmp_path / "run", steps=1, batch_size=4,
                         image_size=16, workers=0, progress=False,
                         overrides=["backbone.kwargs={patch_size: 4, depth: 1, frames: 2}"])  # fmt: skip


def test_pretrain_and_eval_video_from_the_cli(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from selfsup.cli import main

    data = make_videos(tmp_path / "v", classes=2, per_class=3, frames=12, size=32)
    run = tmp_path / "run"
    assert main(["pretrain", "--method", "videomae", "--data", str(data), "--out", str(run),
                 "--steps", "2", "--batch-size", "3", "--image-size", "32", "--workers", "0",
                 "--precision", "fp32", "--no-progress", "monitor.knn=false",
                 "backbone.kwargs={patch_size: 8, depth: 1, frames: 4}"]) == 0  # fmt: skip
    assert (run / "checkpoints" / "last.pt").exists()
    assert list((run / "figures").glob("reconstruction_step*.png"))
    capsys.readouterr()
    assert main(["eval", "video", "--checkpoint", str(run), "--data", str(data), "--folds", "3",
                 "--k", "2", "--clips", "1", "--json", "--no-progress",
                 "--precision", "fp32"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert res["clip_encoder"] == "video" and res["frames"] == 4 and res["stride"] == 2
    assert 0 <= res["top1_mean"] <= 100 and res["videos"] == 6


def test_clip_grad_cam_by_hand_and_the_strip(tmp_path: Path) -> None:
    import torch.nn.functional as F
    from PIL import Image

    import selfsup
    from selfsup.viz import make
    from selfsup.viz.common import open_run
    from selfsup.viz.gradcam import Probe, clip_grad_cam

    data = make_videos(tmp_path / "v", classes=2, per_class=3, frames=12, size=32)
    run = tmp_path / "run"
    selfsup.pretrain("videomae", data=str(data), out=run, steps=1, batch_size=3, image_size=32,
                     workers=0, progress=False, precision="fp32",
                     overrides=["monitor.knn=false",
                                "backbone.kwargs={patch_size: 8, depth: 1, frames: 4}"])  # fmt: skip
    out = make("video-gradcam", run, tmp_path / "cam.png", data=str(data))
    with Image.open(out) as im:
        assert im.size[0] > 300 and im.size[1] > 150
    bb = open_run(run).method.feature_extractor()
    d = bb.embed_dim
    torch.manual_seed(0)
    probe = Probe(torch.zeros(d), torch.full((d,), 2.0), torch.randn(d, 3), torch.zeros(3), None, 6)
    clip = torch.randn(1, 3, 4, 32, 32)
    heat, probs = clip_grad_cam(bb, probe, clip, klass=1)
    assert heat.shape == (4, 32, 32) and probs.shape == (1, 3)
    # A linear probe on the mean of N tokens: every token's gradient is w / (std N), so each
    # tube's Grad-CAM is relu(token . w) / (std N), held over its 2 frames and 8x8 pixels.
    with torch.no_grad():
        tokens = bb.forward_tokens(clip)[0]  # (N, D)
    n = tokens.shape[0]
    tube = F.relu(tokens @ (probe.weight[:, 1] / 2.0) / n).reshape(2, 1, 4, 4)
    want = F.interpolate(tube.repeat_interleave(2, dim=0), size=(32, 32), mode="bilinear",
                         align_corners=False)[:, 0]  # fmt: skip
    torch.testing.assert_close(heat, want, atol=1e-5, rtol=1e-4)


def test_overlay_on_one_scale_keeps_the_frames_comparable() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selfsup.viz.common import overlay

    fig, (a, b, c) = plt.subplots(1, 3)
    image = np.zeros((4, 4, 3))
    heat = np.full((4, 4), 0.5)
    heat[0, 0] = 1.0
    overlay(a, image, heat)  # own min-max: 0.5 -> 0
    overlay(b, image, heat, scale=(0.0, 2.0))  # one clip's scale: 0.5 -> 0.25
    overlay(c, image, np.zeros((4, 4)), scale=(0.0, 0.0))  # nothing positive: all 0
    own, shared, empty = (np.asarray(ax.images[-1].get_array()) for ax in (a, b, c))
    plt.close(fig)
    assert own[1, 1] == 0.0 and own[0, 0] == 1.0
    np.testing.assert_allclose(shared[1, 1], 0.25)
    np.testing.assert_allclose(shared[0, 0], 0.5)
    assert not empty.any()


def test_a_resumed_videomae_run_draws_the_same_clips_and_masks(tmp_path: Path) -> None:
    import csv

    import selfsup
    from selfsup.train import checkpoint as ckpt_io

    data = make_videos(tmp_path / "v", classes=2, per_class=4, frames=12, size=16)
    kw: dict = dict(data=str(data), steps=5, batch_size=4, image_size=16, progress=False,
                    overrides=["monitor.knn=false", "train.log_every=1",
                               "backbone.kwargs={patch_size: 4, depth: 1, frames: 4}"])  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    selfsup.pretrain("videomae", out=a, workers=0, **kw)
    part = selfsup.pretrain("videomae", out=b, workers=2, stop_at_step=3, **kw)
    assert part.state.step == 3
    selfsup.pretrain(resume=b, progress=False, workers=0)

    def losses(run: Path) -> list[str]:
        with open(run / "metrics.csv") as f:
            return [r["loss"] for r in csv.DictReader(f) if r["loss"]]

    # Same clips, crops and tube masks at every step (all seeded by sample and step, whatever
    # the workers): the same losses and the same final weights.
    assert losses(a) == losses(b) and len(losses(a)) == 5
    wa, wb = ckpt_io.load(a)["method"], ckpt_io.load(b)["method"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
