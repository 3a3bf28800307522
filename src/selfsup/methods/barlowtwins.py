"""Barlow Twins: redundancy reduction (Zbontar et al., ICML 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from selfsup.backbones import Backbone
from selfsup.config import MethodConfig
from selfsup.heads import MLP
from selfsup.losses.barlow_twins import BarlowTwinsLoss
from selfsup.methods.base import Method, StepInfo
from selfsup.registry import register_method
from selfsup.transforms import MultiView, ViewsConfig, two_views


def _byol_views() -> ViewsConfig:
    # Barlow Twins and VICReg use BYOL's augmentations (Zbontar et al., Appendix; Bardes et
    # al., Appendix C.1): jitter 0.4 / 0.4 / 0.2 / 0.1 and solarisation on the second view.
    return ViewsConfig(cj_strength=0.5, cj_ratios=[0.8, 0.8, 0.4, 0.2], solarize_prob=[0.0, 0.2])


@dataclass
class BarlowTwinsConfig(MethodConfig):
    name: str = "barlowtwins"
    # Weight of the off-diagonal (redundancy) term. Paper: 0.0051 for an 8192-d projector,
    # with results insensitive to it over a wide range; 0.0051 also suits 2048-d outputs
    # (solo-learn's CIFAR recipe). Raise it to decorrelate harder, at the cost of invariance.
    lambda_offdiag: float = 0.0051
    # Factor on the whole loss. 1.0 is the paper; solo-learn uses 0.1 on CIFAR with LARS.
    # Under SGD it acts like a learning-rate factor: lower it if the loss diverges.
    scale_loss: float = 1.0
    # Projector: proj_layers linear layers (BN + ReLU between them), output without BN.
    # Paper: 8192-8192-8192 on ImageNet; 2048 wide suits ResNet-18 on CIFAR (solo-learn).
    # Wider projectors help Barlow Twins markedly (paper, projector ablation) but cost CPU time.
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    proj_layers: int = 3
    views: ViewsConfig = field(default_factory=_byol_views)


@register_method("barlowtwins")
class BarlowTwins(Method):
    """Barlow Twins: two views, a wide projector, and a loss that drives the views'
    cross-correlation matrix to the identity (computed over the global batch)."""

    Config = BarlowTwinsConfig
    cfg: BarlowTwinsConfig
    # The loss standardises each dimension over the batch and the projector has BatchNorm:
    # both must see the global batch.
    needs_sync_batchnorm = True

    def __init__(self, cfg: BarlowTwinsConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if cfg.proj_layers < 1:
            raise ValueError(f"method.proj_layers must be at least 1, got {cfg.proj_layers}")
        dims = [backbone.embed_dim] + [cfg.proj_hidden_dim] * (cfg.proj_layers - 1)
        # No biases: hidden layers feed BatchNorm and the output is standardised by the loss.
        self.projection_head = MLP([*dims, cfg.proj_output_dim], batch_norm=True, bias=False)
        self.criterion = BarlowTwinsLoss(cfg.lambda_offdiag, cfg.scale_loss)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> projected embedding (B, proj_output_dim)."""
        out: torch.Tensor = self.projection_head(self.backbone(x))
        return out

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"Barlow Twins takes two views per image, got {len(views)}")
        # Separate passes: each view's BatchNorm statistics stay its own, as in the paper.
        z0, z1 = self(views[0]), self(views[1])
        terms = self.criterion.terms(z0, z1)
        loss = self.criterion.combine(terms)
        logs = {
            "loss": loss.detach(),
            "on_diag": terms.on_diagonal.detach(),
            "off_diag": terms.off_diagonal.detach(),
        }
        return loss, logs

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        return two_views(self.cfg.views, image_size, mean, std, channels)
