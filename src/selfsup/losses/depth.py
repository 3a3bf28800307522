"""The scale-invariant log loss of supervised depth (Eigen et al., NeurIPS 2014, Eq. 4, with
the variance focus of Lee et al., "From Big to Small" (BTS), 2019, as DINOv2's depth heads
train with it):

    g_i = log d_i - log d*_i over valid pixels,
    L = alpha * sqrt(mean(g^2) - lam * mean(g)^2)

``lam`` = 1 is fully scale-invariant; 0.85 keeps 15% of the scale error in the loss so a
probe still learns metric depth; ``alpha`` = 10 (BTS) scales it to a range AdamW likes.
"""

from __future__ import annotations

import torch


def silog_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    lam: float = 0.85,
    alpha: float = 10.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``pred``, ``target`` (B, H, W) positive depths (``target`` 0 where invalid); ``valid``
    (B, H, W) bool (default: target > 0). A scalar; zero (with a gradient) when nothing is
    valid."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if valid is None:
        valid = target > 0
    if not bool(valid.any()):
        return pred.sum() * 0.0
    g = torch.log(pred[valid].float().clamp_min(eps)) - torch.log(target[valid].float())
    var = (g**2).mean() - lam * g.mean() ** 2
    return alpha * torch.sqrt(var.clamp_min(eps))
