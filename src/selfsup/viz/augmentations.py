"""A preview of a method's training views: a few images and the views its augmentation
pipeline (the run's own ``method.views`` / multi-crop settings) draws from each, through the
same code path, seeds and transforms as training."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.config import ConfigError
from selfsup.data import ImageSource, ViewDataset
from selfsup.data.loader import sample_seed
from selfsup.viz.common import (
    Run,
    class_name,
    image_grid,
    load_images,
    open_images,
    open_run,
    sample,
    save,
    show,
    to_display,
)

# Views shown per image at most (multi-crop makes up to 2 + 10).
MAX_VIEWS = 10


def augmentations(
    run: str | Path | Run,
    out: str | Path,
    data: str | ImageSource | None = None,
    *,
    num_images: int = 4,
    num_views: int | None = None,
    split: str = "test",
    data_root: str | None = None,
    seed: int = 0,
) -> Path:
    """One row per image: the image (evaluation view), then its training views.

    ``num_views`` (default: the method's own number of views, at most MAX_VIEWS) above the
    method's number draws further training samples of the same image (new seeds), to show
    more of the augmentation's range, e.g. 8 views for a two-view method.
    """
    r = open_run(run)
    source = open_images(r, data, "augmentations", split, data_root)
    x, labels, kept = load_images(r, source, sample(source, num_images, seed))
    transform = r.method.default_transform(r.image_size, r.mean, r.std, r.channels)
    per_sample = len(transform.transforms)
    wanted = min(num_views or per_sample, MAX_VIEWS)
    if wanted < 1:
        raise ConfigError(f"--num-views must be at least 1, got {num_views}.")
    ds = ViewDataset(source, transform, r.channels, bad_files="fail")
    views: list[list[torch.Tensor]] = []
    for i in kept:
        drawn: list[torch.Tensor] = []
        epoch = 0
        while len(drawn) < wanted:  # one training sample per epoch, as training draws them
            drawn += ds[(i, sample_seed(seed, epoch, i))][0]
            epoch += 1
        views.append(drawn[:wanted])
    title = (
        f"{r.name} ({r.describe}): {r.cfg.method.name} training views at {r.image_size} px "
        f"({per_sample} per training sample"
        + (f"; {wanted} shown per image)" if wanted != per_sample else ")")
    )
    fig, axes = image_grid(len(kept), 1 + wanted, title, captions=True)
    original = to_display(x, r.mean, r.std)
    last = len(kept) - 1
    for i in range(len(kept)):
        cap = class_name(source, labels[i]) if labels[i] >= 0 else None
        show(axes[i, 0], original[i], caption=cap)
        for j, v in enumerate(views[i]):
            img = to_display(v[None], r.mean, r.std)[0]
            size = "" if v.shape[-1] == r.image_size else f" ({v.shape[-1]} px)"
            show(axes[i, 1 + j], img, caption=f"view {j + 1}{size}" if i == last else None)
    return save(fig, out)
