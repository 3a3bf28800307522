"""SwAV's swapped-prediction loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SwAVLoss(nn.Module):
    """Swapped prediction (Caron et al., NeurIPS 2020, "Unsupervised Learning of Visual
    Features by Contrasting Cluster Assignments", Eq. 1-2 and Sec. 3.2 for multi-crop).

    The code ``q_s`` of each global crop ``s`` (from Sinkhorn-Knopp, no gradient) is
    predicted from the prototype scores of every other crop ``t``:

        p_t = softmax(scores_t / temperature)
        L   = 1/G sum_{s < G} 1/(V-1) sum_{t != s} mean_b( -sum_k q_s[b, k] log p_t[b, k] )

    with G global crops (the first G entries of ``scores``) and V crops in all. The scores
    are the dot products of the L2-normalised embeddings with the unit-norm prototypes, so
    they lie in [-1, 1]; the codes are computed by the method (see
    :func:`selfsup.modules.sinkhorn_knopp`), which keeps this loss a pure function.

    Args:
        temperature: softmax temperature of the predictions (paper: 0.1). Lower values
            sharpen the predictions; the paper's ablations keep it at 0.1.

    Shapes: ``scores``: V tensors (B, K); ``codes``: G tensors (B, K), rows summing to 1.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(
        self, scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Prototype scores of every crop (global crops first) and the codes of the global
        crops -> scalar."""
        n_views, n_codes = len(scores), len(codes)
        if n_views < 2 or not 1 <= n_codes <= n_views:
            raise ValueError(
                f"SwAV needs at least two crops and one code per global crop (at most one per "
                f"crop), got {n_views} score tensors and {n_codes} codes"
            )
        shape = scores[0].shape
        if any(s.shape != shape or s.ndim != 2 for s in scores) or any(
            q.shape != shape for q in codes
        ):
            raise ValueError(
                "every score and code tensor must have the same (B, K) shape, got "
                f"{[tuple(s.shape) for s in scores]} and {[tuple(q.shape) for q in codes]}"
            )
        log_p = [F.log_softmax(s.float() / self.temperature, dim=1) for s in scores]
        total = scores[0].new_zeros((), dtype=torch.float32)
        for i, q in enumerate(codes):
            q = q.detach().float()
            sub = sum(
                (-(q * log_p[v]).sum(dim=1).mean() for v in range(n_views) if v != i),
                start=torch.zeros((), device=q.device),
            )
            total = total + sub / (n_views - 1)
        return total / n_codes
