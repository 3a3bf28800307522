"""Patch masks for masked image modelling (MAE) and masked-token distillation (iBOT)."""

from __future__ import annotations

import math

import torch


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample uniform random masking (He et al., 2022, Sec. 3).

    Returns ``keep`` (B, n_keep) indices of visible patches, ``mask`` (B, N) with 1 where a
    patch is hidden, and ``restore`` (B, N), the permutation that puts a
    [visible, hidden] sequence back in patch order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = max(1, round(num_patches * (1 - mask_ratio)))
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    keep = shuffle[:, :n_keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, restore)
    return keep, mask, restore


def block_mask(
    batch: int,
    grid: tuple[int, int],
    ratio_range: tuple[float, float] = (0.1, 0.5),
    mask_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """iBOT-style block-wise masks (B, H*W), bool.

    Each image is masked with probability ``mask_prob``; a masked image hides a fraction drawn
    uniformly from ``ratio_range`` of its patches, as rectangular blocks with random aspect
    ratios (BEiT, Bao et al., 2022; iBOT, Zhou et al., 2022).
    """
    h, w = grid
    n = h * w
    masks = torch.zeros(batch, h, w, dtype=torch.bool)
    for i in range(batch):
        if float(torch.rand((), generator=generator)) >= mask_prob:
            continue
        lo, hi = ratio_range
        target = int(n * (lo + (hi - lo) * float(torch.rand((), generator=generator))))
        tries = 0
        while int(masks[i].sum()) < target and tries < 50:
            tries += 1
            remaining = target - int(masks[i].sum())
            area = max(1, int(remaining * (0.3 + 0.7 * float(torch.rand((), generator=generator)))))
            log_ar = math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * float(
                torch.rand((), generator=generator)
            )
            ar = math.exp(log_ar)
            bh = max(1, min(h, round(math.sqrt(area * ar))))
            bw = max(1, min(w, round(math.sqrt(area / ar))))
            top = int(torch.randint(0, h - bh + 1, (), generator=generator))
            left = int(torch.randint(0, w - bw + 1, (), generator=generator))
            masks[i, top : top + bh, left : left + bw] = True
    return masks.flatten(1)
