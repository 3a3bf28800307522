"""The VICReg loss: variance, invariance and covariance regularisation."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist


class VICRegTerms(NamedTuple):
    """The three VICReg terms, before weighting."""

    # s(Z, Z'): mean squared error between the two views' embeddings.
    invariance: torch.Tensor
    # (v(Z) + v(Z')) / 2: hinge on the per-dimension standard deviations.
    variance: torch.Tensor
    # c(Z) + c(Z'): squared off-diagonal covariances, divided by D.
    covariance: torch.Tensor


def variance_term(z: torch.Tensor, target: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z) = 1/D sum_j max(0, target - sqrt(Var(z_j) + eps)), Var unbiased over the batch.

    (N, D) -> scalar.
    """
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(target - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """c(Z) = 1/D sum_{i != j} Cov(Z)_ij^2, with the unbiased covariance over the batch.

    (N, D) -> scalar.
    """
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


class VICRegLoss(nn.Module):
    """VICReg (Bardes, Ponce and LeCun, ICLR 2022, "VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning", Eq. 1-6):

        L = lambda * s(Z, Z') + mu * [v(Z) + v(Z')] / 2 + nu * [c(Z) + c(Z')]

    - invariance ``s``: mean squared error between the embeddings of the two views;
    - variance ``v``: mean over dimensions of ``max(0, 1 - sqrt(Var + eps))``, which keeps
      every dimension's standard deviation at 1 or above (prevents collapse);
    - covariance ``c``: sum of the squared off-diagonal covariances divided by D (pushes
      dimensions to be decorrelated).

    The variance term is averaged over the two branches and the covariance term summed, as
    in the authors' released code with which the paper's weights 25 / 25 / 1 were tuned
    (the paper's Eq. 6 writes both as sums: double ``var_weight`` to follow it literally).
    Variance and covariance are computed over the global batch when distributed
    (gathered with gradients); the invariance term is a per-sample mean, so the gradient
    averaging across ranks already makes it global.

    Args:
        inv_weight: ``lambda``. Paper: 25.
        var_weight: ``mu``. Paper: 25 (it found ``lambda = mu`` with ``nu = 1`` best; without
            this term the embedding collapses).
        cov_weight: ``nu``. Paper: 1.
        eps: added to the variance before the square root (paper: 1e-4).
        gather_distributed: gather embeddings from every rank for ``v`` and ``c``.

    Shapes: ``z0``, ``z1`` (N, D) -> scalar.
    """

    def __init__(
        self,
        inv_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        for name, w in (("inv", inv_weight), ("var", var_weight), ("cov", cov_weight)):
            if w < 0:
                raise ValueError(f"{name}_weight must be non-negative, got {w}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.inv_weight = inv_weight
        self.var_weight = var_weight
        self.cov_weight = cov_weight
        self.eps = eps
        self.gather_distributed = gather_distributed

    def terms(self, z0: torch.Tensor, z1: torch.Tensor) -> VICRegTerms:
        """The three unweighted terms (each a scalar)."""
        if z0.shape != z1.shape or z0.ndim != 2:
            raise ValueError(
                f"expected two (N, D) tensors of equal shape, got {z0.shape}, {z1.shape}"
            )
        z0, z1 = z0.float(), z1.float()
        if self.gather_distributed and dist.world_size() > 1:
            g0, g1 = dist.gather(z0), dist.gather(z1)
        else:
            g0, g1 = z0, z1
        if g0.shape[0] < 2:
            raise ValueError("VICReg needs at least 2 samples for batch variances")
        # float32 even under autocast, which would run the covariance matmul in bf16.
        with torch.autocast(z0.device.type, enabled=False):
            invariance = F.mse_loss(z0, z1)
            variance = 0.5 * (variance_term(g0, eps=self.eps) + variance_term(g1, eps=self.eps))
            covariance = covariance_term(g0) + covariance_term(g1)
        return VICRegTerms(invariance, variance, covariance)

    def combine(self, terms: VICRegTerms) -> torch.Tensor:
        """``lambda * s + mu * v + nu * c``."""
        return (
            self.inv_weight * terms.invariance
            + self.var_weight * terms.variance
            + self.cov_weight * terms.covariance
        )

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """``z0``, ``z1``: (N, D) embeddings of two views of the same N images -> scalar."""
        return self.combine(self.terms(z0, z1))
