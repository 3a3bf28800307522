"""Object detection and instance segmentation on any run's backbone: torchvision's Mask
R-CNN (He et al., 2017) with a feature pyramid (Lin et al., 2017) over the backbone's dense
features, fine-tuned end to end; COCO box AP, AP50 and mask AP from pycocotools.

ResNets give the pyramid their four stages; a ViT's single stride-p map becomes three levels
(2x up, 1x, 2x down), as ViTDet's simple feature pyramid (Li et al., 2022) does. Images are
resized inside the model so their longer side is ``image_size``; predictions come back in
the original image's coordinates, where they are scored.
"""

from __future__ import annotations

import copy
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from selfsup.data.coco import CocoDetection
from selfsup.train.supervised import LoopConfig, SupervisedLoop


@dataclass
class DetectConfig:
    """Fixed hyper-parameters of the detection protocol (the same for SSL and scratch)."""

    # Longer image side inside the model (the shorter follows the aspect ratio).
    image_size: int = 512
    max_steps: int = 300
    batch_size: int = 2
    # SGD learning rate (momentum 0.9) of the new parts and of a random-init backbone.
    lr: float = 0.02
    # The pretrained backbone's learning rate relative to the rest.
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    # FPN channels; the box head's hidden width; the mask head's width.
    fpn_width: int = 128
    box_head: int = 512
    mask_head: int = 128
    warmup_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = -1


@dataclass
class DetectResult:
    """COCO AP in percent over IoU 0.50:0.95 (``box_ap``, ``mask_ap``) and at 0.50."""

    box_ap: float
    box_ap50: float
    mask_ap: float | None
    mask_ap50: float | None
    labelled_images: int
    test_images: int
    steps: int
    seconds: float
    image_size: int
    random_init: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PyramidBackbone(nn.Module):
    """``forward(x) -> OrderedDict`` of FPN maps with ``out_channels`` each, as torchvision's
    detectors expect, from a backbone's ``forward_dense``."""

    def __init__(self, backbone: nn.Module, width: int) -> None:
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        super().__init__()
        self.body = backbone
        specs = backbone.dense_specs()  # type: ignore[operator]
        self.simple = len(specs) == 1
        chans = [s.channels for s in specs]
        if self.simple:  # ViT: one map -> 2x up, 1x, 2x down (ViTDet's simple pyramid)
            c = chans[0]
            self.up = nn.ConvTranspose2d(c, c, 2, stride=2)
            chans = [c, c, c]
        self.fpn = FeaturePyramidNetwork(chans, width, extra_blocks=LastLevelMaxPool())
        self.out_channels = width
        self.levels = len(chans) + 1

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body.forward_dense(x)  # type: ignore[operator]
        if self.simple:
            m = maps[-1]
            maps = [self.up(m), m, nn.functional.max_pool2d(m, 2)]
        out: OrderedDict[str, torch.Tensor] = self.fpn(
            OrderedDict((str(i), f) for i, f in enumerate(maps))
        )
        return out


def build_detector(backbone: nn.Module, num_classes: int, with_masks: bool, cfg: DetectConfig,
                   mean: list[float], std: list[float]) -> nn.Module:  # fmt: skip
    """A Mask R-CNN (Faster R-CNN without masks) sized for small data and CPUs."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    body = PyramidBackbone(backbone, cfg.fpn_width)
    names = [str(i) for i in range(body.levels - 1)]
    sizes = tuple((32 * 2**i,) for i in range(body.levels))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * body.levels)
    w = cfg.fpn_width
    kw: dict[str, Any] = dict(
        num_classes=None, rpn_anchor_generator=anchors, min_size=cfg.image_size,
        max_size=cfg.image_size, image_mean=mean, image_std=std,
        box_roi_pool=MultiScaleRoIAlign(names, 7, 2),
        box_head=TwoMLPHead(w * 7 * 7, cfg.box_head),
        box_predictor=FastRCNNPredictor(cfg.box_head, num_classes + 1),
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=256,
    )  # fmt: skip
    if not with_masks:
        faster: nn.Module = FasterRCNN(body, **kw)
        return faster
    m = cfg.mask_head
    mask: nn.Module = MaskRCNN(
        body, mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
        mask_head=MaskRCNNHeads(w, [m, m], 1), mask_predictor=MaskRCNNPredictor(m, m, num_classes + 1),
        **kw,
    )  # fmt: skip
    return mask


class DetectionSet(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """Images ``(3, H, W)`` float in [0, 1] and their targets; ``train`` flips half of them."""

    def __init__(self, data: CocoDetection, train: bool, channels: int) -> None:
        self.data, self.train, self.channels = data, train, channels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = self.data.load(i)
        x = image.float() / 255
        if self.channels == 1 and x.shape[0] == 3:
            x = x.mean(0, keepdim=True)
        if self.train and bool(torch.rand(()) < 0.5):
            x, target = hflip(x, target)
        return x, target


def hflip(
    x: torch.Tensor, target: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mirror an image ``(C, H, W)`` with its boxes (x1, y1, x2, y2) and masks."""
    w = x.shape[-1]
    t = dict(target)
    b = t["boxes"].clone()
    b[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
    t["boxes"] = b
    if "masks" in t:
        t["masks"] = t["masks"].flip(-1)
    return x.flip(-1), t


def collate_detection(batch: list[Any]) -> tuple[Any, ...]:
    """Detection batches are lists: images differ in size."""
    return tuple(zip(*batch, strict=True))


class DetectionTask:
    """Mask R-CNN's summed losses on training batches; COCO results per test batch; ``score``
    = box AP."""

    collate = staticmethod(collate_detection)

    def __init__(self, model: nn.Module, data: CocoDetection, backbone_lr_scale: float) -> None:
        self.model, self.data = model, data
        self.backbone_lr_scale = backbone_lr_scale

    def param_groups(self) -> list[dict[str, Any]]:
        body: nn.Module = self.model.backbone.body  # type: ignore[assignment,union-attr]
        ids = {id(p) for p in body.parameters()}
        rest = [p for p in self.model.parameters() if id(p) not in ids and p.requires_grad]
        backbone = [p for p in body.parameters() if p.requires_grad]
        return [{"params": rest, "lr_scale": 1.0},
                {"params": backbone, "lr_scale": self.backbone_lr_scale}]  # fmt: skip

    def loss(self, batch: tuple[Any, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
        images, targets = batch
        losses = self.model(list(images), list(targets))
        total: torch.Tensor = sum(v.float() for v in losses.values())
        return total, {k: v.detach() for k, v in losses.items()}

    def eval_step(self, batch: tuple[Any, ...]) -> list[list[dict[str, Any]]]:
        images, targets = batch
        outs = self.model(list(images))
        return [coco_results(o, int(t["image_id"]), self.data.category_ids) for o, t in
                zip(outs, targets, strict=True)]  # fmt: skip

    def metrics(self, outputs: list[list[list[dict[str, Any]]]]) -> dict[str, float]:
        rows = [r for batch in outputs for image in batch for r in image]
        m = coco_ap(self.data.ground_truth(), rows, self.data.has_masks)
        return {"score": m["box_ap"], **m}


def coco_results(out: dict[str, torch.Tensor], image_id: int,
                 category_ids: list[int]) -> list[dict[str, Any]]:  # fmt: skip
    """One image's detections as COCO result rows (boxes x, y, w, h; masks as RLE)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    boxes = out["boxes"].float().cpu()
    rows = []
    masks = out.get("masks")
    for j in range(len(boxes)):
        x1, y1, x2, y2 = boxes[j].tolist()
        row: dict[str, Any] = {
            "image_id": image_id, "category_id": category_ids[int(out["labels"][j]) - 1],
            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(out["scores"][j]),
        }  # fmt: skip
        if masks is not None:
            binary = (masks[j, 0] > 0.5).cpu().numpy().astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(binary))
            rle["counts"] = rle["counts"].decode("ascii")
            row["segmentation"] = rle
        rows.append(row)
    return rows


def coco_ap(gt: Any, rows: list[dict[str, Any]], with_masks: bool) -> dict[str, float]:
    """Box (and mask) AP and AP50 in percent from pycocotools' COCOeval; 0 when nothing was
    detected."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    out = {"box_ap": 0.0, "box_ap50": 0.0}
    if with_masks:
        out |= {"mask_ap": 0.0, "mask_ap50": 0.0}
    if not rows:
        return out
    kinds = [("bbox", "box")] + ([("segm", "mask")] if with_masks else [])
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables
        dt = gt.loadRes(rows)
        for iou_type, key in kinds:
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[f"{key}_ap"] = max(0.0, float(ev.stats[0]) * 100)
            out[f"{key}_ap50"] = max(0.0, float(ev.stats[1]) * 100)
    return out


def loop_config(cfg: DetectConfig, progress: bool | None) -> LoopConfig:
    """SGD with momentum, warm-up then cosine decay over ``max_steps``, gradients clipped."""
    return LoopConfig(
        epochs=10**6, max_steps=cfg.max_steps, batch_size=cfg.batch_size, eval_batch_size=2,
        lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer="sgd", nesterov=False,
        warmup_steps=int(cfg.warmup_fraction * cfg.max_steps), grad_clip=10.0,
        device=cfg.device, precision=cfg.precision, num_workers=cfg.num_workers,
        seed=cfg.seed, progress=progress, desc="detect",
    )  # fmt: skip


def train_detector(backbone: nn.Module, train: CocoDetection, test: CocoDetection,
                   mean: list[float], std: list[float], channels: int, cfg: DetectConfig,
                   random_init: bool = False, progress: bool | None = None
                   ) -> tuple[nn.Module, DetectResult]:  # fmt: skip
    """Fine-tune a detector on ``train`` and score it once on ``test``."""
    t0 = time.perf_counter()
    scale = 1.0 if random_init else cfg.backbone_lr_scale
    masks = train.has_masks and test.has_masks

    def build() -> DetectionTask:
        model = build_detector(backbone, len(train.classes), masks, cfg, mean, std)
        return DetectionTask(model, test, scale)

    loop = SupervisedLoop(build, loop_config(cfg, progress))
    run = loop.fit(DetectionSet(train, True, channels))
    m = loop.evaluate(DetectionSet(test, False, channels))
    result = DetectResult(
        box_ap=m["box_ap"], box_ap50=m["box_ap50"], mask_ap=m.get("mask_ap"),
        mask_ap50=m.get("mask_ap50"), labelled_images=len(train), test_images=len(test),
        steps=run.steps, seconds=time.perf_counter() - t0, image_size=cfg.image_size,
        random_init=random_init, settings=asdict(cfg),
    )  # fmt: skip
    return loop.task.model, result


def evaluate_detection(
    run: str | Path,
    train: str | Path,
    test: str | Path,
    cfg: DetectConfig | None = None,
    *,
    fraction: float | None = None,
    shots: int | None = None,
    random_init: bool = False,
    progress: bool | None = None,
    save: str | Path | None = None,
) -> DetectResult:
    """Fine-tune a detector on the COCO split folder ``train`` from the run's backbone (or
    its untrained twin with ``random_init``) and score it once on ``test``. ``save``: a
    folder that receives ``<name>.json`` (the result) and ``<name>.png`` (a few test images
    with true boxes in green, predicted boxes and masks in red)."""
    from selfsup.runs import load_run
    from selfsup.tasks.segmentation import dense_backbone

    cfg = cfg or DetectConfig()
    loaded = load_run(run, random_init)
    backbone = copy.deepcopy(dense_backbone(loaded.method)).float()
    train_data = CocoDetection(train)
    if fraction is not None or shots is not None:
        train_data = train_data.sample(fraction=fraction, shots=shots, seed=cfg.seed)
    d = loaded.config.data
    test_data = CocoDetection(test)
    channels = loaded.config.backbone.in_chans
    model, result = train_detector(backbone, train_data, test_data, list(d.mean), list(d.std),
                                   channels, cfg, random_init, progress)  # fmt: skip
    result.settings |= {"checkpoint": str(loaded.file), "train": str(train), "test": str(test),
                        "fraction": fraction, "shots": shots}  # fmt: skip
    if save is not None:
        from selfsup.tasks.segmentation import result_name
        from selfsup.viz.dense import detection_figure

        name = result_name("detect", "finetune", train, fraction, shots, cfg.seed, random_init)
        folder = Path(save)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(result.as_dict(), indent=2))
        detection_figure(predict_examples(model, test_data, channels), folder / f"{name}.png")
    return result


@torch.no_grad()
def predict_examples(model: nn.Module, data: CocoDetection, channels: int, n: int = 4
                     ) -> list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:  # fmt: skip
    """(image uint8 (3, H, W), true boxes (N, 4), predictions) of the first ``n`` images."""
    device = next(model.parameters()).device
    model.eval()
    rows = []
    for i in range(min(n, len(data))):
        image, target = data.load(i)
        x, _ = DetectionSet(data, False, channels)[i]
        out = {k: v.float().cpu() for k, v in model([x.to(device)])[0].items()}
        rows.append((image, target["boxes"], out))
    return rows
