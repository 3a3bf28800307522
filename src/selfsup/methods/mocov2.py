"""MoCo v2: momentum contrast with a queue of negatives (Chen, Fan, Girshick & He, 2020,
"Improved Baselines with Momentum Contrastive Learning"; He et al., CVPR 2020, "Momentum
Contrast for Unsupervised Visual Representation Learning")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from selfsup import schedules
from selfsup.backbones import Backbone
from selfsup.config import MethodConfig
from selfsup.heads import MLP
from selfsup.losses.infonce import InfoNCELoss
from selfsup.methods.base import Method, StepInfo
from selfsup.modules import FeatureQueue, frozen_copy
from selfsup.registry import register_method
from selfsup.transforms import MultiView, ViewsConfig, two_views


@dataclass
class MoCoV2Config(MethodConfig):
    name: str = "mocov2"
    # InfoNCE temperature (MoCo v2: 0.2; MoCo v1: 0.07). 0.1-0.3 works on CIFAR; lower
    # values need a larger queue and are less stable.
    temperature: float = 0.2
    # Number of negative keys kept (MoCo: 65536 on ImageNet). Both views' keys are queued
    # when `symmetric`, so 4096 at batch 128 holds the keys of the last 16 steps; a larger
    # queue gives more negatives but older (less consistent) keys.
    queue_size: int = 4096
    # Key-encoder EMA momentum at the start of training (MoCo: 0.999 over ~1M ImageNet
    # steps; 0.99 suits short CIFAR runs, where 0.999 makes the keys lag too far behind).
    momentum: float = 0.99
    # Momentum at the end of training, reached on a cosine schedule (BYOL-style). Equal to
    # `momentum` keeps it constant, as in MoCo; 1.0 freezes the key encoder at the end.
    momentum_end: float = 0.99
    # Projection MLP: Linear-(BN)-ReLU-Linear, as in MoCo v2 plus BN (2048 hidden for
    # ResNet-50; 2048 costs <1% of a ResNet-18 step at 32 px).
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    # BatchNorm after the hidden layer of the projection MLP (MoCo v2 has none; SimCLR and
    # MoCo v3 heads have it). Without it, the keys of a randomly initialised ResNet-18 on
    # CIFAR-10 lie in a narrow cone (mean pairwise cosine 0.90, against 0.32 with BN), so
    # at temperature 0.2 every queued key looks like the positive until the encoder has
    # spread them, which a short run does not reach: for 15 minutes on 2 CPU cores the loss
    # rose to chance level and kNN ended 0.7 points under the untrained network; with BN
    # it falls and kNN ends 1.2 points above (docs/benchmarks.md). False: the paper's head.
    proj_batch_norm: bool = True
    # Loss on both (query, key) directions, averaged (as the MoCo v3 paper and lightly do):
    # twice the signal per image for one more encoder pass. False: MoCo v2's single
    # direction (query from view 1, key from view 2), cheaper per step.
    symmetric: bool = True
    # MoCo v2 augmentation: SimCLR's jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale 0.2,
    # blur 0.5 above 64 px (automatic), crops from 20% of the image.
    views: ViewsConfig = field(default_factory=lambda: ViewsConfig(min_scale=0.2))


@register_method("mocov2")
class MoCoV2(Method):
    """MoCo v2: a query encoder (backbone + MLP) trained with InfoNCE against keys from its
    EMA copy, with negatives from a FIFO queue of past keys.

    MoCo shuffles the key encoder's batch across GPUs so that a query and its key are not
    normalised with the statistics of the same per-GPU sub-batch (a shortcut the network
    can exploit to spot its positive among queued keys of other batches). On one process
    there is nothing to shuffle across (BatchNorm statistics do not depend on the order of
    the batch), so this implementation does not shuffle; in distributed training
    ``needs_sync_batchnorm`` asks for SyncBatchNorm, the replacement later work uses (MoCo
    v3, solo-learn's MoCo v2+), so every rank normalises with global-batch statistics.

    Keys of the step are queued in :meth:`on_step_end`, after the loss used the older
    queue, so a query never meets its own positive among the negatives. The queue starts
    filled with random unit vectors, as in MoCo.
    """

    Config = MoCoV2Config
    cfg: MoCoV2Config
    needs_sync_batchnorm = True

    def __init__(self, cfg: MoCoV2Config, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if not 0.0 <= cfg.momentum <= 1.0 or not 0.0 <= cfg.momentum_end <= 1.0:
            raise ValueError(
                f"method.momentum and method.momentum_end must be in [0, 1], got "
                f"{cfg.momentum} and {cfg.momentum_end}"
            )
        self.projection_head = MLP(
            [backbone.embed_dim, cfg.proj_hidden_dim, cfg.proj_output_dim],
            batch_norm=cfg.proj_batch_norm,
        )
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projection_head = frozen_copy(self.projection_head)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_output_dim)
        # MoCo starts from random unit keys, so the first steps already have negatives.
        with torch.no_grad():
            init = F.normalize(torch.randn(cfg.queue_size, cfg.proj_output_dim), dim=1)
            self.queue.fill_(init)
        self.criterion = InfoNCELoss(temperature=cfg.temperature)
        # Keys of the current step, queued by on_step_end (not state: never checkpointed).
        self._pending_keys: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> query embedding (B, proj_output_dim), not normalised."""
        out: torch.Tensor = self.projection_head(self.backbone(x))
        return out

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> L2-normalised key embedding (B, proj_output_dim)."""
        k = self.momentum_projection_head(self.momentum_backbone(x))
        return F.normalize(k.float(), dim=1)

    def momentum_at(self, progress: float) -> float:
        """EMA momentum after a fraction ``progress`` of training (cosine schedule)."""
        return schedules.momentum(progress, 1.0, self.cfg.momentum, self.cfg.momentum_end)

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"MoCo v2 takes two views per image, got {len(views)}")
        negatives = self.queue.get()
        q0 = self(views[0])
        k1 = self.keys(views[1])
        loss = self.criterion(q0, k1, negatives)
        if self.cfg.symmetric:
            q1 = self(views[1])
            k0 = self.keys(views[0])
            loss = 0.5 * (loss + self.criterion(q1, k0, negatives))
            self._pending_keys = torch.cat([k0, k1])
        else:
            self._pending_keys = k1
        return loss, {"loss": loss.detach()}

    def chance_loss(self, batch_size: int) -> float | None:
        # The positive among queue_size negatives.
        return math.log(self.cfg.queue_size + 1)

    def teacher_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [
            (self.backbone, self.momentum_backbone),
            (self.projection_head, self.momentum_projection_head),
        ]

    def teacher_momentum(self, info: StepInfo) -> float:
        return self.momentum_at(info.progress)

    @torch.no_grad()
    def on_step_end(self, info: StepInfo) -> None:
        super().on_step_end(info)
        if self._pending_keys is not None:
            self.queue.enqueue(self._pending_keys)
            self._pending_keys = None

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.backbone, self.projection_head]

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        return two_views(self.cfg.views, image_size, mean, std, channels)
