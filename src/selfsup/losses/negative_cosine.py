"""Negative cosine similarity with a stop-gradient target: the loss of SimSiam and BYOL."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FORMS = ("cosine", "byol")


class NegativeCosineLoss(nn.Module):
    """Distance between a prediction and a target, through their cosine similarity.

    - ``form="cosine"`` (SimSiam, Chen & He, 2021, Eq. 1):
      ``D(p, z) = -(p / ||p||) . (z / ||z||)``, in [-1, 1].
    - ``form="byol"`` (BYOL, Grill et al., 2020, Eq. 2): the mean squared error of the
      L2-normalised vectors, ``||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z)``, in [0, 4].

    Both average over the batch and have the same minimiser; the BYOL form has twice the
    gradient. With ``stop_gradient`` (the default) the target is detached, the
    ``stopgrad(z)`` of SimSiam that prevents collapse; for BYOL the target already comes
    from the EMA network, so detaching only makes that explicit. Symmetrising over the two
    views is left to the method (SimSiam: mean of both directions; BYOL: their sum).

    Shapes: ``prediction`` (N, D), ``target`` (N, D) -> scalar.
    """

    def __init__(self, form: str = "cosine", stop_gradient: bool = True) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.form = form
        self.stop_gradient = stop_gradient

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if prediction.shape != target.shape or prediction.ndim != 2:
            raise ValueError(
                "expected prediction and target of equal shape (N, D), got "
                f"{prediction.shape}, {target.shape}"
            )
        if self.stop_gradient:
            target = target.detach()
        cos = F.cosine_similarity(prediction.float(), target.float(), dim=1)  # (N,)
        if self.form == "byol":
            return (2.0 - 2.0 * cos).mean()
        return -cos.mean()
