"""Distillation of a frozen self-supervised teacher into a (smaller) student by feature
regression: SimReg (Navaneet et al., BMVC 2021, "SimReg: Regression as a Simple Yet
Effective Tool for Self-supervised Knowledge Distillation"), plus patch-token regression
for teachers with dense features (ViTs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import Backbone
from selfsup.backbones.dense import is_torchvision_resnet
from selfsup.config import BackboneConfig, ConfigError, MethodConfig
from selfsup.heads import MLP
from selfsup.losses.distill import FeatureDistillLoss
from selfsup.methods.base import Method, StepInfo
from selfsup.registry import register_method
from selfsup.transforms import MultiView, ViewsConfig
from selfsup.transforms.views import view_spec, views_from_specs


def _distill_views() -> ViewsConfig:
    # Milder crops than the pretext tasks' 0.08: the student imitates the teacher on the
    # view, it does not have to learn invariance to it, and the teacher's features on tiny
    # crops are themselves poor.
    return ViewsConfig(min_scale=0.2)


@dataclass
class DistillConfig(MethodConfig):
    name: str = "distill"
    # The teacher: a selfsup run folder, checkpoint file or hf export folder (its trained
    # backbone, the one the run evaluates with). Frozen: never updated, always in eval mode.
    teacher: str | None = None
    # "teacher" / "student" for teacher runs of methods with an EMA teacher (default: the
    # backbone that run evaluates with).
    teacher_which: str | None = None
    # Or a backbone by name with optional local weights (e.g. a timm model and its
    # state-dict file), when the teacher is not a selfsup run. It then sees the student's
    # normalisation and image size.
    teacher_backbone: BackboneConfig | None = None
    # Prediction head from the student's features to the teacher's: head_layers linear
    # layers (BN + ReLU between them). SimReg found a deeper MLP head distils better than a
    # linear one, and the student's backbone features (before the head) transfer best.
    head_layers: int = 2
    head_hidden_dim: int = 2048
    # Weight of the patch-token term: the student's last feature map, resampled to the
    # teacher's grid and mapped by a 1x1 convolution, regresses the teacher's last dense
    # map location by location. Unset: 1.0 for ViT teachers (whose patch tokens carry what
    # dense tasks need), 0 for CNN teachers.
    patch_weight: float | None = None
    views: ViewsConfig = field(default_factory=_distill_views)


def load_teacher(cfg: DistillConfig, image_size_hint: int | None = None) -> Backbone:
    """The frozen teacher of ``cfg``: from ``cfg.teacher`` (a run or export) or
    ``cfg.teacher_backbone`` (a backbone by name and weights file)."""
    from selfsup.backbones import create_backbone
    from selfsup.hub import load_backbone

    if (cfg.teacher is None) == (cfg.teacher_backbone is None):
        raise ConfigError(
            "method distill needs exactly one teacher: method.teacher=RUN (a selfsup run "
            "folder, checkpoint or hf export; --teacher RUN on the command line) or "
            "method.teacher_backbone={name: ..., weights: FILE} for another network."
        )
    if cfg.teacher is not None:
        path = Path(cfg.teacher).expanduser()
        if not path.exists():
            raise ConfigError(
                f"method.teacher: {str(path)!r} does not exist. The teacher run is needed to "
                "train, resume and open a distill run; point method.teacher at the run "
                "folder (or its export) where it now lives."
            )
        teacher = load_backbone(path, cfg.teacher_which)
    else:
        assert cfg.teacher_backbone is not None
        teacher = create_backbone(cfg.teacher_backbone, image_size_hint)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@register_method("distill")
class Distill(Method):
    """A student backbone learns to reproduce a frozen teacher's embedding of the same
    augmented view (and its patch tokens, for ViT teachers) through a prediction head.
    The teacher is never trained, never synchronised and stays in eval mode (BatchNorm
    running statistics, no dropout); only the student and the heads are optimised. The
    student's backbone is what the run evaluates and exports."""

    Config = DistillConfig
    cfg: DistillConfig
    batch_coupled = False  # one view, a per-sample loss: accumulation emulates a batch
    renorm_scale: torch.Tensor
    renorm_shift: torch.Tensor

    def __init__(self, cfg: DistillConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if cfg.head_layers < 1:
            raise ValueError(f"method.head_layers must be at least 1, got {cfg.head_layers}")
        self.teacher = load_teacher(cfg)
        t_dim = self.teacher.embed_dim
        dims = [backbone.embed_dim] + [cfg.head_hidden_dim] * (cfg.head_layers - 1) + [t_dim]
        self.head = MLP(dims, batch_norm=True)
        self.criterion = FeatureDistillLoss()
        pre: dict[str, Any] = dict(getattr(self.teacher, "pretrained_cfg", None) or {})
        self.teacher_size: int | None = int(pre["input_size"][-1]) if "input_size" in pre else None
        self.teacher_chans: int | None = int(pre["input_size"][0]) if "input_size" in pre else None
        self.teacher_mean: list[float] | None = list(pre["mean"]) if "mean" in pre else None
        self.teacher_std: list[float] | None = list(pre["std"]) if "std" in pre else None
        # Student-normalised views -> teacher-normalised: x * scale + shift, per channel;
        # set by default_transform, which knows the student's normalisation.
        self.register_buffer("renorm_scale", torch.ones(1, 1, 1, 1), persistent=False)
        self.register_buffer("renorm_shift", torch.zeros(1, 1, 1, 1), persistent=False)
        self.patch_weight = self._patch_weight()
        self.patch_head: nn.Module | None = None
        if self.patch_weight > 0:
            s_chans = backbone.dense_specs()[-1].channels
            t_chans = self.teacher.dense_specs()[-1].channels
            self.patch_head = nn.Conv2d(s_chans, t_chans, kernel_size=1)

    def _patch_weight(self) -> float:
        if self.cfg.patch_weight is not None:
            if self.cfg.patch_weight < 0:
                raise ValueError(f"method.patch_weight must be >= 0, got {self.cfg.patch_weight}")
            return float(self.cfg.patch_weight)
        return 1.0 if hasattr(self.teacher, "forward_tokens") else 0.0

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()  # a frozen network: running statistics, no dropout
        return self

    def trainable_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.backbone, self.head]
        return mods + ([self.patch_head] if self.patch_head is not None else [])

    def _teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.renorm_scale + self.renorm_shift
        if self.teacher_chans == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.teacher_size is not None and x.shape[-1] != self.teacher_size:
            x = F.interpolate(x, size=(self.teacher_size, self.teacher_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.teacher_size)  # fmt: skip
        return x

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 1:
            raise ValueError(f"distill takes one view per image, got {len(views)}")
        x = views[0]
        with torch.no_grad():
            tx = self._teacher_input(x)
            if self.patch_head is not None:
                t_dense = self.teacher.forward_dense(tx)[-1]
            t_global = self.teacher(tx)
        logs: dict[str, torch.Tensor] = {}
        if self.patch_head is None:
            loss = self.criterion(self.head(self.backbone(x)), t_global)
            logs["global"] = loss.detach()
        else:
            s_dense = self.backbone.forward_dense(x)[-1]
            # A torchvision ResNet's embedding is the mean of its last map: no second pass.
            pooled = (s_dense.mean(dim=(2, 3)) if is_torchvision_resnet(self.backbone.net)
                      else self.backbone(x))  # fmt: skip
            global_loss = self.criterion(self.head(pooled), t_global)
            pred = F.interpolate(self.patch_head(s_dense), size=t_dense.shape[-2:], mode="bilinear",
                                 align_corners=False)  # fmt: skip
            patch_loss = self.criterion(pred, t_dense)
            loss = global_loss + self.patch_weight * patch_loss
            logs["global"], logs["patch"] = global_loss.detach(), patch_loss.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        self._set_renorm(mean, std)
        return views_from_specs([view_spec(self.cfg.views, image_size, mean, std, channels, 0)])

    def _set_renorm(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if self.teacher_mean is None or self.teacher_std is None:
            return  # a teacher by name sees the student's normalisation
        t_mean, t_std = self.teacher_mean, self.teacher_std
        if len(mean) != len(t_mean) and len(mean) != 1:
            raise ConfigError(
                f"the teacher takes {len(t_mean)}-channel images and the student "
                f"{len(mean)}-channel ones; set data.channels (--channels) to the teacher's."
            )
        n = len(t_mean)
        s_mean = list(mean) * n if len(mean) == 1 else list(mean)
        s_std = list(std) * n if len(std) == 1 else list(std)
        scale = [s / t for s, t in zip(s_std, t_std, strict=True)]
        shift = [(sm - tm) / t for sm, tm, t in zip(s_mean, t_mean, t_std, strict=True)]
        self.renorm_scale = torch.tensor(scale).view(1, n, 1, 1).to(self.renorm_scale)
        self.renorm_shift = torch.tensor(shift).view(1, n, 1, 1).to(self.renorm_shift)

    def feature_extractor(self) -> nn.Module:
        return self.backbone
