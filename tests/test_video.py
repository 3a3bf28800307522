"""Videos: readers on the real files here (H.264 MP4, MPEG-4 AVI) and on broken ones, frame
folders, clip sampling, cross-validation by hand, data check and eval video end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.sources import DataError
from selfsup.data.video import (
    check_videos,
    clip_indices,
    clip_starts,
    decode_video,
    open_videos,
    probe_video,
)
from selfsup.eval.video import balanced_accuracy, cross_validate
from tests.conftest import SHARED

VIDEOS = SHARED / "videos"
WEIZMANN = VIDEOS / "weizmann4"


def test_read_real_mp4_and_avi() -> None:
    mp4 = WEIZMANN / "bend" / "clip01.mp4"
    info = probe_video(mp4)
    assert (info.frames, info.fps, info.width, info.height) == (61, 25.0, 64, 64)
    assert info.duration == pytest.approx(2.44)
    v = decode_video(mp4)
    assert v.shape == (61, 3, 64, 64) and v.dtype == torch.uint8 and v.float().std() > 10
    avi = next((VIDEOS / "ucf101-sample" / "Diving").glob("*.avi"))
    v = decode_video(avi, max_frames=5)
    assert v.shape == (5, 3, 240, 320)


def test_broken_videos_are_skipped_and_named(tmp_path: Path) -> None:
    good = tmp_path / "a" / "good.mp4"
    good.parent.mkdir()
    os.symlink(WEIZMANN / "bend" / "clip01.mp4", good)
    (tmp_path / "a" / "empty.mp4").write_bytes(b"")
    (tmp_path / "a" / "text.avi").write_text("not a video")
    frames = tmp_path / "a" / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(frames / f"{i:03d}.png")
    with pytest.raises(DataError, match=r"text\.avi"):
        probe_video(tmp_path / "a" / "text.avi")
    folder = open_videos(tmp_path)
    assert [p.name for p in folder.paths] == ["frames", "good.mp4"]
    assert folder.classes == ["a"] and folder.labels == [0, 0]
    assert sorted(Path(s.split("\t")[0]).name for s in folder.skipped) == ["empty.mp4", "text.avi"]
    v = folder.load(0)  # the frame folder, in name order
    assert v.shape == (3, 3, 8, 10) and v[:, 0, 0, 0].tolist() == [0, 40, 80]
    report = check_videos(tmp_path)
    assert report["videos"] == 4 and report["readable"] == 2 and len(report["unreadable"]) == 2
    with pytest.raises(DataError, match="no readable video"):
        open_videos(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "nothing"
    d.mkdir()
    (d / "x.avi").write_text("no")
    return d


def test_clip_sampling_is_deterministic() -> None:
    assert clip_starts(100, 29, "uniform", 3) == [0, 36, 71]
    assert clip_starts(100, 29, "center") == [35]
    assert clip_starts(10, 29, "uniform", 2) == [0, 0]  # shorter than a clip
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = clip_starts(100, 29, "random", 4, g1), clip_starts(100, 29, "random", 4, g2)
    assert a == b and all(0 <= s <= 71 for s in a)
    assert clip_indices(10, 4, 4, 2) == [4, 6, 8, 9]  # past the end the last frame repeats
    with pytest.raises(ValueError, match="clip start"):
        clip_starts(10, 3, "middle")


def test_cross_validation_by_hand() -> None:
    assert balanced_accuracy(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0])) == 75.0
    # Class 0 all right, class 1 half right: balanced 75, top-1 (4 + 1) / 6.
    pred, labels = torch.tensor([0, 0, 0, 0, 1, 0]), torch.tensor([0, 0, 0, 0, 1, 1])
    assert balanced_accuracy(pred, labels) == pytest.approx(75.0)
    # Two well separated classes: every fold right with both protocols.
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(6, 4, generator=g) + 5, torch.randn(6, 4, generator=g) - 5])
    y = torch.tensor([0] * 6 + [1] * 6)
    res = cross_validate(x, y, folds=3, k=3)
    for name in ("knn", "linear"):
        assert res[name]["top1_mean"] == 100.0 and res[name]["top1_std"] == 0.0
        assert len(res[name]["folds_top1"]) == 3
    with pytest.raises(ValueError, match="at least 7 videos"):
        cross_validate(x, y, folds=7)


@pytest.fixture(scope="module")
def small_weizmann(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("weizmann")
    for cls in ("bend", "jack"):
        (out / cls).mkdir()
        for i in range(1, 4):
            os.symlink(WEIZMANN / cls / f"clip0{i}.mp4", out / cls / f"clip0{i}.mp4")
    return out


def test_eval_video_and_data_check_cli(small_weizmann: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import selfsup
    from selfsup.cli import main

    images = tmp_path / "frames"
    images.mkdir()
    for i, f in enumerate(decode_video(WEIZMANN / "bend" / "clip01.mp4", max_frames=8)):
        Image.fromarray(f.permute(1, 2, 0).numpy()).save(images / f"{i}.png")
    run = tmp_path / "run"
    selfsup.pretrain("simclr", data=str(images), out=run, steps=1, batch_size=4, image_size=32,
                     workers=0, progress=False, precision="fp32",
                     overrides=["monitor.knn=false", "method.proj_hidden_dim=64"])  # fmt: skip
    capsys.readouterr()
    rc = main(["eval", "video", "--checkpoint", str(run), "--data", str(small_weizmann),
               "--frames", "4", "--clips", "1", "--folds", "3", "--k", "2", "--json",
               "--no-progress", "--precision", "fp32"])  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["videos"] == 6 and res["classes"] == ["bend", "jack"] and res["folds"] == 3
    for key in ("top1_mean", "top1_std", "balanced_mean"):
        assert 0 <= res[key] <= 100 and key in res["knn"]
    assert res["top1_mean"] == res["linear"]["top1_mean"] and "finetune" not in res
    # Fine-tuning on the same folds, from the command line (one pass a fold: wiring only;
    # tests/test_video_finetune.py tests that it learns).
    rc = main(["eval", "video", "--checkpoint", str(run), "--data", str(small_weizmann),
               "--frames", "4", "--clips", "1", "--folds", "3", "--k", "2", "--json",
               "--no-progress", "--precision", "fp32", "--finetune", "--finetune-epochs", "1"])  # fmt: skip
    assert rc == 0
    ft = json.loads(capsys.readouterr().out)
    assert ft["knn"] == res["knn"] and ft["linear"] == res["linear"]
    assert len(ft["finetune"]["folds_top1"]) == 3 and 0 <= ft["finetune"]["top1_mean"] <= 100
    assert (
        main(
            [
                "eval",
                "video",
                "--checkpoint",
                str(run),
                "--data",
                str(small_weizmann),
                "--folds",
                "4",
                "--no-progress",
            ]
        )
        == 2
    )  # 3 videos a class: said, not a traceback
    assert "lower --folds" in capsys.readouterr().err
    # One embedding per video, readable back with its class.
    from selfsup.embeddings import read_embeddings

    assert main(["embed", "--checkpoint", str(run), "--data", str(small_weizmann), "--out",
                 str(tmp_path / "clips.parquet"), "--no-progress", "--precision", "fp32"]) == 0  # fmt: skip
    emb = read_embeddings(tmp_path / "clips.parquet")
    assert emb.vectors.shape == (6, 512) and emb.paths[0].endswith("clip01.mp4")
    capsys.readouterr()
    assert main(["data", "check", str(small_weizmann), "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "videos" in out and "bend: 3" in out and "64x64" in out


def test_video_source_draws_views_from_nearby_moments(small_weizmann: Path) -> None:
    from selfsup.data.sources import open_source
    from selfsup.data.video import VideoSource
    from selfsup.transforms.base import MultiView

    src = open_source(str(small_weizmann), video_gap=3)
    assert isinstance(src, VideoSource) and len(src) == 6 and src.labels == [0, 0, 0, 1, 1, 1]
    v = src.frames(0)
    assert src.load(0).shape == (64, 64, 3)
    np.testing.assert_array_equal(src.load(0), v[len(v) // 2].permute(1, 2, 0).numpy())
    a = src.load_views(0, seed=7, n=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, src.load_views(0, seed=7, n=2), strict=True))
    # Each view is a frame of the clip at most 3 frames from the first.
    frames = [v[t].permute(1, 2, 0).numpy() for t in range(len(v))]
    where = [[t for t, f in enumerate(frames) if np.array_equal(f, x)] for x in a]
    assert all(where) and min(abs(p - q) for p in where[0] for q in where[1]) <= 3
    draws = {
        tuple(np.asarray(src.load_views(0, seed=s, n=2)).reshape(2, -1)[:, 0]) for s in range(8)
    }
    assert len(draws) > 1  # seeds draw different moments
    # Views of a stack of moments: view k from frame k.
    mv = MultiView([lambda x: x.float().mean().reshape(1), lambda x: x.float().mean().reshape(1)])
    stack = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    assert [float(t) for t in mv(stack)] == [0.0, 1.0]


def test_pretrain_on_videos_takes_views_from_two_moments(small_weizmann: Path,
                                                         tmp_path: Path) -> None:  # fmt: skip
    import selfsup
    from selfsup.config import ConfigError

    res = selfsup.pretrain("simclr", data=str(small_weizmann), out=tmp_path / "run", steps=2,
                           batch_size=4, image_size=32, workers=0, progress=False,
                           precision="fp32", overrides=["monitor.knn=false",
                                                        "method.proj_hidden_dim=64"])  # fmt: skip
    assert res is not None and (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    with pytest.raises(ConfigError, match="videos is augmented per sample"):
        selfsup.pretrain("simclr", data=str(small_weizmann), out=tmp_path / "run2", steps=1,
                         batch_size=4, image_size=32, workers=0, progress=False,
                         overrides=["data.augment=device"])  # fmt: skip


def test_video_gradcam_draws_one_strip_a_class(small_weizmann: Path, tmp_path: Path) -> None:
    import selfsup
    from selfsup.viz import make
    from selfsup.viz.common import open_run
    from selfsup.viz.gradcam import Probe, grad_cam

    run = tmp_path / "run"
    selfsup.pretrain("simclr", data=str(small_weizmann), out=run, steps=1, batch_size=4,
                     image_size=32, workers=0, progress=False, precision="fp32",
                     overrides=["monitor.knn=false", "method.proj_hidden_dim=64"])  # fmt: skip
    out = make("video-gradcam", run, tmp_path / "cam.png", data=str(small_weizmann), frames=4)
    with Image.open(out) as im:
        assert im.size[0] > 400 and im.size[1] > 200
    # Pooled over a clip's frames, the one class score reaches every frame's map.
    bb = open_run(run).method.feature_extractor()
    d = 512
    probe = Probe(torch.zeros(d), torch.ones(d), torch.randn(d, 2), torch.zeros(2), None, 6)
    frames = torch.randn(4, 3, 32, 32)
    heat, probs = grad_cam(bb, probe, frames, pool=True)
    assert heat.shape == (4, 32, 32) and probs.shape == (1, 2)
    # The probe is linear, so the pooled score is the mean of the frames' scores: each
    # frame's gradient is 1/T of its own, and its map 1/T of its single-frame Grad-CAM.
    target = probs.argmax(1).expand(4)
    alone, _ = grad_cam(bb, probe, frames, target)
    torch.testing.assert_close(heat * 4, alone, atol=1e-4, rtol=1e-3)
    assert float(alone.sum()) > 0
