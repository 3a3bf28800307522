"""The KoLeo regulariser: spread embeddings uniformly by pushing each one away from its
nearest neighbour."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """KoLeo (Sablayrolles et al., 2019, "Spreading vectors for similarity search", Eq. 6),
    as used by DINOv2 (Oquab et al., 2023, Sec. 4) on the student's class tokens.

    The Kozachenko-Leonenko differential-entropy estimator: for the L2-normalised rows
    ``x_1..x_n`` of a batch, with ``d_i = min_{j != i} ||x_i - x_j||``::

        L = -1/n sum_i log(d_i + eps)

    Minimising it pushes nearest neighbours apart, so the embeddings spread over the sphere.
    It is computed within the local batch (DINOv2 does not gather across ranks).

    Shapes: ``x`` (n, D) with n >= 2 -> scalar.

    Args:
        eps: keeps the log finite when two rows coincide (DINOv2: 1e-8).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"KoLeo needs an (n, D) batch with n >= 2, got {tuple(x.shape)}")
        x = F.normalize(x.float(), dim=1, eps=self.eps)
        # Nearest neighbour by cosine similarity (same order as distance on the sphere), in
        # float32 even under autocast so near-ties are resolved like the distances below.
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            sim = x @ x.T
            sim.fill_diagonal_(-float("inf"))
            nearest = sim.argmax(dim=1)
        # vector_norm's gradient is 0 (not NaN) where two rows coincide.
        d = torch.linalg.vector_norm(x - x[nearest], dim=1)
        return -torch.log(d + self.eps).mean()
