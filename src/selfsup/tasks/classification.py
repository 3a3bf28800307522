"""Image classification with few labels: fine-tuning, training from scratch, self-training.

All three are one task (:class:`ClassificationTask`: a :class:`Classifier`, cross-entropy
with label smoothing, top-1 on a validation split) handed to the one supervised loop
(:class:`~selfsup.train.supervised.SupervisedLoop`) by :func:`train_classifier`, so that
they differ only in what they start from and what they train on:

- **fine-tune**: the pretrained backbone + a new linear head, the backbone at a lower
  learning rate (``backbone_lr_scale``; layer-wise decay for ViTs), light augmentation.
- **scratch**: the same architecture from random initialisation, same labels, budget and
  augmentation (``backbone_lr_scale`` 1): the baseline every SSL number is shown against.
- **self-training**: a fine-tuned teacher labels an unlabelled pool; confident,
  class-balanced pseudo-labels plus the true labels train a student (from the pretrained
  backbone) under strong augmentation.

Protocol: hyper-parameters are fixed in :class:`FinetuneConfig`; the epoch to keep is chosen
by accuracy on a validation split carved from the training images (never from the test
set); the test set is evaluated once, with the kept weights.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from selfsup.config import parse_duration
from selfsup.data import EvalDataset, ImageSource, SubsetSource, default_workers, loader_kwargs
from selfsup.data.decode import to_tensor
from selfsup.eval.metrics import Metrics, classification_metrics
from selfsup.runtime import autocast
from selfsup.train.supervised import LoopConfig, SupervisedLoop
from selfsup.transforms import eval_transform
from selfsup.transforms.base import normalize, to_float


@dataclass
class FinetuneConfig:
    """Fixed hyper-parameters of the supervised protocols (the same for SSL and scratch)."""

    # Passes over the labelled images (an upper bound: early stopping may end sooner).
    epochs: int = 60
    # Optional wall-clock budget per training run, e.g. "3m" (None: epochs only). Results
    # then depend on the machine's load; max_steps is the reproducible budget.
    max_time: str | None = None
    # Optional cap on optimiser steps per training run; the cosine schedule spans
    # min(epochs x steps an epoch, max_steps), so a capped run still decays fully.
    max_steps: int | None = None
    batch_size: int = 64
    # SGD learning rate of the new head (cosine decay, momentum 0.9).
    lr: float = 0.05
    # Backbone learning rate as a fraction of lr: small for a pretrained backbone, so
    # fine-tuning refines rather than overwrites it; scratch training uses 1.0.
    backbone_lr_scale: float = 0.1
    # ViTs: each block's learning rate is layer_decay times the next one's (BEiT, MAE).
    layer_decay: float = 0.75
    weight_decay: float = 5e-4
    # Stop after this many epochs without a better validation accuracy.
    patience: int = 15
    label_smoothing: float = 0.1
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = -1
    seed: int = 0


@dataclass
class TrainReport:
    """What one supervised run did and how well its kept weights score."""

    test: Metrics
    val_top1: float
    best_epoch: int
    epochs_run: int
    train_images: int
    val_images: int
    seconds: float
    history: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class LabelledDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images ``indices`` of a source with given ``labels`` (true or pseudo) and a transform."""

    def __init__(self, source: ImageSource, indices: Sequence[int], labels: Sequence[int],
                 transform: Callable[[torch.Tensor], torch.Tensor], channels: int) -> None:  # fmt: skip
        self.source, self.indices, self.labels = source, list(indices), list(labels)
        self.transform, self.channels = transform, channels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        x = to_tensor(self.source.load(j), self.channels, self.source.describe(j))
        return self.transform(x), self.labels[i]


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                    strong: bool = False) -> v2.Compose:  # fmt: skip
    """Light (crop + flip) or strong (+ TrivialAugment + erasing) supervised augmentation."""
    ops: list[nn.Module] = []
    if strong:
        # TrivialAugment works on uint8 images; float (deep) images skip it.
        ops.append(_Uint8Only(v2.TrivialAugmentWide()))
    ops += [
        to_float(),
        v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        normalize(mean, std),
    ]
    if strong:
        ops.append(v2.RandomErasing(p=0.25))
    return v2.Compose(ops)


class _Uint8Only(nn.Module):
    def __init__(self, t: nn.Module) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8 and x.shape[0] in (1, 3):
            out: torch.Tensor = self.t(x)
            return out
        return x


class Classifier(nn.Module):
    """A backbone with a linear head: (B, C, H, W) -> (B, classes)."""

    def __init__(self, backbone: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone(x))
        return out


def _param_groups(
    model: Classifier, cfg: FinetuneConfig, backbone_scale: float
) -> list[dict[str, object]]:
    """Head at lr; backbone at lr * backbone_scale, decayed per block for ViTs; no weight
    decay on biases and norm weights."""
    groups: list[dict[str, object]] = []
    blocks = getattr(getattr(model.backbone, "net", None), "blocks", None)
    n_blocks = len(blocks) if isinstance(blocks, nn.Sequential | nn.ModuleList) else 0

    def depth(name: str) -> int:
        if n_blocks == 0:
            return 0
        if ".blocks." in f".{name}":
            return int(name.split("blocks.")[1].split(".")[0]) + 1
        return n_blocks + 1 if name.startswith(("net.norm", "net.fc_norm")) else 0

    for name, p in model.backbone.named_parameters():
        if not p.requires_grad:
            continue
        scale = backbone_scale
        if n_blocks:
            scale *= cfg.layer_decay ** (n_blocks + 1 - depth(name))
        wd = 0.0 if p.ndim <= 1 else cfg.weight_decay
        groups.append({"params": [p], "lr_scale": scale, "weight_decay": wd})
    groups.append(
        {"params": [model.head.weight], "lr_scale": 1.0, "weight_decay": cfg.weight_decay}
    )
    groups.append({"params": [model.head.bias], "lr_scale": 1.0, "weight_decay": 0.0})
    return groups


def _eval_dataset(source: ImageSource, indices: Sequence[int], image_size: int,
                  mean: Sequence[float], std: Sequence[float], channels: int) -> EvalDataset:  # fmt: skip
    """``(image, label, ok)`` items of ``indices`` under the evaluation transform."""
    return EvalDataset(SubsetSource(source, indices), eval_transform(image_size, mean, std),
                       image_size, channels)  # fmt: skip


def _probs(model: nn.Module, x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (B, C) on the CPU of images ``x`` (B, C, H, W) on the model's
    device; unreadable images (``ok`` False) get no opinion."""
    logits = model(x.contiguous(memory_format=torch.channels_last)).float()
    probs: torch.Tensor = logits.softmax(1).cpu()
    probs[~ok.cpu()] = 1.0 / probs.shape[1]
    return probs


@torch.no_grad()
def predict(model: nn.Module, source: ImageSource, indices: Sequence[int], image_size: int,
            mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device,
            precision: str, batch_size: int = 256, num_workers: int = -1) -> torch.Tensor:  # fmt: skip
    """Softmax probabilities (N, C) of ``indices`` under the evaluation transform."""
    ds = _eval_dataset(source, indices, image_size, mean, std, channels)
    loader = DataLoader(ds, batch_size=batch_size, **loader_kwargs(default_workers(num_workers)))
    model.eval()
    out = []
    for x, _, ok in loader:
        with autocast(device, precision):
            out.append(_probs(model, x.to(device), ok))
    return torch.cat(out) if out else torch.zeros(0, 0)


class ClassificationTask:
    """The classification task of the supervised loop: a :class:`Classifier`, cross-entropy
    with label smoothing, and top-1 accuracy (``score``) on validation batches.

    Training batches are ``(images (B, C, H, W), labels (B,))``; validation batches are
    :class:`~selfsup.data.EvalDataset` items ``(images, labels, ok)``.
    """

    def __init__(self, model: Classifier, cfg: FinetuneConfig, backbone_lr_scale: float) -> None:
        self.model = model
        self.cfg = cfg
        self.backbone_lr_scale = backbone_lr_scale

    def param_groups(self) -> list[dict[str, Any]]:
        return _param_groups(self.model, self.cfg, self.backbone_lr_scale)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        logits = self.model(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        return loss, {}

    def eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, ok = batch
        return _probs(self.model, x, ok), y.cpu()

    def metrics(self, outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        probs = torch.cat([p for p, _ in outputs])
        labels = torch.cat([y for _, y in outputs])
        m = classification_metrics(probs, labels)
        return {"score": m.top1, "top1": m.top1, "balanced": m.balanced, f"top{m.k}": m.topk}


def loop_config(cfg: FinetuneConfig, progress: bool | None = None) -> LoopConfig:
    """The supervised loop's settings for the fixed protocol ``cfg`` (SGD with Nesterov
    momentum 0.9, cosine decay without warm-up, the epoch with the best validation top-1)."""
    return LoopConfig(
        epochs=cfg.epochs, max_steps=cfg.max_steps,
        max_seconds=parse_duration(cfg.max_time, "max_time") if cfg.max_time else None,
        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer="sgd",
        momentum=0.9, nesterov=True, patience=cfg.patience, device=cfg.device,
        precision=cfg.precision, num_workers=cfg.num_workers, seed=cfg.seed, progress=progress,
        desc="fine-tune",
    )  # fmt: skip


def train_classifier(
    backbone: nn.Module,
    embed_dim: int,
    num_classes: int,
    source: ImageSource,
    train_idx: Sequence[int],
    train_labels: Sequence[int],
    val_idx: Sequence[int],
    test_source: ImageSource,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int,
    cfg: FinetuneConfig,
    backbone_lr_scale: float | None = None,
    strong_augment: bool = False,
    classes: Sequence[str] | None = None,
    progress: bool | None = None,
) -> tuple[Classifier, TrainReport]:
    """Train ``backbone`` + a linear head on ``train_idx`` (with ``train_labels``), keep the
    epoch with the best accuracy on ``val_idx``, and test it once on ``test_source``.
    ``progress``: a bar over the steps (None: the process default, off with the CLI's
    ``--no-progress``)."""
    t0 = time.perf_counter()
    scale = cfg.backbone_lr_scale if backbone_lr_scale is None else backbone_lr_scale

    def build() -> ClassificationTask:  # called by the loop once seeded
        model = Classifier(copy.deepcopy(backbone), embed_dim, num_classes)
        return ClassificationTask(model.to(memory_format=torch.channels_last), cfg, scale)

    loop = SupervisedLoop(build, loop_config(cfg, progress))
    train = LabelledDataset(source, train_idx, train_labels,
                            train_transform(image_size, mean, std, strong_augment), channels)  # fmt: skip
    has_val = source.labels is not None and len(val_idx) > 0
    val = _eval_dataset(source, val_idx, image_size, mean, std, channels) if has_val else None
    run = loop.fit(train, val)
    model = loop.task.model
    test_idx = list(range(len(test_source)))
    probs = predict(model, test_source, test_idx, image_size, mean, std, channels, loop.device,
                    loop.precision, num_workers=cfg.num_workers)  # fmt: skip
    assert test_source.labels is not None
    metrics = classification_metrics(probs, torch.tensor(test_source.labels), classes=classes)
    if has_val:
        history, val_top1 = [e["score"] for e in run.evaluations], run.best_score
    else:  # as before the loop: each epoch "scores" its index, so the last one is kept
        history = [float(e) for e in range(run.epochs_run)]
        val_top1 = float(run.epochs_run - 1) if source.labels is not None else math.nan
    report = TrainReport(
        test=metrics, val_top1=val_top1, best_epoch=run.best_epoch, epochs_run=run.epochs_run,
        train_images=len(train_idx), val_images=len(val_idx),
        seconds=time.perf_counter() - t0, history=history,
    )  # fmt: skip
    return model.cpu(), report


def select_pseudo_labels(
    probs: torch.Tensor, threshold: float, max_per_class: int, min_per_class: int = 0
) -> tuple[list[int], list[int]]:
    """Confident, class-balanced pseudo-labels: (positions in ``probs``, labels).

    Only predictions with confidence >= ``threshold`` are eligible. Every class contributes
    the same number n = min(max_per_class, smallest eligible count over classes), raised to
    at most ``min_per_class`` for classes that have that many (so one rare class does not
    veto all pseudo-labels); within a class the most confident come first.
    """
    conf, pred = probs.max(1)
    c = probs.shape[1]
    eligible = [((pred == k) & (conf >= threshold)).nonzero().flatten() for k in range(c)]
    counts = [len(e) for e in eligible]
    n = min(max_per_class, min(counts)) if counts else 0
    n = max(n, min(min_per_class, max_per_class))
    pos: list[int] = []
    lab: list[int] = []
    for k, e in enumerate(eligible):
        order = e[conf[e].argsort(descending=True)][:n]
        pos += order.tolist()
        lab += [k] * len(order)
    return pos, lab


def carve_validation(
    labels: Sequence[int], per_class: int, exclude: Sequence[int], seed: int
) -> list[int]:
    """``per_class`` labelled indices a class for validation (or as many as exist), never
    from ``exclude`` (the training labels)."""
    banned = set(exclude)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(labels):
        if t >= 0 and i not in banned:
            by_class.setdefault(int(t), []).append(i)
    rng = random.Random(seed + 7919)
    out: list[int] = []
    for c in sorted(by_class):
        m = by_class[c]
        out += rng.sample(m, min(per_class, len(m)))
    return sorted(out)
