"""The clip ResNet (temporal shift) and image methods on clips (rho-methods): the shift by
hand, the network against torchvision's ResNet frame by frame, one augmentation a clip,
clips drawn from one video, and pretrain + eval + Grad-CAM from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images, make_videos

from selfsup.config import BackboneConfig


def test_temporal_shift_by_hand() -> None:
    from selfsup.backbones.video_resnet import temporal_shift

    # 1 clip of 3 frames, 4 channels (shift_div 4: one channel each way), 1x1 maps.
    x = torch.tensor([[1.0, 10, 100, 1000], [2, 20, 200, 2000], [3, 30, 300, 3000]])
    out = temporal_shift(x.reshape(3, 4, 1, 1), frames=3, shift_div=4).reshape(3, 4)
    expect = torch.tensor([[2.0, 0, 100, 1000], [3, 10, 200, 2000], [0, 20, 300, 3000]])
    assert torch.equal(out, expect)
    # Two clips in one batch never mix.
    two = torch.cat([x, x + 0.5]).reshape(6, 4, 1, 1)
    out2 = temporal_shift(two, frames=3, shift_div=4).reshape(6, 4)
    assert torch.equal(out2[:3], expect) and out2[5, 0] == 0 and out2[3, 1] == 0


def _video_resnet(shift_div: int) -> torch.nn.Module:
    from selfsup.backbones import create_backbone

    cfg = BackboneConfig(name="video_resnet18", small_stem=False,
                         kwargs={"frames": 4, "shift_div": shift_div})  # fmt: skip
    return create_backbone(cfg, 32).eval()


def test_clip_resnet_is_torchvision_resnet18_frame_by_frame() -> None:
    import torchvision

    torch.manual_seed(0)
    bb = _video_resnet(shift_div=0)
    stock = torchvision.models.resnet18(weights=None)
    stock.fc = torch.nn.Identity()
    # Same parameter names as torchvision's ResNet-18: exports load into the stock model.
    assert set(bb.net.state_dict()) == set(stock.state_dict())
    stock.load_state_dict(bb.net.state_dict())
    stock.eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        per_frame = torch.stack([stock(clip[:, :, t]) for t in range(4)], 1).mean(1)
        torch.testing.assert_close(bb(clip), per_frame, rtol=1e-4, atol=1e-5)
        # An image batch is a batch of one-frame clips: the plain ResNet.
        torch.testing.assert_close(bb(clip[:, :, 0]), stock(clip[:, :, 0]), rtol=1e-4, atol=1e-5)

    shifted = _video_resnet(shift_div=8)
    shifted.load_state_dict(bb.state_dict())
    with torch.no_grad():
        # With the shift, frames exchange channels: the clip feature is no longer the mean
        # of independent frames, and depends on the frames' order.
        assert not torch.allclose(shifted(clip), per_frame, atol=1e-3)
        reversed_order = shifted(clip.flip(2))
        assert not torch.allclose(shifted(clip), reversed_order, atol=1e-3)
        assert torch.allclose(bb(clip), bb(clip.flip(2)), atol=1e-5)


def test_clip_views_give_one_augmentation_a_clip() -> None:
    from selfsup.transforms.batched import ViewSpec
    from selfsup.transforms.views import ClipViews, views_from_specs

    spec = ViewSpec(size=8, scale=(0.2, 0.5), hflip_prob=0.5, jitter_prob=1.0, brightness=0.8,
                    mean=(0.0,) * 3, std=(1.0,) * 3)  # fmt: skip
    views = ClipViews(views_from_specs([spec, spec]), frames=3, stride=2)
    assert views.clip == (3, 2) and views.clips == 2 and views.specs is None
    torch.manual_seed(0)
    frame = torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)
    clips = frame.expand(2, 3, 3, 16, 16).clone()  # two clips of three identical frames
    a, b = views(clips)
    assert a.shape == b.shape == (3, 3, 8, 8)  # (C, T, S, S)
    # One crop, flip and colour change for every frame of a clip ...
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2])
    # ... and each clip its own.
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="2 clips"):
        views(clips[0])


def test_frame_differences_by_hand() -> None:
    from selfsup.transforms.views import frame_differences

    # Frames 0, 1, 4, 9 (one value each): t+1 minus t-1, one-sided at the two ends.
    x = torch.tensor([0.0, 1, 4, 9]).view(4, 1, 1, 1).expand(4, 2, 3, 3)
    d = frame_differences(x)
    assert d.shape == x.shape
    assert torch.equal(d[:, 0, 0, 0], torch.tensor([1.0, 4, 8, 5]))
    # A still clip has no motion, nor has a one-frame clip.
    still = torch.rand(1, 3, 5, 5).expand(6, 3, 5, 5)
    assert torch.equal(frame_differences(still), torch.zeros(6, 3, 5, 5))
    assert torch.equal(frame_differences(x[:1]), torch.zeros(1, 2, 3, 3))


def test_clip_views_motion_replaces_a_view_by_its_frame_differences() -> None:
    from selfsup.transforms.batched import ViewSpec
    from selfsup.transforms.views import ClipViews, frame_differences, views_from_specs

    spec = ViewSpec(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=0.0,
                    mean=(0.0,) * 3, std=(1.0,) * 3)  # fmt: skip
    frames = torch.randint(0, 255, (2, 4, 3, 8, 8), dtype=torch.uint8)  # 2 clips, 4 frames
    plain = ClipViews(views_from_specs([spec, spec]), frames=4, stride=1)
    a, b = plain(frames)
    # Probability 1 on the second view: the first is untouched, the second is the motion of
    # the same augmented clip ((C, T, S, S), so differences run along dimension 1).
    always = ClipViews(views_from_specs([spec, spec]), frames=4, stride=1, motion=[0, 1])
    a1, b1 = always(frames)
    assert torch.equal(a1, a)
    assert torch.allclose(b1, frame_differences(b.transpose(0, 1)).transpose(0, 1))
    assert always.motion == [0.0, 1.0] and "motion=[0.0, 1.0]" in repr(always)
    # Half the time, drawn from torch's seeded generator: the same seed, the same draws.
    half = ClipViews(views_from_specs([spec, spec]), frames=4, stride=1, motion=[0.0, 0.5])

    def draws(seed: int) -> list[bool]:
        torch.manual_seed(seed)
        return [not torch.equal(half(frames)[1], b) for _ in range(40)]

    assert draws(3) == draws(3) and 8 < sum(draws(3)) < 32
    with pytest.raises(ValueError, match="at most one probability"):
        ClipViews(views_from_specs([spec, spec]), frames=4, stride=1, motion=[0, 0, 1])
    with pytest.raises(ValueError, match="at most one probability"):
        ClipViews(views_from_specs([spec, spec]), frames=4, stride=1, motion=[1.5])


def test_clips_of_one_video_start_within_the_gap(tmp_path: Path) -> None:
    from selfsup.data.sources import open_source
    from selfsup.data.video import VideoSource

    root = make_videos(tmp_path / "v", classes=1, per_class=1, frames=30, size=16)
    src = open_source(str(root))
    assert isinstance(src, VideoSource)
    src.gap = 5
    v = src.frames(0)

    def start(clip: list[np.ndarray]) -> int:
        return next(t for t in range(len(v)) if np.array_equal(v[t].permute(1, 2, 0).numpy(),
                                                             clip[0]))  # fmt: skip

    for seed in range(6):
        clips = src.load_clips(0, seed, n=3, frames=4, stride=2)
        assert len(clips) == 3 and all(len(c) == 4 for c in clips)
        starts = [start(c) for c in clips]
        assert all(abs(s - starts[0]) <= 5 for s in starts)
        for c, s in zip(clips, starts, strict=True):
            np.testing.assert_array_equal(c[2], v[s + 4].permute(1, 2, 0).numpy())
        again = src.load_clips(0, seed, n=3, frames=4, stride=2)
        assert all(np.array_equal(x[0], y[0]) for x, y in zip(clips, again, strict=True))
    src.gap = 0
    same = src.load_clips(0, 3, n=2, frames=4, stride=2)
    assert np.array_equal(same[0][0], same[1][0])


def test_image_method_on_a_clip_resnet_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    import selfsup
    from selfsup.cli import main
    from selfsup.config import ConfigError
    from selfsup.viz import make

    data = make_videos(tmp_path / "v", classes=2, per_class=3, frames=12, size=32)
    run = tmp_path / "run"
    assert main(["pretrain", "--method", "vicreg", "--data", str(data), "--out", str(run),
                 "--steps", "2", "--batch-size", "3", "--image-size", "32", "--workers", "0",
                 "--precision", "fp32", "--no-progress", "monitor.knn=false",
                 "backbone.name=video_resnet18", "backbone.kwargs={frames: 3}",
                 "data.clip_stride=3", "data.clip_motion=[0,0.5]", "method.expander_hidden_dim=64",
                 "method.expander_output_dim=64"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "video", "--checkpoint", str(run), "--data", str(data), "--folds", "3",
                 "--k", "2", "--clips", "1", "--json", "--no-progress",
                 "--precision", "fp32"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert res["clip_encoder"] == "video" and res["frames"] == 3 and res["stride"] == 3
    assert 0 <= res["top1_mean"] <= 100 and res["videos"] == 6
    out = make("video-gradcam", run, tmp_path / "cam.png", data=str(data))
    with Image.open(out) as im:
        assert im.size[0] > 200 and im.size[1] > 100
    with pytest.raises(ConfigError, match=r"data\.clip_motion"):
        selfsup.pretrain("vicreg", data=str(data), out=tmp_path / "run3", steps=1,
                         batch_size=3, image_size=32, workers=0, progress=False,
                         overrides=["data.clip_motion=[0,0.5]"])  # fmt: skip
    with pytest.raises(ConfigError, match="makes 2 views"):
        selfsup.pretrain("vicreg", data=str(data), out=tmp_path / "run4", steps=1,
                         batch_size=3, image_size=32, workers=0, progress=False,
                         overrides=["backbone.name=video_resnet18", "backbone.kwargs={frames: 3}",
                                    "data.clip_motion=[0,0.5,0.5]"])  # fmt: skip
    images = make_images(tmp_path / "imgs", per_class=4, size=16)
    with pytest.raises(ConfigError, match="learns from clips"):
        selfsup.pretrain("vicreg", data=str(images), out=tmp_path / "run2", steps=1,
                         batch_size=4, image_size=16, workers=0, progress=False,
                         overrides=["backbone.name=video_resnet18"])  # fmt: skip


def test_simclr_still_negatives_take_clips_only() -> None:
    import selfsup
    from selfsup.methods.base import StepInfo

    cfg = selfsup.make_config("simclr", backbone="video_resnet18", image_size=16,
                              overrides=["backbone.kwargs={frames: 3}",
                                         "method.still_negatives=true",
                                         "method.proj_hidden_dim=32"])  # fmt: skip
    method = selfsup.build_method(cfg)
    torch.manual_seed(0)
    views = [torch.randn(2, 3, 3, 16, 16), torch.randn(2, 3, 3, 16, 16)]
    loss, _ = method.training_step(views, StepInfo(0, 0.0))
    assert torch.isfinite(loss)
    assert method.chance_loss(2) == pytest.approx(np.log(5))
    loss.backward()
    assert method.backbone.net.conv1.weight.grad is not None
    with pytest.raises(ValueError, match="still_negatives needs clips"):
        method.training_step([v[:, :, 0] for v in views], StepInfo(0, 0.0))
