"""PCA of ViT patch features mapped to colours, as in DINOv2 (Oquab et al., "DINOv2: Learning
Robust Visual Features without Supervision", 2023, Fig. 1 and Sec. 7.3): a first PCA over
the patches of all images, its first component thresholded to separate foreground from
background, then a second PCA over the foreground patches whose first three components
become red, green and blue. Parts that match across images get matching colours."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.data import ImageSource
from selfsup.viz.attention import vit_backbone
from selfsup.viz.common import (
    Run,
    image_grid,
    load_images,
    open_images,
    open_run,
    row_label,
    sample,
    save,
    show,
    to_display,
)
from selfsup.viz.embedding import pca


def _border(gh: int, gw: int) -> torch.Tensor:
    m = torch.zeros(gh, gw, dtype=torch.bool)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Each column rescaled to [0, 1]."""
    lo, hi = x.amin(0, keepdim=True), x.amax(0, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def patch_pca_rgb(
    patches: torch.Tensor, grid: tuple[int, int], threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch features (B, N, D) on a ``grid`` (h, w) with N = h * w -> colours
    (B, h, w, 3) in [0, 1] (background black) and the foreground mask (B, h, w).

    The first component's sign is arbitrary; it is chosen so that the patches on the image
    border lean to the background, since objects tend to sit inside the frame. With
    ``threshold`` <= 0 every patch counts as foreground.
    """
    b, n, d = patches.shape
    gh, gw = grid
    if n != gh * gw:
        raise ValueError(f"{n} patches do not fill a {gh}x{gw} grid")
    x = patches.reshape(b * n, d).float()
    first = _unit(pca(x, 1))[:, 0]
    border = _border(gh, gw).flatten().repeat(b)
    if (~border).any() and first[border].mean() > first[~border].mean():
        first = 1 - first
    fg = first > threshold if threshold > 0 else torch.ones_like(first, dtype=torch.bool)
    if int(fg.sum()) < 3:  # nothing stands out: colour every patch
        fg = torch.ones_like(fg)
    k = min(3, int(fg.sum()), d)
    comps = _unit(pca(x[fg], k))
    rgb = torch.zeros(b * n, 3)
    rgb[fg, :k] = comps
    return rgb.reshape(b, gh, gw, 3), fg.reshape(b, gh, gw)


def patch_pca(
    run: str | Path | Run,
    out: str | Path,
    data: str | ImageSource | None = None,
    *,
    num_images: int = 8,
    threshold: float = 0.5,
    split: str = "test",
    data_root: str | None = None,
    seed: int = 0,
) -> Path:
    """Two rows over ``num_images`` images: the images, then their patch features' PCA
    colours (computed jointly over all images, so colours are comparable across them)."""
    r = open_run(run)
    bb = vit_backbone(r, "patch-pca",
                      "For CNN backbones use `selfsup viz gradcam` or `embedding-map` instead.")  # fmt: skip
    source = open_images(r, data, "patch-pca", split, data_root)
    x, _, _ = load_images(r, source, sample(source, num_images, seed))
    with torch.no_grad():
        tokens = bb.forward_tokens(x)
    rgb, fg = patch_pca_rgb(tokens[:, bb.num_prefix_tokens :], bb.grid_size, threshold)
    fig, axes = image_grid(2, len(x), (
        f"{r.name} ({r.describe}): PCA of the last block's patch features\n"
        f"(first component > {threshold:g}: foreground; its next 3 components as RGB)"
    ), row_labels=True)  # fmt: skip
    img = to_display(x, r.mean, r.std)
    for i in range(len(x)):
        show(axes[0, i], img[i])
        show(axes[1, i], rgb[i].numpy())
    row_label(axes[0, 0], "image")
    row_label(axes[1, 0], f"patch PCA\n({100 * fg.float().mean():.0f}% fg)")
    return save(fig, out)
