"""Grad-CAM on video: for one clip of each class, where in every frame the evidence for the
clip's predicted action lies. A logistic-regression probe is fitted on the clip features of
the labelled videos (frames through the run's backbone, averaged: as ``selfsup eval video``
computes them); the clip's class score, from its frames' mean feature, is differentiated
back to each frame's last convolutional map (Grad-CAM, Selvaraju et al., 2017, applied
frame by frame under temporal pooling). A clip ResNet (video_resnet18) takes each clip
whole and every frame's map gets its own Grad-CAM; for a space-time ViT (videomae) the tube
tokens take the place of the convolutional map."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.backbones import Backbone
from selfsup.backbones.video_vit import VideoViTBackbone
from selfsup.backbones.vit import ViTBackbone
from selfsup.config import ConfigError
from selfsup.viz.common import Run, image_grid, open_run, overlay, row_label, save, to_display
from selfsup.viz.gradcam import clip_grad_cam, fit_probe, grad_cam


def video_gradcam(
    run: str | Path | Run,
    out: str | Path,
    data: str | None = None,
    *,
    frames: int | None = None,
    stride: int | None = None,
    clips: int = 2,
    seed: int = 0,
    device: str = "auto",
) -> Path:
    """A strip of ``frames`` frames with their Grad-CAM for the first video of each class of
    the labelled video folder ``data``; the probe is fitted on every video's clip feature
    (``clips`` clips of ``frames`` frames ``stride`` apart: 8 and 4 by default, a video
    backbone's own clips for a video run)."""
    from selfsup.data.video import clip_indices, clip_starts, open_videos
    from selfsup.eval.video import clip_features, frame_batch
    from selfsup.transforms.base import eval_transform

    r = open_run(run)
    bb = r.method.feature_extractor()
    whole = bool(getattr(bb, "is_video", False))
    if not whole and (isinstance(bb, ViTBackbone) or not isinstance(bb, Backbone)):
        raise ConfigError(
            f"video-gradcam works on CNN backbones (it weighs a convolutional feature map) "
            f"and space-time ViTs (videomae), but {r.name} is a {r.describe} run."
        )
    if whole:
        frames = frames or int(getattr(bb, "frames"))  # noqa: B009
        stride = stride or int(getattr(r.method.cfg, "clip_stride", None) or r.cfg.data.clip_stride)
    frames, stride = frames or 8, stride or 4
    if data is None:
        raise ConfigError("video-gradcam needs --data: a folder of class folders of videos.")
    folder = open_videos(data)
    if len(folder.classes) < 2:
        raise ConfigError(f"video-gradcam needs videos of two classes or more in {data} "
                          "(<root>/<class>/<video>).")  # fmt: skip
    transform = eval_transform(r.image_size, r.mean, r.std)

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = bb(x.mean(1, keepdim=True) if r.channels == 1 else x)
        return out

    feats = clip_features(encode, folder, transform, frames, stride, clips, whole_clips=whole)
    labels = torch.tensor(folder.labels)
    probe = fit_probe(feats, labels, len(folder.classes), seed=seed)
    firsts = [folder.labels.index(c) for c in range(len(folder.classes))]
    fig, axes = image_grid(len(firsts), frames, (
        f"{r.name} ({r.describe}): Grad-CAM of each clip's predicted action, frame by frame\n"
        f"(probe on {probe.fitted_on} clip features of {Path(str(data)).name}, "
        f"{probe.describe()})"
    ), captions=True, row_labels=True)  # fmt: skip
    for row, i in enumerate(firsts):
        video = folder.load(i)
        n = int(video.shape[0])
        (start,) = clip_starts(n, (frames - 1) * stride + 1, "center")
        idx = clip_indices(n, start, frames, stride)
        x = frame_batch(video, transform, idx)
        if r.channels == 1:
            x = x.mean(1, keepdim=True)
        if whole and isinstance(bb, VideoViTBackbone):
            heat, probs = clip_grad_cam(bb, probe, x.transpose(0, 1).unsqueeze(0))
        elif whole:  # a clip ResNet: the clip goes through whole, each frame gets its map
            assert isinstance(bb, Backbone)
            heat, probs = grad_cam(bb, probe, x.transpose(0, 1).unsqueeze(0))
        else:
            assert isinstance(bb, Backbone)
            heat, probs = grad_cam(bb, probe, x, pool=True)
        pred = int(probs[0].argmax())
        img = to_display(x, r.mean, r.std)
        # One scale a clip, so that frames compare: where in time the evidence lies shows.
        top = float(heat.max())
        for j in range(frames):
            caption = f"frame {idx[j]}"
            if j == 0:
                caption = f"{folder.classes[pred]} p={float(probs[0, pred]):.2f}"
                if top <= 0:  # every location argues against the class: nothing to show
                    caption += "\nno positive evidence"
            overlay(axes[row, j], img[j], heat[j].numpy(), caption=caption,
                    scale=(0.0, top))  # fmt: skip
        row_label(axes[row, 0], f"{folder.classes[folder.labels[i]]}\n{folder.paths[i].name}")
    return save(fig, out)
