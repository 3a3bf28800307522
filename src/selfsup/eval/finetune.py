"""Supervised protocols with few labels: fine-tuning, training from scratch, self-training.

All three share one small supervised loop (:func:`train_classifier`) so that they differ
only in what they start from and what they train on:

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

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from selfsup import schedules
from selfsup.data import EvalDataset, ImageSource, default_workers, loader_kwargs
from selfsup.data.decode import to_tensor
from selfsup.eval.features import autocast
from selfsup.eval.metrics import Metrics, classification_metrics
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


@torch.no_grad()
def predict(model: nn.Module, source: ImageSource, indices: Sequence[int], image_size: int,
            mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device,
            precision: str, batch_size: int = 256, num_workers: int = -1) -> torch.Tensor:  # fmt: skip
    """Softmax probabilities (N, C) of ``indices`` under the evaluation transform."""
    from selfsup.data import SubsetSource

    ds = EvalDataset(SubsetSource(source, indices), eval_transform(image_size, mean, std),
                     image_size, channels)  # fmt: skip
    loader = DataLoader(ds, batch_size=batch_size, **loader_kwargs(default_workers(num_workers)))
    model.eval()
    out = []
    for x, _, ok in loader:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x).float()
        probs = logits.softmax(1).cpu()
        probs[~ok] = 1.0 / probs.shape[1]  # unreadable images: no opinion
        out.append(probs)
    return torch.cat(out) if out else torch.zeros(0, 0)


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
) -> tuple[Classifier, TrainReport]:
    """Train ``backbone`` + a linear head on ``train_idx`` (with ``train_labels``), keep the
    epoch with the best accuracy on ``val_idx``, and test it once on ``test_source``."""
    from selfsup.config import parse_duration
    from selfsup.train.trainer import resolve_device, resolve_precision

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = Classifier(copy.deepcopy(backbone), embed_dim, num_classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    scale = cfg.backbone_lr_scale if backbone_lr_scale is None else backbone_lr_scale
    groups = _param_groups(model, cfg, scale)
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    ds = LabelledDataset(source, train_idx, train_labels,
                         train_transform(image_size, mean, std, strong_augment), channels)  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, len(ds))
    loader = DataLoader(ds, batch_size=bs, shuffle=True, drop_last=len(ds) > bs, generator=gen,
                        **loader_kwargs(default_workers(cfg.num_workers), persistent=True))  # fmt: skip
    val_labels = torch.tensor([source.labels[i] for i in val_idx]) if source.labels else None
    steps_per_epoch = max(1, len(loader))
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = max(1, min(total, cfg.max_steps))
    budget = parse_duration(cfg.max_time) if cfg.max_time else math.inf
    best_acc, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    history: list[float] = []
    step, epochs_run = 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        for x, y in loader:
            if step >= total:  # the step budget ends inside this epoch
                break
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            y = y.to(device)
            f = schedules.cosine(step, total, 1.0, 0.0)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * float(g["lr_scale"]) * f
            with autocast(device, precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            step += 1
        epochs_run = epoch + 1
        if val_labels is not None and len(val_idx):
            probs = predict(model, source, val_idx, image_size, mean, std, channels, device,
                            precision, num_workers=cfg.num_workers)  # fmt: skip
            acc = float((probs.argmax(1) == val_labels).float().mean() * 100)
        else:
            acc = float(epoch)  # no validation: keep the last epoch
        history.append(acc)
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        out_of_budget = step >= total or time.perf_counter() - t0 > budget
        if epoch + 1 - best_epoch >= cfg.patience or out_of_budget:
            break
    model.load_state_dict(best_state)
    test_idx = list(range(len(test_source)))
    probs = predict(model, test_source, test_idx, image_size, mean, std, channels, device,
                    precision, num_workers=cfg.num_workers)  # fmt: skip
    assert test_source.labels is not None
    metrics = classification_metrics(probs, torch.tensor(test_source.labels), classes=classes)
    report = TrainReport(
        test=metrics, val_top1=best_acc if val_labels is not None else float("nan"),
        best_epoch=best_epoch, epochs_run=epochs_run, train_images=len(train_idx),
        val_images=len(val_idx), seconds=time.perf_counter() - t0, history=history,
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
