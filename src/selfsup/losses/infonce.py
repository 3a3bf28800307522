"""InfoNCE, the contrastive loss of MoCo (v1, v2 with a negative queue; v3 in-batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist


class InfoNCELoss(nn.Module):
    """InfoNCE (van den Oord et al., 2018) as used by MoCo (He et al., 2020, Eq. 1):

        L_q = -log( exp(q . k+ / t) / (exp(q . k+ / t) + sum_{k-} exp(q . k- / t)) )

    with L2-normalised queries ``q`` and keys ``k``, averaged over the N queries. It is a
    (K + 1)-way cross-entropy whose correct class is the positive key. Two forms:

    - **queue** (MoCo v1/v2, Chen et al., 2020, "Improved Baselines with Momentum
      Contrastive Learning"): ``negatives`` (K, D) holds older keys (the memory queue);
      the logits of query i are ``[q_i . k_i, q_i . negatives] / t`` and the target is
      index 0.
    - **in-batch** (MoCo v3, Chen, Xie & He, 2021, Algorithm 1): ``negatives=None``; the
      keys of every image of the batch (of all ranks when ``gather_distributed``) are the
      candidates, ``logits = q @ k_all.T / t``, and the target of query i is its own key.

    Keys and negatives are targets produced by a momentum encoder: no gradient flows into
    them (they are detached), so the loss behaves the same on one or many processes.

    Args:
        temperature: ``t``. MoCo v2 and v3 (ViT) use 0.2, MoCo v1 0.07, MoCo v3 with a
            ResNet 1.0. Lower values weigh hard negatives more; below ~0.05 training tends
            to become unstable.
        gather_distributed: in-batch form only: use the keys of every rank as negatives.
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``query``, ``key``: (N, D), row i of each from the same image; ``negatives``:
        (K, D) or None (in-batch form). Returns the scalar mean loss."""
        if query.shape != key.shape or query.ndim != 2:
            raise ValueError(
                f"expected query and key of equal shape (N, D), got {query.shape}, {key.shape}"
            )
        q = F.normalize(query.float(), dim=1)
        k = F.normalize(key.detach().float(), dim=1)
        if negatives is not None:
            if negatives.ndim != 2 or negatives.shape[1] != q.shape[1]:
                raise ValueError(
                    f"expected negatives of shape (K, {q.shape[1]}), got {negatives.shape}"
                )
            neg = F.normalize(negatives.detach().float(), dim=1)
            pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
            logits = torch.cat([pos, q @ neg.T], dim=1) / self.temperature  # (N, 1 + K)
            targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, targets)
        if self.gather_distributed and dist.world_size() > 1:
            # Keys of all ranks in rank order, so this rank's keys start at rank * N.
            keys = dist.gather(k, with_grad=False)
            offset = dist.rank() * q.shape[0]
        else:
            keys, offset = k, 0
        logits = q @ keys.T / self.temperature  # (N, N * world)
        targets = torch.arange(q.shape[0], device=q.device) + offset
        return F.cross_entropy(logits, targets)
