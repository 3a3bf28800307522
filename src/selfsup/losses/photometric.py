"""The losses of self-supervised monocular depth (Godard et al., Monodepth2, ICCV 2019):

- :func:`ssim`: structural similarity over 3x3 windows (Wang et al., 2004), reflection
  padded, as a per-pixel map;
- :func:`photometric_error`: ``alpha (1 - SSIM) / 2 + (1 - alpha) |a - b|`` per pixel, with
  alpha 0.85;
- :func:`min_reprojection_loss`: the per-pixel minimum of that error over the source frames
  (occlusions: a pixel hidden in one source is usually visible in another), with
  auto-masking: pixels where an unwarped source already matches the target better than any
  warped one (a static camera, objects moving with it) are left out;
- :func:`smoothness_loss`: edge-aware smoothness of mean-normalised disparity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

C1, C2 = 0.01**2, 0.03**2


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM ``(B, C, H, W)`` of images in [0, 1], over 3x3 windows."""
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x**2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y**2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + C1) * (2 * sigma_xy + C2)
    den = (mu_x**2 + mu_y**2 + C1) * (sigma_x + sigma_y + C2)
    return num / den


def photometric_error(
    pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.85
) -> torch.Tensor:
    """``(B, C, H, W)`` images in [0, 1] -> ``(B, 1, H, W)``: 0.85 SSIM + 0.15 L1 (channel
    means); 0 where the images are equal."""
    l1 = (pred - target).abs().mean(1, keepdim=True)
    dssim = ((1 - ssim(pred, target)) / 2).clamp(0, 1).mean(1, keepdim=True)
    return alpha * dssim + (1 - alpha) * l1


def min_reprojection_loss(
    warped: list[torch.Tensor],
    target: torch.Tensor,
    sources: list[torch.Tensor] | None = None,
    valid: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-pixel minimum photometric error of the ``warped`` sources against ``target``,
    averaged over pixels that count. ``sources`` (the unwarped frames) turn on auto-masking:
    a pixel counts only where some warped source beats every unwarped one (ties broken by
    a tiny fixed offset, not noise, so results are deterministic). ``valid`` masks
    ``(B, 1, H, W)`` (pixels that warped inside the source) give out-of-view pixels an
    infinite error for that source. Returns ``(loss, mask of pixels that counted)``."""
    errors = [photometric_error(w, target) for w in warped]
    if valid is not None:
        errors = [e.masked_fill(v < 0.5, float("inf")) for e, v in zip(errors, valid, strict=True)]
    best = torch.cat(errors, 1).min(1, keepdim=True).values
    mask = torch.isfinite(best)
    if sources is not None:
        identity = torch.cat([photometric_error(s, target) for s in sources], 1)
        identity = identity.min(1, keepdim=True).values + 1e-5
        mask = mask & (best < identity)
    if not bool(mask.any()):
        return best.masked_fill(~mask, 0).sum() * 0.0, mask
    return best[mask].mean(), mask


def smoothness_loss(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness: gradients of the mean-normalised disparity ``(B, 1, H, W)``
    weighted by exp(-|image gradient|) of ``image`` ``(B, C, H, W)``, so depth may jump
    where the image has an edge."""
    d = disp / disp.mean(dim=(2, 3), keepdim=True).clamp_min(1e-7)
    dx = (d[..., :, :-1] - d[..., :, 1:]).abs()
    dy = (d[..., :-1, :] - d[..., 1:, :]).abs()
    ix = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    iy = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()
