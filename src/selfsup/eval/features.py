"""Feature extraction with any feature extractor, batched, in mixed precision."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from selfsup.data import DataError, EvalDataset, ImageSource, default_workers, loader_kwargs
from selfsup.progress import progress_bar
from selfsup.runtime import autocast
from selfsup.transforms import eval_transform


@dataclass
class FeatureBatch:
    """The readable images of one batch: ``index`` (B,) their positions in the data set,
    ``features`` (B, D) float32 on the CPU, ``labels`` (B,) int64 (-1: unlabelled), and
    ``extra``: anything else the data set returned per image, as a dict of (B, ...) tensors."""

    index: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def stream_features(
    model: nn.Module,
    dataset: Dataset[Any],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    channels_last: bool = True,
    num_workers: int = -1,
    progress: bool | None = None,
    desc: str = "features",
) -> Iterator[FeatureBatch]:
    """Features batch by batch, in data set order, so that memory stays bounded however
    many images there are. ``dataset`` items are ``(image, label, ok)`` as from
    :class:`EvalDataset`, optionally followed by a dict of per-image tensors (``extra``);
    images with ``ok=False`` (unreadable) are left out of each batch. ``progress``: show a
    bar (``None``: the process default, see :func:`selfsup.progress.set_default`)."""
    device = torch.device(device)
    workers = default_workers(num_workers)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, **loader_kwargs(workers))
    was_training = model.training
    model.eval()
    start = 0
    try:
        for batch in progress_bar(loader, desc=desc, unit="batch", enabled=progress):
            x, y, ok = batch[0], batch[1], batch[2]
            extra: dict[str, torch.Tensor] = batch[3] if len(batch) > 3 else {}
            index = torch.arange(start, start + len(y))
            start += len(y)
            x = x.to(device, non_blocking=True)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                f = model(x)
            yield FeatureBatch(
                index[ok], f.float().cpu()[ok], y[ok].long(), {k: v[ok] for k, v in extra.items()}
            )
    finally:
        model.train(was_training)


def extract_features(
    model: nn.Module,
    source: ImageSource,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    channels_last: bool = True,
    num_workers: int = -1,
    progress: bool | None = None,
    desc: str = "features",
    bad_files: str = "skip",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every image of ``source`` under the deterministic evaluation transform.

    Returns ``(features (N, D) float32 on CPU, labels (N,) int64)``; labels are -1 for
    unlabelled images. Unreadable images are left out under the 'skip' policy. ``progress``:
    show a bar (``None``: the process default, see :func:`selfsup.progress.set_default`).
    """
    ds = EvalDataset(source, eval_transform(image_size, mean, std), image_size, channels, bad_files)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for b in stream_features(model, ds, batch_size, device, precision, channels_last,
                             num_workers, progress, desc):  # fmt: skip
        feats.append(b.features)
        labels.append(b.labels)
    out = torch.cat(feats)
    if out.shape[0] == 0:
        raise DataError(
            f"none of the {len(source)} images of {source.name} could be read; check the "
            "folder (selfsup data check) or run with data.bad_files=fail to see the first error."
        )
    if out.shape[0] < len(source):
        warnings.warn(
            f"{len(source) - out.shape[0]} unreadable images of {source.name} were left out.",
            stacklevel=2,
        )
    return out, torch.cat(labels).long()
