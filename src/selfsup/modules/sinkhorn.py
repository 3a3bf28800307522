"""Sinkhorn-Knopp equipartition, as used by SwAV's online cluster assignments."""

from __future__ import annotations

import torch

from selfsup import dist


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3
) -> torch.Tensor:
    """Soft assignments ``Q`` (B, K) of B samples to K prototypes from ``scores`` (B, K).

    Solves the entropy-regularised transport problem of SwAV (Caron et al., 2020, Sec. 3.1):
    ``Q = diag(u) exp(scores / epsilon) diag(v)`` with prototypes used equally often over the
    (global) batch. Each returned row sums to 1; each column sums to B/K over the global
    batch. Smaller ``epsilon`` gives sharper assignments (SwAV: 0.05; below ~0.02 exp()
    overflows in low precision).
    """
    q = (scores.float() / epsilon).T  # (K, B)
    q = q - dist.all_reduce_max(q.max())  # stability: one constant on all ranks cancels out
    q = torch.exp(q)
    b = dist.all_reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))
    k = q.shape[0]
    q = q / dist.all_reduce_sum(q.sum())
    for _ in range(iterations):
        # Rows (prototypes): each gets total mass 1/K.
        q = q / dist.all_reduce_sum(q.sum(dim=1, keepdim=True))
        q = q / k
        # Columns (samples): each gets total mass 1/B.
        q = q / q.sum(dim=0, keepdim=True)
        q = q / b
    return (q * b).T  # rows sum to 1
