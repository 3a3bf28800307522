"""The Method contract: backbone + heads + loss (+ teacher), with no training-loop code.

A Method never touches devices, precision, process groups, optimisers or checkpoints; the
:class:`~selfsup.train.Trainer` owns those. A new method subclasses :class:`Method` in one
file, declares its ``Config`` dataclass and registers itself with
:func:`~selfsup.registry.register_method`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from selfsup.backbones import Backbone
from selfsup.config import MethodConfig
from selfsup.modules import ema_update
from selfsup.transforms import MultiView


@dataclass(frozen=True)
class StepInfo:
    """Where training stands when a step runs.

    ``progress`` is the fraction of the budget already used, in [0, 1] (steps, epochs or
    time, whichever budget is nearest its end), so per-step values are pure functions of it.
    """

    step: int
    progress: float
    epoch: int = 0


class Method(nn.Module):
    """Base class of self-supervised methods.

    Subclasses define ``Config`` (a :class:`MethodConfig` dataclass) and implement
    :meth:`training_step` and :meth:`default_transform`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # Methods whose loss couples samples through BatchNorm statistics (BYOL, SimSiam...) set
    # this so distributed training converts BatchNorm to SyncBatchNorm.
    needs_sync_batchnorm: ClassVar[bool] = False
    # Methods with in-batch negatives or batch statistics cannot emulate a large batch by
    # gradient accumulation.
    batch_coupled: ClassVar[bool] = True
    # Methods that need token-level access (MAE, iBOT) work with ViT backbones only.
    needs_vit: ClassVar[bool] = False
    # Methods that learn from clips (VideoMAE) take a folder of videos only.
    needs_video: ClassVar[bool] = False
    # The backbone this method's configs start from (None: the config default, resnet18).
    default_backbone: ClassVar[str | None] = None

    def __init__(self, cfg: MethodConfig, backbone: Backbone) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch. ``views``: list of (B, C, H, W) tensors, one per view.

        Returns the scalar loss and a dict of detached scalar tensors to log.
        """
        raise NotImplementedError

    def trainable_modules(self) -> list[nn.Module]:
        """Modules the optimiser updates (and DDP wraps). Teachers are excluded."""
        return [self]

    def on_after_backward(self, info: StepInfo) -> None:
        """Called after gradients are computed and before the optimiser step, e.g. to
        cancel the gradients of a layer frozen early in training (DINO, SwAV)."""

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The (student, teacher) module pairs of an EMA (momentum) teacher, each teacher a
        :func:`~selfsup.modules.frozen_copy` of its student; :meth:`on_step_end` moves every
        teacher towards its student. Default: none."""
        return []

    def teacher_momentum(self, info: StepInfo) -> float:
        """EMA momentum of the teachers at the end of the step ``info`` (1: frozen, 0: a
        copy of the student). Needed by methods that declare :meth:`teacher_pairs`."""
        raise NotImplementedError(
            f"{type(self).__name__} declares teacher_pairs() but no teacher_momentum()"
        )

    @torch.no_grad()
    def on_step_end(self, info: StepInfo) -> None:
        """Called after each optimiser step: ``teacher <- m * teacher + (1 - m) * student``
        for every pair of :meth:`teacher_pairs`, ``m = teacher_momentum(info)``, buffers
        (BatchNorm statistics) copied from the student. Methods with more to do at the end
        of a step (queues, centres) override this and call ``super().on_step_end(info)``."""
        pairs = self.teacher_pairs()
        if not pairs:
            return
        m = self.teacher_momentum(info)
        for student, teacher in pairs:
            ema_update(teacher, student, m)

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        """The method's multi-view augmentation: uint8 (C, H, W) -> list of float views."""
        raise NotImplementedError

    @torch.no_grad()
    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pictures of what the method does, for a fixed batch of evaluation images
        (B, C, H, W), normalised like the training views.

        Returns named image grids (K, C, H, W) in the same normalised space (the Trainer
        undoes the normalisation and saves ``figures/<name>_step<N>.png`` with B images a
        row at every epoch end and at the end of training). Default: nothing.
        """
        return {}

    def chance_loss(self, batch_size: int) -> float | None:
        """The loss of an uninformative embedding for a global batch of ``batch_size``
        (contrastive methods: the log of the number of candidates), or None. A loss stuck
        there is a collapse signal."""
        return None

    def feature_extractor(self) -> nn.Module:
        """The network whose (B, D) output is the learned representation."""
        return self.backbone
