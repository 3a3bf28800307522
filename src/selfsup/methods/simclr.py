"""SimCLR: contrastive learning of visual representations (Chen et al., ICML 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from selfsup.backbones import Backbone
from selfsup.config import MethodConfig
from selfsup.heads import SimCLRProjectionHead
from selfsup.losses import NTXentLoss
from selfsup.methods.base import Method, StepInfo
from selfsup.registry import register_method
from selfsup.transforms import MultiView, ViewsConfig, two_views


@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    # NT-Xent temperature: 0.5 suits CIFAR-sized data, 0.1-0.2 ImageNet with large batches.
    temperature: float = 0.5
    # Projection head sizes (SimCLR: 2048 hidden on ImageNet; 512 is plenty for ResNet-18).
    proj_hidden_dim: int = 512
    proj_output_dim: int = 128
    # Two layers in SimCLR v1; SimCLR v2 uses three.
    proj_layers: int = 2
    # Clips only (a video backbone): each first view's still clip (its middle frame
    # repeated: the video's appearance without its motion) is one more negative for every
    # anchor, so that appearance alone cannot find the positive and the features must
    # encode motion (the scene-motion decoupling of DSM, Wang et al., AAAI 2021). Costs one
    # more forward pass of half the batch.
    still_negatives: bool = False
    views: ViewsConfig = field(default_factory=ViewsConfig)


@register_method("simclr")
class SimCLR(Method):
    """SimCLR: two augmented views per image, a projection head, and NT-Xent across the
    batch (negatives from every rank in distributed training)."""

    Config = SimCLRConfig
    cfg: SimCLRConfig
    # SimCLR's "global BN" (Appendix B.2): statistics over the whole distributed batch, so
    # the network cannot use per-device statistics to find positives.
    needs_sync_batchnorm = True

    def __init__(self, cfg: SimCLRConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.projection_head = SimCLRProjectionHead(
            backbone.embed_dim, cfg.proj_hidden_dim, cfg.proj_output_dim, cfg.proj_layers
        )
        self.criterion = NTXentLoss(temperature=cfg.temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> projected embedding (B, proj_output_dim)."""
        out: torch.Tensor = self.projection_head(self.backbone(x))
        return out

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"SimCLR takes two views per image, got {len(views)}")
        b = views[0].shape[0]
        # One forward pass over both views: BatchNorm sees the whole 2B batch, as in SimCLR.
        still = None
        if self.cfg.still_negatives:
            if views[0].ndim != 5:
                raise ValueError(
                    "method.still_negatives needs clips (a video backbone such as "
                    f"video_resnet18), got views of shape {tuple(views[0].shape)}"
                )
            t = views[0].shape[2]
            still = views[0][:, :, t // 2 : t // 2 + 1].expand_as(views[0])
        z = self(torch.cat([views[0], views[1]] + ([still] if still is not None else [])))
        z0, z1 = z[:b], z[b : 2 * b]
        loss = self.criterion(z0, z1, z[2 * b :] if still is not None else None)
        return loss, {"loss": loss.detach()}

    def chance_loss(self, batch_size: int) -> float | None:
        return math.log((3 if self.cfg.still_negatives else 2) * batch_size - 1)

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        return two_views(self.cfg.views, image_size, mean, std, channels)
