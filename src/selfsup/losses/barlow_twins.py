"""The Barlow Twins redundancy-reduction loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from selfsup import dist


class BarlowTwinsTerms(NamedTuple):
    """The two parts of the Barlow Twins loss, before weighting and scaling."""

    # sum_i (1 - C_ii)^2
    on_diagonal: torch.Tensor
    # sum_{i != j} C_ij^2
    off_diagonal: torch.Tensor


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al., ICML 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", Eq. 1-2).

    Each embedding dimension is standardised over the batch (zero mean, unit variance), and
    the cross-correlation matrix of the two views is pushed towards the identity:

        C_ij = 1/N sum_b zn0[b, i] zn1[b, j]
        L    = scale * ( sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2 )

    The first term makes the embedding invariant to the augmentations, the second
    decorrelates its dimensions. Standardisation uses the biased variance plus ``eps``, as
    the paper's BatchNorm without affine parameters does, so C_ii is the Pearson
    correlation of dimension i across the two views.

    Args:
        lambda_offdiag: weight ``lambda`` of the redundancy term. The paper uses 0.0051 and
            finds results insensitive to it over a wide range; solo-learn keeps 0.0051 with
            2048-d projectors on CIFAR.
        scale_loss: a constant factor on the whole loss. 1.0 is the paper; solo-learn uses
            0.1 on CIFAR with LARS. Under plain SGD it acts like a learning-rate factor.
        eps: added to the variance before the square root (BatchNorm's default).
        gather_distributed: standardise and correlate over the global batch (all ranks,
            with gradients), as the paper's all-reduced C does.

    Shapes: ``z0``, ``z1`` (N, D) -> scalar.
    """

    def __init__(
        self,
        lambda_offdiag: float = 0.0051,
        scale_loss: float = 1.0,
        eps: float = 1e-5,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if lambda_offdiag < 0:
            raise ValueError(f"lambda_offdiag must be non-negative, got {lambda_offdiag}")
        if scale_loss <= 0:
            raise ValueError(f"scale_loss must be positive, got {scale_loss}")
        self.lambda_offdiag = lambda_offdiag
        self.scale_loss = scale_loss
        self.eps = eps
        self.gather_distributed = gather_distributed

    def cross_correlation(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """The (D, D) cross-correlation matrix C of the batch-standardised embeddings."""
        if z0.shape != z1.shape or z0.ndim != 2:
            raise ValueError(
                f"expected two (N, D) tensors of equal shape, got {z0.shape}, {z1.shape}"
            )
        z0, z1 = z0.float(), z1.float()
        if self.gather_distributed and dist.world_size() > 1:
            z0, z1 = dist.gather(z0), dist.gather(z1)
        n = z0.shape[0]
        if n < 2:
            raise ValueError("Barlow Twins needs at least 2 samples to standardise over the batch")
        # float32 even under autocast: a bf16 matmul leaves C with ~3 significant digits,
        # too coarse for D^2 squared entries summed into the loss.
        with torch.autocast(z0.device.type, enabled=False):
            zn0 = (z0 - z0.mean(0)) / torch.sqrt(z0.var(0, unbiased=False) + self.eps)
            zn1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + self.eps)
            return zn0.T @ zn1 / n

    def terms(self, z0: torch.Tensor, z1: torch.Tensor) -> BarlowTwinsTerms:
        """The unweighted on- and off-diagonal terms."""
        c = self.cross_correlation(z0, z1)
        diag = torch.diagonal(c)
        on = (1.0 - diag).pow(2).sum()
        off = c.pow(2).sum() - diag.pow(2).sum()
        return BarlowTwinsTerms(on, off)

    def combine(self, terms: BarlowTwinsTerms) -> torch.Tensor:
        """The loss from its terms: ``scale * (on + lambda * off)``."""
        return self.scale_loss * (terms.on_diagonal + self.lambda_offdiag * terms.off_diagonal)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """``z0``, ``z1``: (N, D) embeddings of two views of the same N images -> scalar."""
        return self.combine(self.terms(z0, z1))
