"""Feature extraction with any feature extractor, batched, in mixed precision."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from selfsup.data import DataError, EvalDataset, ImageSource, default_workers, loader_kwargs
from selfsup.transforms import eval_transform


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """Autocast context for ``precision`` in {bf16, fp16, fp32} on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
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
    progress: bool = False,
    desc: str = "features",
    bad_files: str = "skip",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every image of ``source`` under the deterministic evaluation transform.

    Returns ``(features (N, D) float32 on CPU, labels (N,) int64)``; labels are -1 for
    unlabelled images. Unreadable images are left out under the 'skip' policy.
    """
    device = torch.device(device)
    ds = EvalDataset(source, eval_transform(image_size, mean, std), image_size, channels, bad_files)
    workers = default_workers(num_workers)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, **loader_kwargs(workers))
    was_training = model.training
    model.eval()
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for x, y, ok in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            x = x.to(device, non_blocking=True)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                f = model(x)
            feats.append(f.float().cpu()[ok])
            labels.append(y[ok])
    finally:
        model.train(was_training)
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
