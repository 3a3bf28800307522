"""Feature distillation by regression: the loss of SimReg (Navaneet et al., BMVC 2021,
"SimReg: Regression as a Simple Yet Effective Tool for Self-supervised Knowledge
Distillation") and of dense (patch-token) distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureDistillLoss(nn.Module):
    """Squared distance of L2-normalised features, ``||p/||p|| - t/||t|| ||^2 = 2 - 2 cos(p,
    t)``, averaged over every position: the student's prediction ``p`` regresses the frozen
    teacher's feature ``t`` (detached).

    SimReg showed that this plain regression, through an MLP prediction head on the
    student, distils a self-supervised teacher as well as or better than the similarity-
    distribution losses of SEED and CompRess, with no queue and no temperature. Normalising
    both sides makes the loss blind to the teacher's feature scale, which differs between
    methods (VICReg's features are large, DINO's small).

    Shapes: ``prediction`` and ``target`` (N, D) for global embeddings or (N, D, H, W) for
    dense maps (the distance per location, D the channel axis) -> scalar in [0, 4].
    """

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if prediction.shape != target.shape or prediction.ndim not in (2, 4):
            raise ValueError(
                "expected prediction and target of equal shape (N, D) or (N, D, H, W), got "
                f"{tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        cos = F.cosine_similarity(prediction.float(), target.detach().float(), dim=1)
        return (2.0 - 2.0 * cos).mean()
