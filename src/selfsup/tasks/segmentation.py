"""Semantic segmentation of any run's backbone, in the two protocols of the field:

- **linear** (DINOv2, Oquab et al., 2023, Sec. 7.4): the backbone frozen, a linear 1x1 head
  (with BatchNorm) on its dense features, upsampled to the image.
- **finetune**: the backbone trained at a lower learning rate under a light decoder: FPN
  (Panoptic FPN, Kirillov et al., 2019; predicts at the backbone's finest stride) or U-Net
  (Ronneberger et al., 2015; continued to full resolution with skips from the image, for
  structures a pixel or two wide).

Both are one :class:`SegmentationTask` (a :class:`~selfsup.heads.dense.DenseModel`,
cross-entropy that ignores the ignore index, mIoU / Dice on a test split) handed to the one
supervised loop. The random-init baseline is the same network, labels and budget from the
run's initial weights; it fine-tunes its backbone at the head's learning rate, as
:mod:`selfsup.tasks.classification` does for scratch training.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from selfsup.data.segmentation import SegmentationFolder
from selfsup.eval.segmentation import SegConfusion
from selfsup.heads.dense import DenseModel, FPNDecoder, LinearSegHead, UNetDecoder
from selfsup.train.supervised import LoopConfig, SupervisedLoop
from selfsup.transforms.dense import SegEval, SegTrain

PROTOCOLS = ("linear", "finetune")
DECODERS = ("fpn", "unet")


@dataclass
class SegmentConfig:
    """Fixed hyper-parameters of the segmentation protocols (the same for SSL and scratch)."""

    protocol: str = "linear"
    # Side of the square training crops; test images are resized so their shorter side is
    # this, and their logits upsampled to the mask's full resolution for scoring.
    image_size: int = 256
    max_steps: int = 300
    batch_size: int = 8
    # AdamW learning rate of the head (and of a random-init backbone).
    lr: float = 1e-3
    # The pretrained backbone's learning rate relative to the head's (finetune protocol).
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    # The finetune protocol's decoder: "fpn" (predicts at the finest backbone stride) or
    # "unet" (full resolution; CNN backbones).
    decoder: str = "fpn"
    # Width of the finetune decoder (FPN: every level; U-Net: the coarsest, halving finer).
    decoder_width: int = 128
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = -1


@dataclass
class SegmentResult:
    """Test metrics in percent (``dice``: of the foreground, for two-class tasks)."""

    protocol: str
    miou: float
    per_class_iou: dict[str, float]
    dice: float | None
    pixel_acc: float
    labelled_images: int
    test_images: int
    steps: int
    seconds: float
    image_size: int
    random_init: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    # A second observer's masks on the test split scored as a prediction of the first's
    # (the human reference: ``observer_agreement``), when the split has them.
    observer: dict[str, Any] | None = None
    # The same model scored on further test splits (another hospital, another camera):
    # one dict per split with ``test`` and the metrics above.
    transfer: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """For JSON: NaN (a class absent from prediction and truth) becomes null."""
        d = asdict(self)
        d["per_class_iou"] = _nulls(self.per_class_iou)
        for t in d["transfer"]:
            t["per_class_iou"] = _nulls(t["per_class_iou"])
        return d


def _nulls(ious: dict[str, float]) -> dict[str, float | None]:
    return {k: None if math.isnan(v) else v for k, v in ious.items()}


def observer_agreement(test: SegmentationFolder) -> dict[str, Any] | None:
    """Score a second observer (the split's first ``masks_*/`` folder, e.g. ``masks_2nd``)
    as a prediction of the first, over the same scored pixels: the agreement of two humans,
    the reference a model's Dice is read against. Masks with a single value over the scored
    pixels where the first observer has several (an all-foreground export, as the shared
    DRIVE test ``masks_2nd`` are) are left out and listed in ``suspect``; ``None`` when the
    split has no other observer."""
    from selfsup.data.sources import DataError

    others = sorted(d.name for d in test.root.iterdir()
                    if d.is_dir() and d.name.startswith("masks_"))  # fmt: skip
    if not others:
        return None
    name = others[0]
    try:
        second = SegmentationFolder(test.root, masks=name)
    except DataError as err:
        return {"masks": name, "error": str(err)}
    by_stem = {s: i for i, s in enumerate(second.stems)}
    conf = SegConfusion(test.num_classes, test.ignore_index)
    suspect, used = [], 0
    for i, stem in enumerate(test.stems):
        if stem not in by_stem:
            continue
        truth = test.load(i).mask
        other = second.load(by_stem[stem]).mask
        scored = truth != test.ignore_index
        if _distinct(other[scored]) == 1 and _distinct(truth[scored]) > 1:
            suspect.append(str(second.mask_path(by_stem[stem])))
            continue
        conf.update(other.masked_fill(~scored, 0)[None], truth[None])
        used += 1
    res = conf.result(list(test.classes)) if used else None
    return {
        "masks": name, "images": used, "suspect": suspect,
        "miou": None if res is None else float(res["miou"]),
        "dice": None if res is None or res["dice"] is None else float(res["dice"]),
    }  # fmt: skip


class SegSet(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A folder's images and masks through a paired transform: random crops ``(C, S, S)``
    and their masks ``(S, S)`` with :class:`SegTrain`; whole images resized for the model
    ``(C, h, w)`` and full-resolution masks ``(H, W)`` with :class:`SegEval` (ignored and
    out-of-field-of-view pixels hold the ignore index)."""

    def __init__(self, folder: SegmentationFolder, transform: SegTrain | SegEval,
                 channels: int) -> None:  # fmt: skip
        self.folder, self.transform, self.channels = folder, transform, channels

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.folder.load(i)
        x, y = self.transform(s.image, s.mask)
        return _channels(x, self.channels), y


def _channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """A colour image for a grey backbone is averaged; a grey one for colour repeated."""
    if x.shape[0] == channels:
        return x
    if channels == 1:
        return x.mean(0, keepdim=True)
    return x.expand(channels, -1, -1) if x.shape[0] == 1 else x


def build_model(
    backbone: nn.Module, num_classes: int, cfg: SegmentConfig, channels: int = 3
) -> DenseModel:
    """The linear head on a frozen backbone, or the FPN / U-Net decoder on a trainable one."""
    specs = backbone.dense_specs()  # type: ignore[operator]
    if cfg.protocol == "linear":
        head: nn.Module = LinearSegHead([specs[-1].channels], num_classes)
        return DenseModel(backbone, head, freeze_backbone=True, levels=[len(specs) - 1])
    if cfg.decoder == "unet":
        head = UNetDecoder(specs, num_classes, in_chans=channels, width=cfg.decoder_width)
    elif cfg.decoder == "fpn":
        head = FPNDecoder(specs, num_classes, width=cfg.decoder_width)
    else:
        raise ValueError(f"decoder {cfg.decoder!r} is not one of {', '.join(DECODERS)}")
    return DenseModel(backbone, head, freeze_backbone=False)


class SegmentationTask:
    """Pixel-wise cross-entropy (ignore index skipped) on training crops; a confusion matrix
    per test image; ``score`` = mIoU (Dice of the foreground for two-class tasks)."""

    def __init__(self, model: DenseModel, num_classes: int, ignore_index: int,
                 backbone_lr_scale: float) -> None:  # fmt: skip
        self.model = model
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.backbone_lr_scale = backbone_lr_scale
        self.classes: list[str] = [str(i) for i in range(num_classes)]

    def param_groups(self) -> list[dict[str, Any]]:
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": head, "lr_scale": 1.0}]
        if not self.model.freeze_backbone:
            backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
            groups.append({"params": backbone, "lr_scale": self.backbone_lr_scale})
        return groups

    def train_mode(self) -> None:
        self.model.train()  # a frozen backbone stays in eval mode (DenseModel.train)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits.float(), y, ignore_index=self.ignore_index), {}

    def eval_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The confusion matrix ``(K, K)`` of one batch of test images, at mask resolution."""
        x, y = batch
        logits = self.model(x)
        logits = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear",
                               align_corners=False)  # fmt: skip
        conf = SegConfusion(self.num_classes, self.ignore_index)
        conf.update(logits.argmax(1).cpu(), y.cpu())
        return conf.matrix

    def metrics(self, outputs: list[torch.Tensor]) -> dict[str, float]:
        """``miou``, ``pixel_acc``, ``dice`` (NaN unless two classes), ``iou/<class>``;
        ``score``: Dice for two-class tasks, else mIoU."""
        conf = SegConfusion(self.num_classes, self.ignore_index)
        conf.matrix = torch.stack(outputs).sum(0)
        res = conf.result(self.classes)
        dice = math.nan if res["dice"] is None else float(res["dice"])
        out = {"miou": float(res["miou"]), "dice": dice, "pixel_acc": float(res["pixel_acc"])}
        out |= {f"iou/{k}": float(v) for k, v in res["per_class_iou"].items()}
        return {"score": out["miou"] if math.isnan(dice) else dice, **out}


def loop_config(cfg: SegmentConfig, progress: bool | None) -> LoopConfig:
    """AdamW, linear warm-up then cosine decay over ``max_steps`` (the reproducible budget)."""
    return LoopConfig(
        epochs=10**6, max_steps=cfg.max_steps, batch_size=cfg.batch_size, eval_batch_size=1,
        lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer="adamw",
        warmup_steps=int(cfg.warmup_fraction * cfg.max_steps), device=cfg.device,
        precision=cfg.precision, num_workers=cfg.num_workers, seed=cfg.seed,
        progress=progress, desc=f"segment ({cfg.protocol})",
    )  # fmt: skip


def train_segmenter(
    backbone: nn.Module,
    train: SegmentationFolder,
    test: SegmentationFolder,
    mean: list[float],
    std: list[float],
    channels: int,
    cfg: SegmentConfig,
    random_init: bool = False,
    progress: bool | None = None,
    also_test: list[SegmentationFolder] | None = None,
) -> tuple[DenseModel, SegmentResult]:
    """Train a segmenter on ``train`` (all of it: sample it first for few labels) and test it
    once on ``test`` (and on each of ``also_test``, into ``result.transfer``).
    ``random_init`` trains the backbone at the head's learning rate."""
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"protocol {cfg.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    t0 = time.perf_counter()
    scale = 1.0 if random_init else cfg.backbone_lr_scale

    def build() -> SegmentationTask:  # called by the loop once seeded
        model = build_model(backbone, train.num_classes, cfg, channels)
        task = SegmentationTask(model, train.num_classes, train.ignore_index, scale)
        task.classes = list(train.classes)
        return task

    loop = SupervisedLoop(build, loop_config(cfg, progress))
    train_set = SegSet(
        train,
        SegTrain(
            cfg.image_size, mean, std, ignore_index=train.ignore_index, base_size=cfg.image_size
        ),
        channels,
    )
    for other in also_test or []:
        _same_classes(train, other)
    run = loop.fit(train_set)
    m = loop.evaluate(SegSet(test, SegEval(cfg.image_size, mean, std), channels))
    transfer = []
    for other in also_test or []:
        t = loop.evaluate(SegSet(other, SegEval(cfg.image_size, mean, std), channels))
        transfer.append({
            "test": str(other.root), "test_images": len(other), "miou": t["miou"],
            "dice": None if math.isnan(t["dice"]) else t["dice"], "pixel_acc": t["pixel_acc"],
            "per_class_iou": {k[4:]: v for k, v in t.items() if k.startswith("iou/")},
            "observer": observer_agreement(other),
        })  # fmt: skip
    result = SegmentResult(
        protocol=cfg.protocol, miou=m["miou"],
        per_class_iou={k[4:]: v for k, v in m.items() if k.startswith("iou/")},
        dice=None if math.isnan(m["dice"]) else m["dice"], pixel_acc=m["pixel_acc"],
        labelled_images=len(train), test_images=len(test), steps=run.steps,
        seconds=time.perf_counter() - t0, image_size=cfg.image_size, random_init=random_init,
        settings=asdict(cfg), observer=observer_agreement(test), transfer=transfer,
    )  # fmt: skip
    return loop.task.model, result


def _distinct(values: torch.Tensor) -> int:
    return int(torch.unique(values).numel())


def _same_classes(train: SegmentationFolder, other: SegmentationFolder) -> None:
    from selfsup.data.sources import DataError

    if list(other.classes) != list(train.classes):
        raise DataError(
            f"{other.root} has classes {other.classes} but the training split {train.root} "
            f"has {train.classes}; a further test split needs the same classes in the same "
            "order (a classes.json beside it, or the same 0/255 binary masks)."
        )


def dense_backbone(method: nn.Module) -> nn.Module:
    """The backbone a method is evaluated with (e.g. a DINO teacher), as a module with
    ``forward_dense``; a method whose feature extractor wraps it gives its own backbone."""
    fe = method.feature_extractor()  # type: ignore[operator]
    for candidate in (fe, getattr(fe, "backbone", None), getattr(method, "backbone", None)):
        if candidate is not None and hasattr(candidate, "forward_dense"):
            return candidate  # type: ignore[no-any-return]
    raise ValueError(f"{type(method).__name__} has no backbone with dense features.")


def evaluate_segmentation(
    run: str | Path,
    train: str | Path,
    test: str | Path,
    cfg: SegmentConfig | None = None,
    *,
    fraction: float | None = None,
    shots: int | None = None,
    random_init: bool = False,
    progress: bool | None = None,
    save: str | Path | None = None,
    also_test: list[str | Path] | None = None,
) -> SegmentResult:
    """Train a segmenter on the labelled split folder ``train`` (``fraction`` of its images
    or ``shots`` images, drawn with ``cfg.seed``) from the run's backbone (or its untrained
    twin with ``random_init``) and score it once on ``test``. ``save``: a folder that
    receives ``<name>.json`` (the result) and ``<name>.png`` (a few test images, their
    truth and the prediction); the run's report shows both. ``also_test``: further test
    splits (same classes) the trained model is scored on too (``result.transfer``)."""
    import copy

    from selfsup.data.segmentation import open_segmentation
    from selfsup.runs import load_run

    cfg = cfg or SegmentConfig()
    loaded = load_run(run, random_init)
    backbone = copy.deepcopy(dense_backbone(loaded.method)).float()
    train_folder = open_segmentation(train)
    if fraction is not None or shots is not None:
        train_folder = train_folder.sample(fraction=fraction, shots=shots, seed=cfg.seed)
    test_folder = open_segmentation(test)
    d = loaded.config.data
    channels = loaded.config.backbone.in_chans
    others = [open_segmentation(p) for p in also_test or []]
    model, result = train_segmenter(backbone, train_folder, test_folder, list(d.mean),
                                    list(d.std), channels, cfg, random_init, progress,
                                    others)  # fmt: skip
    result.settings |= {"checkpoint": str(loaded.file), "train": str(train), "test": str(test),
                        "fraction": fraction, "shots": shots}  # fmt: skip
    if save is not None:
        name = result_name("segment", cfg.protocol, train, fraction, shots, cfg.seed, random_init)
        folder = Path(save)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(result.as_dict(), indent=2))
        from selfsup.viz.dense import segmentation_figure  # matplotlib: only when saving

        rows = predict_examples(model, test_folder, cfg.image_size, list(d.mean), list(d.std),
                                channels)  # fmt: skip
        segmentation_figure(rows, test_folder.num_classes, test_folder.ignore_index,
                            folder / f"{name}.png")  # fmt: skip
    return result


def result_name(task: str, protocol: str, train: str | Path, fraction: float | None,
                shots: int | None, seed: int, random_init: bool) -> str:  # fmt: skip
    """A file name telling results apart: task, protocol, data, labels, seed, init."""
    split = Path(train).resolve()
    labels = (
        "all"
        if fraction is None and shots is None
        else (f"{fraction:g}" if fraction is not None else f"{shots}-images")
    )
    init = "-random-init" if random_init else ""
    return f"{task}-{protocol}-{split.parent.name}-{split.name}-{labels}-seed{seed}{init}"


@torch.no_grad()
def predict_examples(model: nn.Module, folder: SegmentationFolder, image_size: int,
                     mean: list[float], std: list[float], channels: int, n: int = 4
                     ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """(image uint8 (3, H, W), truth (H, W), prediction (H, W)) of the first ``n`` images."""
    device = next(model.parameters()).device
    model.eval()
    transform, rows = SegEval(image_size, mean, std), []
    for i in range(min(n, len(folder))):
        s = folder.load(i)
        x, y = transform(s.image, s.mask)
        logits = model(_channels(x, channels)[None].to(device)).float()
        logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        image = s.image if s.image.shape[0] == 3 else s.image.expand(3, -1, -1)
        rows.append((image, y, logits.argmax(1)[0].cpu()))
    return rows
