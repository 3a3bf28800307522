"""``selfsup eval video``: clip features of a run's backbone on labelled videos, kNN and a
linear probe under k-fold cross-validation over videos (:mod:`selfsup.eval.video`), and on
request fine-tuning on the same folds (:mod:`selfsup.tasks.video_finetune`), beside the
same network untrained when asked."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from selfsup.data.video import open_videos
from selfsup.eval.video import clip_features, cross_validate, fold_splits, summarise
from selfsup.tasks.classification import FinetuneConfig


def evaluate_video(
    run: str | Path,
    data: str | Path,
    *,
    frames: int | None = None,
    stride: int | None = None,
    n_clips: int = 2,
    folds: int = 3,
    k: int = 5,
    seed: int = 0,
    image_size: int | None = None,
    random_init: bool = False,
    device: str = "auto",
    precision: str = "auto",
    progress: bool | None = None,
    finetune: FinetuneConfig | None = None,
) -> dict[str, Any]:
    """Cross-validated clip classification of the videos under ``data`` (class folders) by
    the run's backbone (``random_init``: its untrained twin). The top-level ``top1_mean``,
    ``top1_std``, ``balanced_mean`` are the linear probe's; ``knn`` and ``linear`` hold
    both protocols. ``frames`` and ``stride`` default to 8 and 4 for image backbones (frames
    through the backbone one by one, averaged) and to the clips a video backbone was
    pretrained on (its ``frames``, the method's ``clip_stride``). ``finetune``: also fine-tune
    the backbone with a new head on each fold's training videos (``finetune`` in the result;
    the backbone's learning rate is the config's ``backbone_lr_scale`` of the head's, 1 for
    ``random_init``, as in the image protocols)."""
    from selfsup.progress import progress_bar
    from selfsup.runs import load_run
    from selfsup.runtime import autocast, device_and_precision
    from selfsup.transforms.base import eval_transform

    t0 = time.perf_counter()
    folder = open_videos(data)
    if not folder.classes:
        raise ValueError(f"{data}: eval video needs class folders (<root>/<class>/<video>)")
    loaded = load_run(run, random_init)
    dev, prec = device_and_precision(device, precision)
    model = loaded.method.feature_extractor().to(dev).eval()
    d = loaded.config.data
    size = image_size or int(d.image_size or 224)
    transform = eval_transform(size, list(d.mean), list(d.std))
    channels = loaded.config.backbone.in_chans
    whole = bool(getattr(model, "is_video", False))
    if whole:
        frames = frames or int(getattr(model, "frames"))  # noqa: B009
        stride = stride or int(
            getattr(loaded.config.method, "clip_stride", None) or loaded.config.data.clip_stride
        )
    frames, stride = frames or 8, stride or 4

    def encode(x: torch.Tensor) -> torch.Tensor:
        if channels == 1:
            x = x.mean(1, keepdim=True)
        with autocast(dev, prec):
            out: torch.Tensor = model(x.to(dev))
        return out.float().cpu()

    bar = progress_bar(total=len(folder), desc="clip features", unit="video", enabled=progress)
    try:
        feats = clip_features(encode, folder, transform, frames, stride, n_clips, bar, whole)
    finally:
        bar.close()
    labels = torch.tensor(folder.labels)
    res = cross_validate(feats, labels, folds=folds, seed=seed, k=k)
    if finetune is not None:
        from dataclasses import replace

        from selfsup.tasks.video_finetune import EvalClips, TrainClips

        cfg = replace(finetune, device=device, precision=precision)
        splits = [(TrainClips(folder, tr, frames, stride, size, d.mean, d.std),
                   EvalClips(folder, te, frames, stride, n_clips, transform))
                  for tr, te in fold_splits(labels, folds, seed)]  # fmt: skip
        scale = 1.0 if random_init else cfg.backbone_lr_scale
        res["finetune"] = _finetune_folds(loaded.method, len(folder.classes), whole, channels,
                                          splits, cfg, scale, progress)  # fmt: skip
    return {
        **{key: res["linear"][key] for key in ("top1_mean", "top1_std", "balanced_mean")},
        **res, "videos": len(folder),
        "classes": folder.classes, "skipped": folder.skipped, "folds": folds,
        "frames": frames, "stride": stride, "clips": n_clips, "image_size": size,
        "clip_encoder": "video" if whole else "frames, mean-pooled",
        "random_init": random_init, "checkpoint": str(loaded.file), "data": str(data),
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def _finetune_folds(method: Any, num_classes: int, video: bool, channels: int,
                    splits: list[Any], cfg: FinetuneConfig, scale: float,
                    progress: bool | None) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``method``'s backbone on each (train, test) split: the folds' summary."""
    from selfsup.tasks.video_finetune import finetune_fold

    net, embed_dim = method.feature_extractor(), int(method.backbone.embed_dim)
    top1, balanced = [], []
    for train, test in splits:
        t, b = finetune_fold(net, embed_dim, num_classes, video, channels, train, test, cfg,
                             scale, progress)  # fmt: skip
        top1.append(t)
        balanced.append(b)
    return summarise(top1, balanced)
