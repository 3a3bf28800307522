"""MoCo v3: momentum contrast without a queue, for ResNets and Vision Transformers (Chen,
Xie & He, ICCV 2021, "An Empirical Study of Training Self-Supervised Vision Transformers")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from selfsup import schedules
from selfsup.backbones import Backbone
from selfsup.backbones.vit import ViTBackbone
from selfsup.config import MethodConfig
from selfsup.heads import MLP
from selfsup.losses.infonce import InfoNCELoss
from selfsup.methods.base import Method, StepInfo
from selfsup.modules import frozen_copy
from selfsup.registry import register_method
from selfsup.transforms import MultiView, ViewsConfig, byol_views, resolve_byol_blur, two_views


@dataclass
class MoCoV3Config(MethodConfig):
    name: str = "mocov3"
    # InfoNCE temperature. MoCo v3: 0.2 for ViTs, 1.0 for ResNet-50 on ImageNet. 0.2 is
    # the common choice for ResNet-18 on CIFAR (solo-learn) and for ViTs; the 2t loss
    # scale keeps the gradient size similar across temperatures.
    temperature: float = 0.2
    # Projector: 3 layers (Linear-BN-ReLU x2, Linear-BN without affine); predictor: 2
    # layers (Linear-BN-ReLU, Linear). MoCo v3: 4096 hidden, 256 out for both.
    proj_hidden_dim: int = 4096
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    # Momentum-encoder EMA at the start, raised to `momentum_end` on a cosine schedule
    # (MoCo v3: 0.99 -> 1 for ViT-B and 100-epoch ResNets; 0.996 for longer ones).
    momentum: float = 0.99
    momentum_end: float = 1.0
    # ViTs only: keep the random patch projection fixed (MoCo v3, Sec. 4.2: avoids the
    # training instability, the sudden accuracy dips, of ViTs with large learning rates).
    freeze_patch_embed: bool = False
    # BYOL's asymmetric augmentation, as in MoCo v3 (blur 1.0 / 0.1 above 64 px, none on
    # CIFAR-sized images; solarisation 0 / 0.2).
    views: ViewsConfig = field(default_factory=byol_views)


@register_method("mocov3")
class MoCoV3(Method):
    """MoCo v3: a query encoder (backbone, projector, predictor) and a momentum encoder
    (EMA of backbone and projector). Each query is contrasted with the momentum keys of the
    same batch (gathered from every rank, without gradient):

        ctr(q, k) = 2t * CrossEntropy(q @ k_all.T / t, own index)
        loss = ctr(q1, k2) + ctr(q2, k1)

    The 2t factor is the paper's (Algorithm 1): it makes the gradient scale less sensitive
    to the temperature. Works with ResNet and ViT backbones; with a ResNet the Trainer
    should synchronise BatchNorm in distributed training (``needs_sync_batchnorm``), as the
    paper does.
    """

    Config = MoCoV3Config
    cfg: MoCoV3Config
    needs_sync_batchnorm = True

    def __init__(self, cfg: MoCoV3Config, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if not 0.0 <= cfg.momentum <= 1.0 or not 0.0 <= cfg.momentum_end <= 1.0:
            raise ValueError(
                f"method.momentum and method.momentum_end must be in [0, 1], got "
                f"{cfg.momentum} and {cfg.momentum_end}"
            )
        if cfg.freeze_patch_embed:
            if not isinstance(backbone, ViTBackbone):
                raise ValueError(
                    "method.freeze_patch_embed=true needs a ViT backbone (e.g. "
                    f"timm:vit_small_patch16_224); {backbone.name} has no patch embedding."
                )
            # Frozen for good: not in the optimiser, and the EMA keeps the copy equal.
            for p in backbone.net.get_submodule("patch_embed").parameters():
                p.requires_grad_(False)
        h, d = cfg.proj_hidden_dim, cfg.proj_output_dim
        self.projection_head = MLP([backbone.embed_dim, h, h, d], last_bn=True)
        self.predictor = MLP([d, cfg.pred_hidden_dim, d])
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projection_head = frozen_copy(self.projection_head)
        self.criterion = InfoNCELoss(temperature=cfg.temperature, gather_distributed=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> query (B, proj_output_dim), before normalisation."""
        out: torch.Tensor = self.predictor(self.projection_head(self.backbone(x)))
        return out

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> momentum key (B, proj_output_dim), before normalisation."""
        out: torch.Tensor = self.momentum_projection_head(self.momentum_backbone(x))
        return out

    def momentum_at(self, progress: float) -> float:
        """EMA momentum after a fraction ``progress`` of training (cosine schedule)."""
        return schedules.momentum(progress, 1.0, self.cfg.momentum, self.cfg.momentum_end)

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """MoCo v3's ``ctr(q, k)``: in-batch InfoNCE scaled by ``2 t``."""
        loss: torch.Tensor = self.criterion(q, k)
        return 2.0 * self.cfg.temperature * loss

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"MoCo v3 takes two views per image, got {len(views)}")
        q0, q1 = self(views[0]), self(views[1])
        k0, k1 = self.keys(views[0]), self.keys(views[1])
        loss = self.contrastive_loss(q0, k1) + self.contrastive_loss(q1, k0)
        return loss, {"loss": loss.detach()}

    def chance_loss(self, batch_size: int) -> float | None:
        # Two directions of 2t-scaled InfoNCE over batch_size keys.
        return 2 * 2.0 * self.cfg.temperature * math.log(batch_size)

    def teacher_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [
            (self.backbone, self.momentum_backbone),
            (self.projection_head, self.momentum_projection_head),
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
