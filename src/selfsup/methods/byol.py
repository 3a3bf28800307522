"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020, "Bootstrap Your Own
Latent: A New Approach to Self-Supervised Learning")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from selfsup import schedules
from selfsup.backbones import Backbone
from selfsup.config import MethodConfig
from selfsup.heads import MLP
from selfsup.losses.negative_cosine import NegativeCosineLoss
from selfsup.methods.base import Method, StepInfo
from selfsup.modules import frozen_copy
from selfsup.registry import register_method
from selfsup.transforms import MultiView, ViewsConfig, byol_views, resolve_byol_blur, two_views


@dataclass
class BYOLConfig(MethodConfig):
    name: str = "byol"
    # Projector MLP (Linear-BN-ReLU-Linear). BYOL: 4096 hidden, 256 out on ImageNet; 1024
    # hidden is enough for a 512-d ResNet-18 on CIFAR (lightly's CIFAR-10 benchmark).
    proj_hidden_dim: int = 1024
    proj_output_dim: int = 256
    # Predictor MLP hidden size (same shape as the projector, 256 -> hidden -> 256).
    pred_hidden_dim: int = 1024
    # Target EMA momentum at the start, raised to `momentum_end` on a cosine schedule
    # (BYOL: 0.996 -> 1 over 1000 ImageNet epochs). 0.99 suits short runs: a slower
    # target learns too little in a few epochs; above 0.999 it barely moves.
    momentum: float = 0.99
    momentum_end: float = 1.0
    # "byol": 2 - 2 cos (BYOL's normalised MSE, per view pair in [0, 4], summed over the
    # two directions as in the paper); "cosine": -cos (SimSiam's form, half the gradient).
    loss_form: str = "byol"
    views: ViewsConfig = field(default_factory=byol_views)


@register_method("byol")
class BYOL(Method):
    """BYOL: an online network (backbone, projector, predictor) predicts the projection of
    another view made by a target network, the EMA of the online backbone and projector.
    No negatives; the predictor and the slowly moving target prevent collapse.

    The loss is symmetrised as in the paper: ``L(p1, z2') + L(p2, z1')``, with ``z'`` from
    the target (no gradient). BatchNorm in the heads couples the samples of a batch, so
    distributed training should synchronise it (``needs_sync_batchnorm``).
    """

    Config = BYOLConfig
    cfg: BYOLConfig
    needs_sync_batchnorm = True

    def __init__(self, cfg: BYOLConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if not 0.0 <= cfg.momentum <= 1.0 or not 0.0 <= cfg.momentum_end <= 1.0:
            raise ValueError(
                f"method.momentum and method.momentum_end must be in [0, 1], got "
                f"{cfg.momentum} and {cfg.momentum_end}"
            )
        self.projection_head = MLP([backbone.embed_dim, cfg.proj_hidden_dim, cfg.proj_output_dim])
        self.predictor = MLP([cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim])
        self.target_backbone = frozen_copy(backbone)
        self.target_projection_head = frozen_copy(self.projection_head)
        self.criterion = NegativeCosineLoss(form=cfg.loss_form)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> online prediction (B, proj_output_dim)."""
        out: torch.Tensor = self.predictor(self.projection_head(self.backbone(x)))
        return out

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> target projection (B, proj_output_dim)."""
        out: torch.Tensor = self.target_projection_head(self.target_backbone(x))
        return out

    def momentum_at(self, progress: float) -> float:
        """Target momentum after a fraction ``progress`` of training:
        ``1 - (1 - base) (cos(pi progress) + 1) / 2`` when ``momentum_end`` is 1 (BYOL)."""
        return schedules.momentum(progress, 1.0, self.cfg.momentum, self.cfg.momentum_end)

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"BYOL takes two views per image, got {len(views)}")
        # Each view in its own pass, as in BYOL: BatchNorm statistics per view.
        p0, p1 = self(views[0]), self(views[1])
        z0, z1 = self.target(views[0]), self.target(views[1])
        loss = self.criterion(p0, z1) + self.criterion(p1, z0)
        return loss, {"loss": loss.detach()}

    def teacher_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [
            (self.backbone, self.target_backbone),
            (self.projection_head, self.target_projection_head),
        ]

    def teacher_momentum(self, info: StepInfo) -> float:
        return self.momentum_at(info.progress)

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.backbone, self.projection_head, self.predictor]

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        views = resolve_byol_blur(self.cfg.views, image_size)
        return two_views(views, image_size, mean, std, channels)
