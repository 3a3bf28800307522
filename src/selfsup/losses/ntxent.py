"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist


class NTXentLoss(nn.Module):
    """NT-Xent (Chen et al., 2020, SimCLR, Eq. 1), symmetric over the two views.

    For each of the 2N embeddings, the positive is the other view of the same image and the
    negatives are the other 2N - 2 embeddings of the batch (across all ranks when
    ``gather_distributed``):

        l(i, j) = -log( exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) )

    with cosine similarity ``sim``; the loss is the mean of l over all 2N anchors. With N
    images the loss of a random embedding is about ``log(2N - 1)``.

    Args:
        temperature: ``t``. SimCLR uses 0.5 on CIFAR-10 and 0.1 to 0.2 on ImageNet; lower
            values focus on hard negatives but below ~0.05 training often becomes unstable.
        gather_distributed: use the embeddings of every rank as negatives (with gradients).
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(
        self, z0: torch.Tensor, z1: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``z0``, ``z1``: (N, D) embeddings of two views of the same N images -> scalar.
        ``negatives``: (M, D) more embeddings that are negatives of every anchor (this
        rank's only; e.g. still clips, the appearance of a video without its motion)."""
        if z0.shape != z1.shape or z0.ndim != 2:
            raise ValueError(
                f"expected two (N, D) tensors of equal shape, got {z0.shape}, {z1.shape}"
            )
        n = z0.shape[0]
        z0 = F.normalize(z0.float(), dim=1)
        z1 = F.normalize(z1.float(), dim=1)
        local = torch.cat([z0, z1])  # (2N, D): anchors of this rank
        if self.gather_distributed and dist.world_size() > 1:
            # Keys of all ranks, laid out [z0 of rank 0, z1 of rank 0, z0 of rank 1, ...].
            keys = dist.gather(local)
            offset = dist.rank() * 2 * n
        else:
            keys, offset = local, 0
        logits = local @ keys.T / self.temperature  # (2N, 2N * world)
        idx = torch.arange(2 * n, device=z0.device)
        self_mask = F.one_hot(idx + offset, keys.shape[0]).bool()
        logits = logits.masked_fill(self_mask, float("-inf"))
        if negatives is not None:
            extra = local @ F.normalize(negatives.float(), dim=1).T / self.temperature
            logits = torch.cat([logits, extra], 1)  # targets index the first block
        # Positive of anchor i is i + N (first view) or i - N (second view) within the rank.
        targets = (idx + n) % (2 * n) + offset
        return F.cross_entropy(logits, targets)
