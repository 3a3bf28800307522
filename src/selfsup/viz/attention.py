"""Class-token self-attention of a ViT, one map per head of the last block, overlaid on the
image: the picture of DINO (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021, Fig. 1 and 3), for any run with a ViT backbone."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.backbones.vit import ViTBackbone
from selfsup.backbones.vit_tools import last_block_head_attention
from selfsup.config import ConfigError
from selfsup.data import ImageSource
from selfsup.viz.common import (
    Run,
    class_name,
    image_grid,
    load_images,
    open_images,
    open_run,
    overlay,
    sample,
    save,
    show,
    to_display,
)


def vit_backbone(run: Run, kind: str, instead: str) -> ViTBackbone:
    """The run's feature network when it is a ViT; a clear refusal otherwise."""
    bb = run.method.feature_extractor()
    if not isinstance(bb, ViTBackbone):
        raise ConfigError(
            f"{kind} needs a Vision Transformer backbone, but {run.name} is a {run.describe} "
            f"run (a CNN, no attention or patch tokens). {instead}"
        )
    return bb


def attention(
    run: str | Path | Run,
    out: str | Path,
    data: str | ImageSource | None = None,
    *,
    num_images: int = 6,
    split: str = "test",
    data_root: str | None = None,
    seed: int = 0,
) -> Path:
    """Grid of ``num_images`` images (rows): the image, the class token's attention to the
    patches in the last block averaged over heads, then each head's own map."""
    r = open_run(run)
    bb = vit_backbone(r, "attention", "For CNN backbones use `selfsup viz gradcam` instead.")
    source = open_images(r, data, "attention", split, data_root)
    x, labels, _ = load_images(r, source, sample(source, num_images, seed))
    with torch.no_grad():
        heads = last_block_head_attention(bb, x)  # (B, heads, h, w)
    mean = heads.mean(1)
    n_heads = heads.shape[1]
    fig, axes = image_grid(len(x), 2 + n_heads, (
        f"{r.name} ({r.describe}): class-token self-attention of the last block "
        f"({n_heads} heads)"
    ), captions=True)  # fmt: skip
    img = to_display(x, r.mean, r.std)
    for i in range(len(x)):
        show(axes[i, 0], img[i], caption=class_name(source, labels[i]) if labels[i] >= 0 else None)
        overlay(
            axes[i, 1],
            img[i],
            mean[i].numpy(),
            caption="mean of heads" if i == len(x) - 1 else None,
        )
        for h in range(n_heads):
            cap = f"head {h + 1}" if i == len(x) - 1 else None
            overlay(axes[i, 2 + h], img[i], heads[i, h].numpy(), caption=cap)
    return save(fig, out)
