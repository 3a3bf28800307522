"""Clip-level evaluation of a backbone on labelled videos, by cross-validation over clips.

Features: each video's ``n_clips`` clips (evenly spread) of ``frames`` frames ``stride``
apart, every frame through the image backbone under the evaluation transform, mean-pooled
over frames and clips (temporal average pooling: an image backbone's clip feature) - or,
for a video backbone (a space-time ViT), each whole clip's embedding, averaged over clips.

Protocols, under stratified k-fold cross-validation over videos (small action sets have no
fixed split, and one performer per clip is not recorded, so folds are the honest test):
weighted kNN (cosine, the image protocol's voting) and a linear probe (L2-regularised
logistic regression, C = 1, on features standardised on the training folds; scikit-learn). Per protocol: the mean and
standard deviation over folds of top-1 and of balanced accuracy (the mean of per-class
recalls), in percent.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from selfsup.data.video import VideoFolder, clip_indices, clip_starts
from selfsup.eval.knn import knn_scores


def frame_batch(video: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
                indices: list[int]) -> torch.Tensor:  # fmt: skip
    """uint8 ``(T, 3, H, W)`` -> the chosen frames through ``transform``: ``(t, 3, S, S)``."""
    return torch.stack([transform(video[i]) for i in indices])


@torch.no_grad()
def clip_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    folder: VideoFolder,
    transform: Callable[[torch.Tensor], torch.Tensor],
    frames: int = 8,
    stride: int = 4,
    n_clips: int = 2,
    progress: Any = None,
    whole_clips: bool = False,
) -> torch.Tensor:
    """``(N, D)`` float32 features, one per video: ``encode`` maps a batch of frames
    ``(t, 3, S, S)`` to ``(t, D)``; averaged over every frame of every clip. ``whole_clips``
    (a video backbone): ``encode`` maps each clip ``(1, 3, frames, S, S)`` to ``(1, D)``,
    averaged over the clips."""
    out = []
    for i in range(len(folder)):
        video = folder.load(i)
        n = int(video.shape[0])
        starts = clip_starts(n, (frames - 1) * stride + 1, "uniform", n_clips)
        clips = [frame_batch(video, transform, clip_indices(n, s, frames, stride)) for s in starts]
        if whole_clips:
            feats = torch.cat([encode(c.transpose(0, 1).unsqueeze(0)).float() for c in clips])
        else:
            feats = encode(torch.cat(clips)).float()
        out.append(feats.mean(0))
        if progress is not None:
            progress.update(1)
    return torch.stack(out)


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean over classes present in ``labels`` of the share predicted right, percent."""
    present = sorted(set(labels.tolist()))
    recalls = [float((pred[labels == c] == c).float().mean()) for c in present]
    return 100 * sum(recalls) / len(recalls)


def summarise(top1: list[float], balanced: list[float]) -> dict[str, Any]:
    """Mean and spread over folds of top-1 and balanced accuracy, and each fold's top-1."""
    sd = statistics.stdev if len(top1) > 1 else (lambda _: 0.0)
    return {
        "top1_mean": statistics.mean(top1), "top1_std": sd(top1),
        "balanced_mean": statistics.mean(balanced), "balanced_std": sd(balanced),
        "folds_top1": top1,
    }  # fmt: skip


def fold_splits(labels: torch.Tensor, folds: int = 3,
                seed: int = 0) -> list[tuple[list[int], list[int]]]:  # fmt: skip
    """Stratified ``folds``-fold splits of the videos (shuffled with ``seed``): (train,
    test) index lists, the same for every protocol so they compare fold by fold."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    y = labels.numpy()
    counts = np.bincount(y)
    if folds < 2 or counts[counts > 0].min() < folds:
        raise ValueError(
            f"{folds}-fold cross-validation needs at least {folds} videos of every class "
            f"(fewest: {int(counts[counts > 0].min())}); lower --folds"
        )
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    return [(tr.tolist(), te.tolist()) for tr, te in splits]


def cross_validate(features: torch.Tensor, labels: torch.Tensor, folds: int = 3,
                   seed: int = 0, k: int = 5, temperature: float = 0.1,
                   c: float = 1.0) -> dict[str, dict[str, Any]]:  # fmt: skip
    """kNN and linear-probe accuracy under stratified ``folds``-fold cross-validation
    (shuffled with ``seed``): ``{"knn": {...}, "linear": {...}}`` with ``top1_mean``,
    ``top1_std``, ``balanced_mean``, ``balanced_std`` and each fold's top-1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = labels.numpy()
    x = torch.nn.functional.normalize(features.float(), dim=1)
    res: dict[str, tuple[list[float], list[float]]] = {"knn": ([], []), "linear": ([], [])}
    for train, test in fold_splits(labels, folds, seed):
        tr, te = torch.tensor(train), torch.tensor(test)
        kk = min(k, len(train))
        scores = knn_scores(x[tr], labels[tr], x[te], k=kk, temperature=temperature,
                            num_classes=int(labels.max()) + 1)  # fmt: skip
        pred = scores.argmax(1)
        res["knn"][0].append(float((pred == labels[te]).float().mean() * 100))
        res["knn"][1].append(balanced_accuracy(pred, labels[te]))
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        clf.fit(x[tr].numpy(), y[train])
        pred = torch.from_numpy(clf.predict(x[te].numpy()))
        res["linear"][0].append(float((pred == labels[te]).float().mean() * 100))
        res["linear"][1].append(balanced_accuracy(pred, labels[te]))
    return {name: summarise(t, b) for name, (t, b) in res.items()}
