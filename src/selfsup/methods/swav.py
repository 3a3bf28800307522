"""SwAV: swapping assignments between views (Caron et al., NeurIPS 2020)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist
from selfsup.backbones import Backbone
from selfsup.config import MethodConfig
from selfsup.heads import MLP
from selfsup.losses.swav import SwAVLoss
from selfsup.methods.base import Method, StepInfo
from selfsup.modules import FeatureQueue, forward_multi_crop, sinkhorn_knopp
from selfsup.registry import register_method
from selfsup.transforms import MultiCropConfig, MultiView, multi_crop


def _swav_crops() -> MultiCropConfig:
    # SwAV's multi-crop (Caron et al., 2020, Sec. 3.2 and Appendix A): global crops cover
    # 14-100% of the image, local crops 5-14%. Four local crops instead of six keep the
    # cost down on a CPU; at 32 px the local crops are 14 px (3/7 of the image) unless
    # local_size is set (configs/swav_cifar10.yaml uses 16).
    return MultiCropConfig(
        min_scale=0.14, global_crops=2, local_crops=4, local_min_scale=0.05, local_max_scale=0.14
    )


@dataclass
class SwAVConfig(MethodConfig):
    name: str = "swav"
    # Projection head: embed_dim -> hidden (BN, ReLU) -> output, then L2-normalised.
    # Paper: 2048 hidden, 128 out.
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    # Number of prototypes K: more than proj_output_dim, or an embedding orthogonal to all
    # of them makes the loss constant (see __init__). Paper: 3000 on ImageNet, and the
    # results are insensitive to K once it is large enough; solo-learn uses 3000 on CIFAR.
    # Sinkhorn's soft codes (epsilon) keep it meaningful with batches far smaller than K.
    num_prototypes: int = 3000
    # Softmax temperature of the swapped predictions (paper: 0.1).
    temperature: float = 0.1
    # Sinkhorn-Knopp entropy regularisation and iterations (paper: 0.05 and 3). Lower
    # epsilon gives sharper codes but risks collapse onto few prototypes (and overflow).
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    # Fraction of the budget during which the prototypes get no update (paper: the first
    # epoch, about 1% of a 100-epoch run); stabilises the start of training.
    freeze_prototypes: float = 0.01
    # Embeddings of past global crops kept to compute the codes over more samples than
    # the batch (0: no queue). The paper uses 3840 for batches of 256 and below; use one
    # when batch_size is small relative to num_prototypes.
    queue_size: int = 0
    # Fraction of the budget after which the (full) queue is used (the reference code
    # starts it at epoch 15 of 100); earlier, the features drift too fast for the queue.
    queue_start: float = 0.15
    views: MultiCropConfig = field(default_factory=_swav_crops)


@register_method("swav")
class SwAV(Method):
    """SwAV: online clustering of the embeddings onto unit-norm prototypes. The codes of
    each global crop (equipartitioned by Sinkhorn-Knopp, no gradient) are predicted from
    every other crop, global or local; an optional queue of past embeddings enlarges the
    set that Sinkhorn-Knopp partitions."""

    Config = SwAVConfig
    cfg: SwAVConfig
    # Sinkhorn's equipartition runs over the global batch; the head has BatchNorm.
    needs_sync_batchnorm = True

    def __init__(self, cfg: SwAVConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if cfg.num_prototypes < 2:
            raise ValueError(f"method.num_prototypes must be at least 2, got {cfg.num_prototypes}")
        if cfg.views.global_crops < 1:
            raise ValueError("method.views.global_crops must be at least 1 (codes come from it)")
        if cfg.views.global_crops + cfg.views.local_crops < 2:
            raise ValueError(
                "SwAV predicts one crop's code from another: method.views needs at least two "
                "crops (global_crops + local_crops >= 2)"
            )
        if cfg.queue_size < 0:
            raise ValueError(f"method.queue_size must be 0 (off) or positive, got {cfg.queue_size}")
        for key in ("freeze_prototypes", "queue_start"):
            if not 0.0 <= getattr(cfg, key) <= 1.0:
                raise ValueError(
                    f"method.{key} is a fraction of the training budget in [0, 1], got "
                    f"{getattr(cfg, key)}"
                )
        if cfg.num_prototypes <= cfg.proj_output_dim:
            # K unit prototypes span at most K dimensions: an embedding in the orthogonal
            # complement scores 0 against every prototype, the prediction is uniform and the
            # loss is log(K) whatever the codes, a fixed point the training can settle in
            # (measured: K = 100, D = 128 sat at log(100) for 15 minutes; K = 3000 learned).
            warnings.warn(
                f"SwAV with method.num_prototypes={cfg.num_prototypes} <= "
                f"method.proj_output_dim={cfg.proj_output_dim}: embeddings can be orthogonal "
                "to every prototype (loss stuck at log(num_prototypes)); use more prototypes "
                "than embedding dimensions (the paper: 3000 for 128)",
                stacklevel=2,
            )
        self.projection_head = MLP(
            [backbone.embed_dim, cfg.proj_hidden_dim, cfg.proj_output_dim], batch_norm=True
        )
        self.prototypes = nn.Linear(cfg.proj_output_dim, cfg.num_prototypes, bias=False)
        self._normalize_prototypes()
        self.criterion = SwAVLoss(cfg.temperature)
        # One queue per global crop, as in the reference code: each crop's codes are
        # computed together with the past embeddings of the same crop.
        self.queues = nn.ModuleList(
            [
                FeatureQueue(cfg.queue_size, cfg.proj_output_dim)
                for _ in range(cfg.views.global_crops)
            ]
            if cfg.queue_size > 0
            else []
        )
        # Embeddings of this step's global crops, enqueued in on_step_end (so a skipped
        # step with a non-finite loss never pollutes the queue).
        self._pending: list[torch.Tensor] = []

    def _queues(self) -> list[FeatureQueue]:
        return [q for q in self.queues if isinstance(q, FeatureQueue)]

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w.float(), dim=1).to(w.dtype))

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (B, K) of normalised embeddings (B, D) with the prototypes.

        In float32 even under autocast: Sinkhorn divides them by epsilon = 0.05 before
        exponentiating, which would amplify bf16 rounding (~0.004) twentyfold.
        """
        with torch.autocast(z.device.type, enabled=False):
            return F.linear(z.float(), self.prototypes.weight.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> L2-normalised embedding (B, proj_output_dim)."""
        return F.normalize(self.projection_head(self.backbone(x)).float(), dim=1)

    def _embed(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One forward pass per run of same-sized crops (the global crops share one, the
        local crops another), as in the paper; returns one (B, D) embedding per view."""
        z = forward_multi_crop(self, views)
        return list(torch.split(z, [v.shape[0] for v in views]))

    def use_queue(self, info: StepInfo) -> bool:
        """Whether this step's codes include the queue: after ``queue_start`` and once the
        queue is full (as in the reference code)."""
        return (
            len(self.queues) > 0
            and info.progress >= self.cfg.queue_start
            and all(len(q) == q.size for q in self._queues())
        )

    @torch.no_grad()
    def codes(self, scores: torch.Tensor, crop: int, use_queue: bool) -> torch.Tensor:
        """Sinkhorn-Knopp codes (B, K) of global crop ``crop`` from its scores (B, K),
        computed together with the queue's embeddings when ``use_queue``."""
        b = scores.shape[0]
        s = scores.detach().float()
        if use_queue:
            queued = self._queues()[crop].get()
            # Every rank holds the same (gathered) queue: each contributes a disjoint share
            # so Sinkhorn's sums over ranks count every queued embedding once.
            queued = queued[dist.rank() :: dist.world_size()]
            s = torch.cat([self.scores(queued), s])
        q = sinkhorn_knopp(s, self.cfg.sinkhorn_epsilon, self.cfg.sinkhorn_iterations)
        return q[-b:]

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g = self.cfg.views.global_crops
        if len(views) < max(2, g):
            raise ValueError(
                f"SwAV takes {g} global crops (then any local crops), got {len(views)} views"
            )
        # The prototypes must be unit-norm for the scores to be cosine similarities; they
        # are renormalised after every optimiser step too (on_step_end), this guards
        # against weights loaded or edited from elsewhere.
        self._normalize_prototypes()
        z = self._embed(views)
        scores = [self.scores(zv) for zv in z]
        use_queue = self.use_queue(info)
        codes = [self.codes(scores[i], i, use_queue) for i in range(g)]
        loss = self.criterion(scores, codes)
        self._pending = [zv.detach().float() for zv in z[:g]]
        logs = {"loss": loss.detach()}
        if self.queues:
            logs["queue_used"] = torch.tensor(float(use_queue))
        return loss, logs

    def chance_loss(self, batch_size: int) -> float | None:
        # Equal scores for every prototype give exactly log(num_prototypes), whatever the
        # codes: the swapped prediction has learned nothing.
        return math.log(self.cfg.num_prototypes)

    def on_after_backward(self, info: StepInfo) -> None:
        # Zeroed rather than set to None, so every trainable parameter keeps a gradient;
        # the weight decay the optimiser still applies only rescales the prototypes, which
        # the renormalisation in on_step_end undoes, so they stay frozen.
        if info.progress < self.cfg.freeze_prototypes:
            for p in self.prototypes.parameters():
                if p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def on_step_end(self, info: StepInfo) -> None:
        self._normalize_prototypes()
        if self.queues and self._pending:
            for queue, z in zip(self._queues(), self._pending, strict=True):
                queue.enqueue(z)
        self._pending = []

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        return multi_crop(self.cfg.views, image_size, mean, std, channels)
