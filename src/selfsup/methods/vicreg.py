"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce and LeCun, ICLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from selfsup.backbones import Backbone
from selfsup.config import MethodConfig
from selfsup.heads import MLP
from selfsup.losses.vicreg import VICRegLoss
from selfsup.methods.base import Method, StepInfo
from selfsup.registry import register_method
from selfsup.transforms import MultiView, ViewsConfig, two_views


def _byol_views() -> ViewsConfig:
    # VICReg uses BYOL's augmentations (Bardes et al., Appendix C.1): jitter 0.4 / 0.4 /
    # 0.2 / 0.1 and solarisation on the second view only.
    return ViewsConfig(cj_strength=0.5, cj_ratios=[0.8, 0.8, 0.4, 0.2], solarize_prob=[0.0, 0.2])


@dataclass
class VICRegConfig(MethodConfig):
    name: str = "vicreg"
    # Loss weights lambda (invariance), mu (variance), nu (covariance). Paper: 25 / 25 / 1,
    # found best with lambda = mu; lowering mu risks collapse, raising nu rarely helps.
    inv_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    # Added to the variance before the square root in the variance hinge (paper: 1e-4).
    eps: float = 1e-4
    # Expander: expander_layers linear layers (BN + ReLU between them), plain linear output.
    # Paper: 8192-8192-8192 on ImageNet; 2048 wide suits ResNet-18 on CIFAR (solo-learn).
    # Like Barlow Twins, VICReg gains from wider expanders (paper, expander ablation) at a CPU cost.
    expander_hidden_dim: int = 2048
    expander_output_dim: int = 2048
    expander_layers: int = 3
    views: ViewsConfig = field(default_factory=_byol_views)


@register_method("vicreg")
class VICReg(Method):
    """VICReg: two views and an expander; the loss keeps the embeddings of the two views
    close (invariance) while every dimension keeps a standard deviation of at least 1
    (variance) and dimensions stay decorrelated (covariance)."""

    Config = VICRegConfig
    cfg: VICRegConfig
    # Variance and covariance are batch statistics, and the expander has BatchNorm.
    needs_sync_batchnorm = True

    def __init__(self, cfg: VICRegConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if cfg.expander_layers < 1:
            raise ValueError(
                f"method.expander_layers must be at least 1, got {cfg.expander_layers}"
            )
        dims = [backbone.embed_dim] + [cfg.expander_hidden_dim] * (cfg.expander_layers - 1)
        # The paper's expander has no bias on its last layer (hidden layers feed BatchNorm).
        self.expander = MLP([*dims, cfg.expander_output_dim], batch_norm=True, bias=False)
        self.criterion = VICRegLoss(cfg.inv_weight, cfg.var_weight, cfg.cov_weight, cfg.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> expanded embedding (B, expander_output_dim)."""
        out: torch.Tensor = self.expander(self.backbone(x))
        return out

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"VICReg takes two views per image, got {len(views)}")
        # Separate passes, as in the paper: each branch's BatchNorm sees its own view.
        z0, z1 = self(views[0]), self(views[1])
        terms = self.criterion.terms(z0, z1)
        loss = self.criterion.combine(terms)
        logs = {
            "loss": loss.detach(),
            "invariance": terms.invariance.detach(),
            "variance": terms.variance.detach(),
            "covariance": terms.covariance.detach(),
        }
        return loss, logs

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        return two_views(self.cfg.views, image_size, mean, std, channels)
