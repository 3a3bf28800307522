"""The SimCLR augmentation family (also used by MoCo v2 and, with tweaks, BYOL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from selfsup.transforms.base import normalize

# Above this image size the SimCLR paper's Gaussian blur is used by default; on CIFAR-sized
# images it hurts (SimCLR, Appendix B.9), so it is off below.
BLUR_MIN_SIZE = 64


@dataclass
class SimCLRViewsConfig:
    """Augmentations of SimCLR (Chen et al., 2020, Appendix A): random resized crop, flip,
    colour jitter, random grayscale, Gaussian blur."""

    # Random resized crop area range, as fractions of the image.
    min_scale: float = 0.08
    max_scale: float = 1.0
    # Colour jitter strength s: brightness, contrast, saturation 0.8s, hue 0.2s.
    # SimCLR uses s = 1.0 on ImageNet and 0.5 on CIFAR-10.
    cj_strength: float = 0.5
    cj_prob: float = 0.8
    gray_prob: float = 0.2
    # Gaussian blur probability. None: 0.5 above 64 px, 0 at or below.
    blur_prob: float | None = None
    hflip_prob: float = 0.5
    solarize_prob: float = 0.0


def _blur_kernel(size: int) -> int:
    k = max(3, int(0.1 * size))  # 10% of the image side, odd (SimCLR)
    return k if k % 2 == 1 else k + 1


def simclr_view(
    cfg: SimCLRViewsConfig,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
) -> v2.Compose:
    """One SimCLR view: uint8 (C, H, W) -> float32 (C, image_size, image_size)."""
    s = cfg.cj_strength
    if channels == 3:
        jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    else:  # saturation and hue do not exist for single-channel images
        jitter = v2.ColorJitter(0.8 * s, 0.8 * s)
    blur_p = cfg.blur_prob
    if blur_p is None:
        blur_p = 0.5 if image_size > BLUR_MIN_SIZE else 0.0
    ops: list[torch.nn.Module] = [
        v2.RandomResizedCrop(image_size, scale=(cfg.min_scale, cfg.max_scale), antialias=True),
        v2.RandomHorizontalFlip(cfg.hflip_prob),
    ]
    if cfg.cj_prob > 0 and s > 0:
        ops.append(v2.RandomApply([jitter], p=cfg.cj_prob))
    if cfg.gray_prob > 0 and channels == 3:
        ops.append(v2.RandomGrayscale(cfg.gray_prob))
    if blur_p > 0:
        ops.append(
            v2.RandomApply([v2.GaussianBlur(_blur_kernel(image_size), (0.1, 2.0))], p=blur_p)
        )
    if cfg.solarize_prob > 0:
        ops.append(v2.RandomSolarize(128, p=cfg.solarize_prob))
    ops.append(normalize(mean, std))
    return v2.Compose(ops)
