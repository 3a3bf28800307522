"""SimSiam: simple Siamese representation learning (Chen & He, CVPR 2021, "Exploring
Simple Siamese Representation Learning")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from selfsup.backbones import Backbone
from selfsup.config import MethodConfig
from selfsup.heads import MLP
from selfsup.losses.negative_cosine import NegativeCosineLoss
from selfsup.methods.base import Method, StepInfo
from selfsup.registry import register_method
from selfsup.transforms import MultiView, ViewsConfig, two_views


@dataclass
class SimSiamConfig(MethodConfig):
    name: str = "simsiam"
    # Projector: Linear-BN-ReLU hidden layers, then Linear-BN (no affine) on the output.
    # SimSiam uses 3 layers on ImageNet and 2 on CIFAR (Appendix D), 2048 wide.
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    proj_layers: int = 2
    # Predictor bottleneck (Linear-BN-ReLU, Linear). SimSiam: out / 4 = 512; a bottleneck
    # much wider than the output tends to collapse or train slower.
    pred_hidden_dim: int = 512
    # SimSiam uses the MoCo v2 augmentation: crops from 20% of the image, SimCLR's jitter
    # (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale 0.2, blur above 64 px (automatic).
    views: ViewsConfig = field(default_factory=lambda: ViewsConfig(min_scale=0.2))


@register_method("simsiam")
class SimSiam(Method):
    """SimSiam: one encoder ``f`` (backbone + projector) and a predictor ``h``; each view's
    prediction is pulled towards the other view's projection, which is treated as a
    constant (stop-gradient, the ingredient that prevents collapse):

        L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2,   D = negative cosine

    No negatives and no momentum encoder. BatchNorm in the heads couples the samples of a
    batch, so distributed training should synchronise it (``needs_sync_batchnorm``).
    """

    Config = SimSiamConfig
    cfg: SimSiamConfig
    needs_sync_batchnorm = True

    def __init__(self, cfg: SimSiamConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if cfg.proj_layers < 1:
            raise ValueError(f"method.proj_layers must be at least 1, got {cfg.proj_layers}")
        dims = [backbone.embed_dim] + [cfg.proj_hidden_dim] * (cfg.proj_layers - 1)
        self.projection_head = MLP([*dims, cfg.proj_output_dim], last_bn=True)
        self.predictor = MLP([cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim])
        self.criterion = NegativeCosineLoss(form="cosine", stop_gradient=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> projection ``z`` and prediction ``p``, each (B, proj_output_dim)."""
        z: torch.Tensor = self.projection_head(self.backbone(x))
        p: torch.Tensor = self.predictor(z)
        return z, p

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"SimSiam takes two views per image, got {len(views)}")
        z0, p0 = self(views[0])
        z1, p1 = self(views[1])
        # The criterion detaches its target: stopgrad(z).
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        # Per-dimension std of the normalised output; ~1/sqrt(d) when healthy, 0 when
        # collapsed (SimSiam, Fig. 2).
        z_std = torch.nn.functional.normalize(z0.detach().float(), dim=1).std(dim=0).mean()
        return loss, {"loss": loss.detach(), "z_std": z_std}

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        return two_views(self.cfg.views, image_size, mean, std, channels)
