"""The pixel reconstruction loss of MAE, with its patchify / unpatchify helpers."""

from __future__ import annotations

import math

import torch
from torch import nn

from selfsup.modules.tubes import patchify_video


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches, in raster order.

    (B, C, H, W) -> (B, N, p*p*C) with N = (H/p) * (W/p). Patch ``n = r * (W/p) + c`` covers
    rows ``r*p .. r*p+p-1`` and columns ``c*p .. c*p+p-1``; inside a patch the values are laid
    out pixel row, pixel column, channel (channel fastest), as in the MAE reference code.
    """
    if images.ndim != 4:
        raise ValueError(f"patchify expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    gh, gw = h // p, w // p
    x = images.reshape(b, c, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    return x.reshape(b, gh * gw, p * p * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, p*p*C) -> (B, C, gh*p, gw*p).

    ``grid`` = (gh, gw) patches per column and row; unset, the grid is square.
    """
    if patches.ndim != 3:
        raise ValueError(f"unpatchify expects (B, N, p*p*C), got shape {tuple(patches.shape)}")
    b, n, k = patches.shape
    p = patch_size
    if k % (p * p):
        raise ValueError(f"patch length {k} is not a multiple of patch_size^2 = {p * p}")
    c = k // (p * p)
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patches do not form a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    gh, gw = grid
    if gh * gw != n:
        raise ValueError(f"grid {grid} holds {gh * gw} patches, got {n}")
    x = patches.reshape(b, gh, gw, p, p, c)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
    return x.reshape(b, c, gh * p, gw * p)


def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and variance, (B, N, K) -> two (B, N, 1) tensors.

    The variance is the unbiased one (divided by K - 1), as ``Tensor.var`` in the MAE
    reference code computes it.
    """
    return patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's normalised pixel targets: each patch minus its mean, over sqrt(var + eps)."""
    mean, var = patch_stats(patches)
    return (patches - mean) / (var + eps).sqrt()


class MAELoss(nn.Module):
    """Masked-patch pixel regression of MAE (He et al., 2022, "Masked Autoencoders Are
    Scalable Vision Learners", Sec. 3 "Reconstruction target").

    With targets ``t`` = the image's patches (normalised per patch when ``norm_pix_loss``:
    ``t = (x - mean(x)) / sqrt(var(x) + eps)``) and mask ``m`` (1 = hidden patch):

        L = sum_{b, n} m_bn * mean_k (pred_bnk - t_bnk)^2  /  sum_{b, n} m_bn

    i.e. the mean squared error over the hidden patches only: visible patches get no loss
    and no gradient (the paper finds that computing it on all patches costs ~0.5% accuracy).

    Shapes: ``pred`` (B, N, p*p*C), ``images`` (B, C, H, W), ``mask`` (B, N) -> scalar.

    Args:
        patch_size: p, the side of a square patch in pixels.
        norm_pix_loss: regress normalised pixels per patch (local contrast); the paper's
            ablation (Table 1d) finds it better than raw pixels, about +0.5% fine-tuning.
        eps: added to the patch variance before the square root (1e-6 as in MAE).
    """

    def __init__(self, patch_size: int, norm_pix_loss: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be at least 1, got {patch_size}")
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.eps = eps

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The regression targets (B, N, p*p*C) of ``images`` (B, C, H, W), in float32."""
        target = patchify(images.float(), self.patch_size)
        return normalize_patches(target, self.eps) if self.norm_pix_loss else target

    def forward(self, pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.targets(images)
        if pred.shape != target.shape:
            raise ValueError(
                f"predictions {tuple(pred.shape)} do not match the patches of the images "
                f"{tuple(target.shape)} (patch size {self.patch_size})"
            )
        if mask.shape != pred.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} should be (B, N) = {tuple(pred.shape[:2])}")
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
        m = mask.float()
        # With no hidden patch there is nothing to reconstruct: 0 rather than 0 / 0.
        return (per_patch * m).sum() / m.sum().clamp(min=1.0)


class TubeMAELoss(MAELoss):
    """The loss of :class:`MAELoss` on clips: VideoMAE's masked-tube regression (Tong et al.,
    2022, Sec. 3.3), the mean squared error over the hidden tubes of ``tubelet`` frames x
    ``p`` x ``p`` pixels, each normalised by its own mean and variance when
    ``norm_pix_loss``. Shapes: ``pred`` (B, N, tubelet*p*p*C), ``clips`` (B, C, T, H, W),
    ``mask`` (B, N)."""

    def __init__(self, patch_size: int, tubelet: int, norm_pix_loss: bool = True,
                 eps: float = 1e-6) -> None:  # fmt: skip
        super().__init__(patch_size, norm_pix_loss, eps)
        if tubelet < 1:
            raise ValueError(f"tubelet must be at least 1, got {tubelet}")
        self.tubelet = tubelet

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        target = patchify_video(images.float(), self.patch_size, self.tubelet)
        return normalize_patches(target, self.eps) if self.norm_pix_loss else target
