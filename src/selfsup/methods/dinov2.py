"""DINOv2-style pretraining: DINO's image-level loss + iBOT's masked-patch loss + the KoLeo
regulariser (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
TMLR 2024; Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import torch
from torch import nn

from selfsup import schedules
from selfsup.backbones import Backbone
from selfsup.backbones.vit import ViTBackbone
from selfsup.backbones.vit_tools import forward_any_size, last_block_attention
from selfsup.config import ConfigError
from selfsup.heads.dino import DINOHead
from selfsup.losses.dino import DINOLoss, update_center
from selfsup.losses.ibot import IBOTPatchLoss
from selfsup.losses.koleo import KoLeoLoss
from selfsup.methods.base import Method, StepInfo
from selfsup.methods.dino import (
    DINOConfig,
    attention_overlay,
    check_teacher_temps,
    teacher_temperature,
)
from selfsup.modules import block_mask, forward_multi_crop, frozen_copy, vit_local_size
from selfsup.registry import register_method
from selfsup.transforms import MultiView, multi_crop


@dataclass
class DINOv2Config(DINOConfig):
    """DINO's fields (heads, temperatures, centring, teacher momentum, multi-crop) plus
    iBOT's and KoLeo's. The teacher temperature schedule applies to both the class-token and
    the patch targets, as in DINOv2."""

    name: str = "dinov2"
    # DINOv2 warms the teacher temperature up to 0.07 (measured here with it).
    teacher_temp: float = 0.07
    # iBOT head on the patch tokens: its own weights (DINOv2: untying the two heads helps at
    # every scale, Sec. 4) or the DINO head's (iBOT's choice: False).
    ibot_separate_head: bool = True
    # Prototypes, hidden width and bottleneck of a separate iBOT head (paper: 65536, 2048,
    # 256). With a shared head the DINO head's sizes apply.
    ibot_out_dim: int = 4096
    ibot_hidden_dim: int = 2048
    ibot_bottleneck_dim: int = 256
    # Fraction of patches hidden in a masked image, drawn uniformly from this range (paper:
    # 0.1-0.5), as rectangular blocks (BEiT-style).
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    # Fraction of the global crops that are masked (paper: 0.5); the others train the DINO
    # term only. Exactly round(mask_prob * crops) crops of each batch are masked, as in the
    # reference code.
    mask_prob: float = 0.5
    # Loss weights: total = dino_weight * DINO + ibot_weight * iBOT + koleo_weight * KoLeo
    # (paper: 1, 1, 0.1). KoLeo spreads the class tokens within a batch; above ~0.1 it
    # competes with the DINO term.
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1


class MaskToken(nn.Module):
    """The learnable embedding (D,) put in place of hidden patches (zero-initialised, as in
    DINOv2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))


def masks_for_batch(
    n: int,
    grid: tuple[int, int],
    ratio_range: tuple[float, float],
    mask_prob: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(n, H*W) bool block masks on exactly ``round(mask_prob * n)`` of the ``n`` images (at
    least one when ``mask_prob > 0``), chosen at random; the others have none."""
    k = round(mask_prob * n)
    if mask_prob > 0:
        k = min(n, max(1, k))
    masks = torch.zeros(n, grid[0] * grid[1], dtype=torch.bool)
    if k > 0:
        chosen = torch.randperm(n, generator=generator)[:k]
        masks[chosen] = block_mask(k, grid, ratio_range, mask_prob=1.0, generator=generator)
    return masks


@register_method("dinov2")
class DINOv2(Method):
    """DINOv2-style: DINO on the class token + iBOT on masked patches + KoLeo (ViT only).

    - DINO term: the student's class tokens of all crops (global crops masked, local crops
      whole) through the DINO head predict the EMA teacher's centred, sharpened outputs of
      the other (unmasked) global crops.
    - iBOT term: at the hidden patches of the masked global crops, the student's patch tokens
      through the iBOT head predict the teacher's patch outputs of the same crop (its own
      centre). Local crops do not take part.
    - KoLeo: on the L2-normalised student class tokens of each global crop, summed over the
      global crops as in the reference code.

    Both centres are updated in :meth:`on_step_end` from this step's teacher outputs.
    """

    Config = DINOv2Config
    cfg: DINOv2Config
    backbone: ViTBackbone
    needs_vit = True
    center: torch.Tensor
    patch_center: torch.Tensor

    def __init__(self, cfg: DINOv2Config, backbone: Backbone) -> None:
        if not isinstance(backbone, ViTBackbone):
            raise ConfigError(
                f"dinov2 needs a Vision Transformer backbone, got {backbone.name!r}. Use e.g. "
                "backbone.name=timm:vit_tiny_patch16_224 with backbone.kwargs={patch_size: 4} "
                "for 32 px images (or method dino for ResNets)."
            )
        check_teacher_temps(cfg)
        if len(cfg.mask_ratio) != 2 or not 0.0 <= cfg.mask_ratio[0] <= cfg.mask_ratio[1] < 1.0:
            raise ConfigError(
                f"method.mask_ratio must be [low, high] with 0 <= low <= high < 1, got "
                f"{list(cfg.mask_ratio)}."
            )
        if not 0.0 <= cfg.mask_prob <= 1.0:
            raise ConfigError(f"method.mask_prob must be in [0, 1], got {cfg.mask_prob}.")
        for key in ("dino_weight", "ibot_weight", "koleo_weight"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"method.{key} must be non-negative, got {getattr(cfg, key)}.")
        super().__init__(cfg, backbone)
        use_bn = bool(cfg.use_bn)  # None: off, the ViT setting
        d = backbone.embed_dim
        self.dino_head = DINOHead(
            d, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.head_layers, use_bn,
            cfg.norm_last_layer,
        )  # fmt: skip
        self.ibot_head = self.dino_head
        if cfg.ibot_separate_head:
            self.ibot_head = DINOHead(
                d, cfg.ibot_out_dim, cfg.ibot_hidden_dim, cfg.ibot_bottleneck_dim,
                cfg.head_layers, use_bn, cfg.norm_last_layer,
            )  # fmt: skip
        self.mask_token = MaskToken(d)
        self.teacher_backbone = cast(ViTBackbone, frozen_copy(self.backbone))
        self.teacher_dino_head = cast(DINOHead, frozen_copy(self.dino_head))
        self.teacher_ibot_head = self.teacher_dino_head
        if cfg.ibot_separate_head:
            self.teacher_ibot_head = cast(DINOHead, frozen_copy(self.ibot_head))
        self.dino_loss = DINOLoss(cfg.student_temp)
        self.ibot_loss = IBOTPatchLoss(cfg.student_temp)
        self.koleo_loss = KoLeoLoss()
        patch_dim = cfg.ibot_out_dim if cfg.ibot_separate_head else cfg.out_dim
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, patch_dim))
        self._teacher_cls: torch.Tensor | None = None
        self._teacher_patches: torch.Tensor | None = None

    def teacher_temp(self, progress: float) -> float:
        c = self.cfg
        return teacher_temperature(
            progress, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_fraction
        )

    def momentum(self, progress: float) -> float:
        return schedules.momentum(progress, 1.0, self.cfg.momentum_base, self.cfg.momentum_end)

    def _heads(self) -> list[DINOHead]:
        return [self.dino_head, self.ibot_head] if self.cfg.ibot_separate_head else [self.dino_head]

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, bb = self.cfg, self.backbone
        g = cfg.views.global_crops
        if len(views) < max(2, g):
            raise ValueError(
                f"DINOv2 takes {g} global crops (then any local crops), got {len(views)} views"
            )
        b = views[0].shape[0]
        p = bb.num_prefix_tokens
        x = torch.cat(list(views[:g]))  # (gB, C, H, W)
        lo, hi = cfg.mask_ratio
        mask = masks_for_batch(g * b, bb.grid_size, (lo, hi), cfg.mask_prob).to(x.device)
        temp = self.teacher_temp(info.progress)

        with torch.no_grad():
            t_tokens = self.teacher_backbone.forward_tokens(x)  # (gB, P + N, D)
            t_cls = self.teacher_dino_head(bb.pool(t_tokens))
            t_patches = self.teacher_ibot_head(t_tokens[:, p:][mask])  # (M, K')

        s_tokens = bb.forward_tokens(x, mask=mask, mask_token=self.mask_token.weight)
        s_cls_global = bb.pool(s_tokens)  # (gB, D)
        s_cls = s_cls_global
        if len(views) > g:
            local = forward_multi_crop(partial(forward_any_size, bb), views[g:])
            s_cls = torch.cat([s_cls_global, local])
        s_dino = self.dino_head(s_cls)
        s_patches = self.ibot_head(s_tokens[:, p:][mask])  # (M, K')

        dino = self.dino_loss(torch.split(s_dino, b), torch.split(t_cls, b), self.center, temp)
        ibot = self.ibot_loss(s_patches, t_patches, mask, self.patch_center, temp)
        koleo = torch.stack([self.koleo_loss(c) for c in torch.split(s_cls_global, b)]).sum()
        loss = cfg.dino_weight * dino + cfg.ibot_weight * ibot + cfg.koleo_weight * koleo
        self._teacher_cls = t_cls.detach()
        self._teacher_patches = t_patches.detach()
        logs = {
            "loss": loss.detach(),
            "dino_loss": dino.detach(),
            "ibot_loss": ibot.detach(),
            "koleo_loss": koleo.detach(),
            "teacher_temp": torch.tensor(temp),
            "masked_patches": mask.float().mean().detach(),
        }
        return loss, logs

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, *self._heads(), self.mask_token]

    def on_after_backward(self, info: StepInfo) -> None:
        # As in DINO: zeroed, not removed; weight decay then only rescales the direction
        # parameter, which weight normalisation cancels.
        if info.progress < self.cfg.freeze_last_layer:
            for head in self._heads():
                for q in head.last_layer.parameters():
                    if q.grad is not None:
                        q.grad.zero_()

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs: list[tuple[nn.Module, nn.Module]] = [
            (self.backbone, self.teacher_backbone),
            (self.dino_head, self.teacher_dino_head),
        ]
        if self.cfg.ibot_separate_head:  # a shared head is updated once, with the DINO head
            pairs.append((self.ibot_head, self.teacher_ibot_head))
        return pairs

    def teacher_momentum(self, info: StepInfo) -> float:
        return self.momentum(info.progress)

    @torch.no_grad()
    def on_step_end(self, info: StepInfo) -> None:
        super().on_step_end(info)
        if self._teacher_cls is not None:
            update_center(self.center, self._teacher_cls, self.cfg.center_momentum)
        # Called even with no hidden patch here: the centre is a mean over all ranks.
        if self._teacher_patches is not None:
            update_center(self.patch_center, self._teacher_patches, self.cfg.center_momentum)
        self._teacher_cls = self._teacher_patches = None

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        crops = vit_local_size(self.cfg.views, image_size, self.backbone)
        return multi_crop(crops, image_size, mean, std, channels)

    def feature_extractor(self) -> nn.Module:
        return self.teacher_backbone if self.cfg.eval_teacher else self.backbone

    @torch.no_grad()
    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``attention`` (2B, C, H, W): the images, then the class token's last-block
        self-attention (of the evaluated backbone) overlaid on them."""
        bb = self.feature_extractor()
        assert isinstance(bb, ViTBackbone)
        heat = last_block_attention(bb, images)
        return {"attention": torch.cat([images.float(), attention_overlay(images, heat)])}
