"""Multi-crop plumbing shared by SwAV, DINO and DINOv2 (Caron et al., NeurIPS 2020,
"Unsupervised Learning of Visual Features by Contrasting Cluster Assignments", Sec. 3.2):
one forward pass per resolution, and local crops that tile into a ViT's patches."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from selfsup.backbones import Backbone
from selfsup.backbones.vit import ViTBackbone
from selfsup.config import ConfigError
from selfsup.transforms import MultiCropConfig, local_crop_size


def forward_multi_crop(
    fn: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``fn`` on V crops of B images each -> (V*B, ...) in the order of ``views``.

    ``fn`` runs once per run of consecutive same-sized crops (the global crops together,
    the local crops together), as in the SwAV and DINO reference code: fewer, larger passes,
    and BatchNorm statistics pooled over the crops of one resolution.
    """
    out: list[torch.Tensor] = []
    i = 0
    while i < len(views):
        j = i + 1
        while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
            j += 1
        out.append(fn(torch.cat(list(views[i:j]))))
        i = j
    return torch.cat(out)


def vit_local_size(cfg: MultiCropConfig, image_size: int, backbone: Backbone) -> MultiCropConfig:
    """The crop config with a local crop size that tiles into the ViT's patches: unset, 3/7
    of the image rounded to whole patches; set, it must be a multiple of the patch size."""
    if not isinstance(backbone, ViTBackbone) or cfg.local_crops == 0:
        return cfg
    p = backbone.patch_size
    if cfg.local_size is None:
        size = max(p, round(local_crop_size(cfg, image_size) / p) * p)
        return dataclasses.replace(cfg, local_size=size)
    if cfg.local_size % p:
        raise ConfigError(
            f"method.views.local_size={cfg.local_size} is not a multiple of the ViT's patch "
            f"size {p}; use e.g. {max(p, round(cfg.local_size / p) * p)}."
        )
    return cfg
