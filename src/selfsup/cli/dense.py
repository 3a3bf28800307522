"""``selfsup eval segment`` and ``selfsup eval detect``: dense tasks on a run's backbone,
trained with the labels given and scored once on the test split; ``--random-init`` trains
the same network from its untrained weights with the same labels and budget."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from selfsup.cli.common import (
    Formatter,
    Subparsers,
    add_progress_flags,
    print_table,
    record_eval,
)

EVAL_PROTOCOLS = ("segment", "detect")

SEGMENT_DESCRIPTION = """\
Train a segmenter on a labelled split folder (images/ + masks/ with the same stems; masks of
class indices with classes.json beside or above, or 0/255; optional fov/: only pixels inside
are scored) from the run's backbone, and score it once on --test at full resolution.
  linear:   frozen backbone, BatchNorm + 1x1 head on its last dense features (DINOv2)
  finetune: the backbone at --backbone-lr-scale x the head's rate under a light decoder
            (--decoder fpn: at the finest backbone stride; unet: at full resolution, for
            structures a pixel or two wide such as vessels; CNN backbones)
--random-init: the same network untrained (its backbone learns at the head's rate).
A test split with a second observer (masks_2nd/) also reports that observer's agreement
with the first; --also-test scores the trained model on further splits (another hospital
or camera) with the same classes."""

DETECT_DESCRIPTION = """\
Fine-tune a Mask R-CNN (torchvision) with a feature pyramid over the run's backbone on a COCO
split folder (annotations.json; masks from polygons/RLE or masks/<stem>.png instance values)
and score it once on --test with pycocotools: box AP, AP50 and mask AP.
--random-init: the same network untrained (its backbone learns at the head's rate)."""


def add_eval_parsers(evs: Subparsers) -> None:
    from selfsup.tasks.detection import DetectConfig
    from selfsup.tasks.segmentation import SegmentConfig

    seg = evs.add_parser("segment", help="semantic segmentation: mIoU, per-class IoU, Dice",
                         formatter_class=Formatter, description=SEGMENT_DESCRIPTION)  # fmt: skip
    s = SegmentConfig()
    seg.add_argument("--protocol", dest="seg_protocol", choices=("linear", "finetune"),
                     default=s.protocol, metavar="{linear,finetune}",
                     help="linear (frozen backbone) or finetune (default: %(default)s)")  # fmt: skip
    seg.add_argument("--decoder", choices=("fpn", "unet"), default=s.decoder,
                     help="finetune decoder (default: %(default)s)")  # fmt: skip
    seg.add_argument("--also-test", action="append", default=None, metavar="DIR",
                     help="a further test split scored by the same model; repeatable "
                     "(default: none)")  # fmt: skip
    _common(seg, s, "AdamW learning rate of the head", "training crop side; test images are "
            "resized to this shorter side and scored at full resolution")  # fmt: skip
    det = evs.add_parser("detect", help="object detection and instance masks: COCO AP",
                         formatter_class=Formatter, description=DETECT_DESCRIPTION)  # fmt: skip
    _common(det, DetectConfig(), "SGD learning rate of the new parts",
            "longer image side inside the model; boxes are scored in the original image")  # fmt: skip


def _common(p: argparse.ArgumentParser, d: Any, lr_help: str, size_help: str) -> None:
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="run folder or checkpoint file (required)")  # fmt: skip
    p.add_argument("--train", required=True, help="labelled training split folder (required)")
    p.add_argument("--test", required=True, help="test split folder, scored once (required)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fraction", type=float, default=None,
                   help="use this fraction of the training images (default: all)")  # fmt: skip
    g.add_argument("--shots", type=int, default=None,
                   help="use this many training images (default: all)")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed,
                   help="draws the labelled images and seeds training (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=d.max_steps,
                   help="optimiser steps: the budget, the same for SSL and random init "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--image-size", type=int, default=d.image_size, help=f"{size_help} (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="images a step (default: %(default)s)")  # fmt: skip
    p.add_argument("--lr", type=float, default=d.lr, help=f"{lr_help} (default: %(default)s)")
    p.add_argument("--backbone-lr-scale", type=float, default=d.backbone_lr_scale,
                   help="pretrained backbone's learning rate / the head's (default: %(default)s)")  # fmt: skip
    p.add_argument("--random-init", action="store_true",
                   help="the run's network untrained: the scratch baseline (default: false)")  # fmt: skip
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--precision", default="auto", help="auto, bf16, fp16, fp32 (default: auto)")
    p.add_argument("--workers", type=int, default=-1, help="data workers (default: auto)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (default: false)")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="folder for <name>.json and <name>.png (a few test images with truth and "
                   "prediction), shown by selfsup report (default: <run>/dense)")  # fmt: skip
    p.add_argument("--no-save", action="store_true", help="write no files (default: false)")
    add_progress_flags(p)


def _settings(a: argparse.Namespace) -> dict[str, Any]:
    return dict(
        image_size=a.image_size, max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr,
        backbone_lr_scale=a.backbone_lr_scale, seed=a.seed, device=a.device,
        precision=a.precision, num_workers=a.workers,
    )  # fmt: skip


def _observer_rows(obs: dict[str, Any] | None, prefix: str) -> list[tuple[str, str]]:
    """The second observer's agreement with the first, or why there is none."""
    if obs is None:
        return []
    if obs.get("error"):
        return [(f"{prefix}{obs['masks']}", f"unusable: {obs['error']}")]
    what = "Dice" if obs["dice"] is not None else "mIoU"
    value = obs["dice"] if obs["dice"] is not None else obs["miou"]
    shown = "-" if value is None else f"{value:.2f}"
    rows = [(f"{prefix}{obs['masks']} vs masks: {what} (%)", shown)]
    if obs["suspect"]:
        rows.append((f"{prefix}{obs['masks']} left out", f"{len(obs['suspect'])} single-valued "
                     f"mask(s), e.g. {obs['suspect'][0]}"))  # fmt: skip
    return rows


def _save_folder(a: argparse.Namespace) -> Path | None:
    if a.no_save:
        return None
    if a.save is not None:
        return Path(a.save)
    from selfsup.runs import run_folder
    from selfsup.train import checkpoint as ckpt_io

    return run_folder(ckpt_io.resolve(a.checkpoint)) / "dense"


def run(a: argparse.Namespace) -> int:
    what = "random init" if a.random_init else "pretrained"
    kw = dict(fraction=a.fraction, shots=a.shots, random_init=a.random_init,
              progress=not a.no_progress, save=_save_folder(a))  # fmt: skip
    rows: list[tuple[str, str]]
    if a.protocol == "segment":
        from selfsup.tasks.segmentation import SegmentConfig, evaluate_segmentation

        cfg = SegmentConfig(protocol=a.seg_protocol, decoder=a.decoder, **_settings(a))
        res: Any = evaluate_segmentation(a.checkpoint, a.train, a.test, cfg,
                                         also_test=a.also_test, **kw)  # fmt: skip
        title = f"segment ({res.protocol}, {what})"
        rows = [("mIoU (%)", f"{res.miou:.2f}")]
        if res.dice is not None:
            rows.append(("Dice of the foreground (%)", f"{res.dice:.2f}"))
        rows.append(("pixel accuracy (%)", f"{res.pixel_acc:.2f}"))
        rows += [(f"IoU {k} (%)", "-" if v != v else f"{v:.2f}")
                 for k, v in res.per_class_iou.items()]  # fmt: skip
        rows += _observer_rows(res.observer, "")
        for t in res.transfer:
            where = Path(t["test"]).name or t["test"]
            rows.append((f"{where}: mIoU (%)", f"{t['miou']:.2f}"))
            if t["dice"] is not None:
                rows.append((f"{where}: Dice of the foreground (%)", f"{t['dice']:.2f}"))
            rows += _observer_rows(t["observer"], f"{where}: ")
    else:
        from selfsup.tasks.detection import DetectConfig, evaluate_detection

        res = evaluate_detection(a.checkpoint, a.train, a.test, DetectConfig(**_settings(a)), **kw)
        title = f"detect ({what})"
        rows = [("box AP (%)", f"{res.box_ap:.2f}"), ("box AP50 (%)", f"{res.box_ap50:.2f}")]
        if res.mask_ap is not None:
            rows.append(("mask AP (%)", f"{res.mask_ap:.2f}"))
    record_eval(a, res.as_dict())
    if a.json:
        print(json.dumps(res.as_dict()))
        return 0
    rows += [("labelled images", str(res.labelled_images)), ("steps", str(res.steps)),
             ("seconds", f"{res.seconds:.0f}")]  # fmt: skip
    print_table(title, rows)
    return 0
