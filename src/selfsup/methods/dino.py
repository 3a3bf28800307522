"""DINO: self-distillation with no labels (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import schedules
from selfsup.backbones import Backbone
from selfsup.backbones.vit import ViTBackbone
from selfsup.backbones.vit_tools import forward_any_size, last_block_attention
from selfsup.config import ConfigError, MethodConfig
from selfsup.heads.dino import DINOHead
from selfsup.losses.dino import DINOLoss, update_center
from selfsup.methods.base import Method, StepInfo
from selfsup.modules import forward_multi_crop, frozen_copy, vit_local_size
from selfsup.registry import register_method
from selfsup.transforms import MultiCropConfig, MultiView, multi_crop


def dino_crops() -> MultiCropConfig:
    # DINO's augmentations (Caron et al., 2021, Appendix; BYOL's family): colour jitter
    # 0.4/0.4/0.2/0.1 (strength 0.5 x ratios 0.8/0.8/0.4/0.2), grayscale 0.2, solarisation
    # on the second global crop only (0.2). Global crops cover 25-100% of the image (paper:
    # 40-100% for ViTs, 14-100% for ResNet-50), six local crops 5-25% (paper: 5-40%); blur
    # follows the image-size rule of the transforms (off at 32 px).
    return MultiCropConfig(cj_ratios=[0.8, 0.8, 0.4, 0.2], solarize_prob=[0.0, 0.2])


@dataclass
class DINOConfig(MethodConfig):
    name: str = "dino"
    # Prototypes K of the head's last layer. Paper: 65536 on ImageNet (more is better up
    # to that). 4096 is plenty for CIFAR-scale data and keeps the head cheap on a CPU.
    out_dim: int = 4096
    # Head MLP: num_layers linear layers with GELU, hidden_dim wide, to bottleneck_dim, then
    # L2 normalisation and the weight-normalised last layer (paper: 3, 2048, 256).
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    # BatchNorm in the head's hidden layers. None: on for ResNets (the paper's ResNet-50
    # setup), off for ViTs (the paper's ViT setup: BN-free heads work better there).
    use_bn: bool | None = None
    # Fix the magnitude of the last layer's weight-normalised prototypes to 1 (paper: True
    # for ViT-S, more stable; set False for larger ViTs if training is slow to start).
    norm_last_layer: bool = True
    # Student softmax temperature (paper: 0.1 everywhere).
    student_temp: float = 0.1
    # Teacher temperature after the warm-up. Lower sharpens the targets more (avoids
    # uniform collapse); a teacher temperature above 0.07 tends to be unstable. Paper: 0.04
    # (100 epochs, and the reference code's default) to 0.07 (300+ epochs, with the warm-up
    # below). 0.04 for short runs: with 0.07 a 15-minute CPU run stayed at the uniform
    # collapse (loss log(out_dim)) throughout; 0.04 gave +1 kNN point (docs/benchmarks.md).
    teacher_temp: float = 0.04
    # Teacher temperature at the start, raised linearly to teacher_temp over the first
    # warmup_teacher_temp_fraction of the budget (paper: 0.04 over 30 of 300 epochs).
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_fraction: float = 0.1
    # EMA rate of the centre subtracted from the teacher logits (paper: 0.9). Centring
    # avoids collapse onto one prototype; sharpening avoids the uniform collapse.
    center_momentum: float = 0.9
    # Teacher EMA momentum: cosine from momentum_base to momentum_end over the budget
    # (paper: 0.996 -> 1). For short runs (a few thousand steps) 0.99 lets the teacher
    # follow the student sooner (configs/dino_cifar10.yaml).
    momentum_base: float = 0.996
    momentum_end: float = 1.0
    # Fraction of the budget during which the head's last layer is frozen (its gradient
    # cancelled). Paper: the first epoch (1% of 100 epochs); it helps the start of training.
    freeze_last_layer: float = 0.01
    # Evaluate (feature_extractor, kNN monitor, pictures) with the teacher's backbone, as the
    # paper does: the EMA teacher is better than the student throughout training.
    eval_teacher: bool = True
    views: MultiCropConfig = field(default_factory=dino_crops)


def teacher_temperature(progress: float, start: float, end: float, warmup: float) -> float:
    """Teacher temperature at ``progress`` (fraction of the budget used): linear from
    ``start`` to ``end`` over the first ``warmup`` fraction, then ``end`` (DINO, Sec. 4)."""
    return schedules.linear(progress, warmup, start, end)


def check_teacher_temps(cfg: DINOConfig) -> None:
    """Validate the temperature and schedule fields shared by DINO and DINOv2."""
    for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"method.{key} must be positive, got {getattr(cfg, key)}.")
    for key in ("warmup_teacher_temp_fraction", "freeze_last_layer", "center_momentum"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(f"method.{key} must be in [0, 1], got {getattr(cfg, key)}.")
    if not 0.0 <= cfg.momentum_base <= cfg.momentum_end <= 1.0:
        raise ConfigError(
            f"method.momentum_base ({cfg.momentum_base}) and method.momentum_end "
            f"({cfg.momentum_end}) must satisfy 0 <= base <= end <= 1."
        )
    if cfg.views.global_crops < 1 or cfg.views.global_crops + cfg.views.local_crops < 2:
        raise ConfigError(
            "the teacher sees the global crops and the student predicts them from other "
            "crops: method.views needs global_crops >= 1 and global_crops + local_crops >= 2."
        )


# ----------------------------------------------------------------------------- pictures


def attention_overlay(images: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend a heat map (B, h, w) over images (B, C, H, W) in their normalised space.

    The heat map is rescaled to [0, 1] per image and coloured black-red-yellow-white (grey
    for C != 3). A method does not know the normalisation, so the batch's per-channel
    extremes stand in for black and white.
    """
    b, c, h, w = images.shape
    x = images.float()
    m = F.interpolate(heat.float().unsqueeze(1), size=(h, w), mode="nearest")
    lo = m.amin(dim=(2, 3), keepdim=True)
    hi = m.amax(dim=(2, 3), keepdim=True)
    m = (m - lo) / (hi - lo).clamp_min(1e-12)
    if c == 3:
        colour = torch.cat(
            [(3 * m).clamp(0, 1), (3 * m - 1).clamp(0, 1), (3 * m - 2).clamp(0, 1)], 1
        )
    else:
        colour = m.expand(b, c, h, w)
    black = x.amin(dim=(0, 2, 3), keepdim=True)
    white = x.amax(dim=(0, 2, 3), keepdim=True)
    return (1 - alpha) * x + alpha * (black + colour * (white - black))


# ----------------------------------------------------------------------------- method


@register_method("dino")
class DINO(Method):
    """DINO: self-distillation of an EMA teacher into a student across multi-crop views.

    The student (backbone + DINO head) predicts, from every crop, the teacher's output on
    the other global crops; the teacher's outputs are centred and sharpened so that neither
    one prototype nor the uniform distribution wins (no negatives, no predictor). Works with
    ResNets (the representation is the pooled feature) and ViTs (the class token).

    The centre is updated in :meth:`on_step_end` from this step's teacher logits (kept in a
    plain, non-persistent attribute), so a step skipped for a non-finite loss leaves it
    unchanged.
    """

    Config = DINOConfig
    cfg: DINOConfig
    # The reference converts BatchNorm (ResNet backbones, use_bn heads) to SyncBatchNorm.
    needs_sync_batchnorm = True
    center: torch.Tensor

    def __init__(self, cfg: DINOConfig, backbone: Backbone) -> None:
        check_teacher_temps(cfg)
        super().__init__(cfg, backbone)
        use_bn = cfg.use_bn if cfg.use_bn is not None else not isinstance(backbone, ViTBackbone)
        self.head = DINOHead(
            backbone.embed_dim,
            out_dim=cfg.out_dim,
            hidden_dim=cfg.hidden_dim,
            bottleneck_dim=cfg.bottleneck_dim,
            num_layers=cfg.head_layers,
            use_bn=use_bn,
            norm_last_layer=cfg.norm_last_layer,
        )
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)
        self.criterion = DINOLoss(cfg.student_temp)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self._teacher_logits: torch.Tensor | None = None

    def teacher_temp(self, progress: float) -> float:
        c = self.cfg
        return teacher_temperature(
            progress, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_fraction
        )

    def momentum(self, progress: float) -> float:
        return schedules.momentum(progress, 1.0, self.cfg.momentum_base, self.cfg.momentum_end)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> student logits (B, out_dim)."""
        out: torch.Tensor = self.head(forward_any_size(self.backbone, x))
        return out

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g = self.cfg.views.global_crops
        if len(views) < max(2, g):
            raise ValueError(
                f"DINO takes {g} global crops (then any local crops), got {len(views)} views"
            )
        b = views[0].shape[0]
        temp = self.teacher_temp(info.progress)
        with torch.no_grad():
            t = self.teacher_head(self.teacher_backbone(torch.cat(list(views[:g]))))
        # The head sees every crop in one batch (its BatchNorm, if any, too), as the paper.
        s = self.head(forward_multi_crop(partial(forward_any_size, self.backbone), views))
        loss = self.criterion(torch.split(s, b), torch.split(t, b), self.center, temp)
        self._teacher_logits = t.detach()
        return loss, {"loss": loss.detach(), "teacher_temp": torch.tensor(temp)}

    def chance_loss(self, batch_size: int) -> float | None:
        # Uniform student outputs (the "uniform" collapse: centring beats sharpening) give
        # exactly log(out_dim), whatever the teacher says.
        return math.log(self.cfg.out_dim)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.head]

    def on_after_backward(self, info: StepInfo) -> None:
        # Zeroed rather than removed so the optimiser keeps its state layout: the weight
        # decay it still applies to the direction parameter only rescales it, which weight
        # normalisation cancels, so the prototypes stay frozen.
        if info.progress < self.cfg.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                if p.grad is not None:
                    p.grad.zero_()

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def teacher_momentum(self, info: StepInfo) -> float:
        return self.momentum(info.progress)

    @torch.no_grad()
    def on_step_end(self, info: StepInfo) -> None:
        super().on_step_end(info)
        if self._teacher_logits is not None:
            update_center(self.center, self._teacher_logits, self.cfg.center_momentum)
            self._teacher_logits = None

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        crops = vit_local_size(self.cfg.views, image_size, self.backbone)
        return multi_crop(crops, image_size, mean, std, channels)

    def feature_extractor(self) -> nn.Module:
        return self.teacher_backbone if self.cfg.eval_teacher else self.backbone

    @torch.no_grad()
    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """ViT backbones: ``attention`` (2B, C, H, W), the images then the class token's
        last-block self-attention overlaid on them. Other backbones: nothing."""
        bb = self.feature_extractor()
        if not isinstance(bb, ViTBackbone):
            return {}
        heat = last_block_attention(bb, images)
        return {"attention": torch.cat([images.float(), attention_overlay(images, heat)])}
