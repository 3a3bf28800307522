"""``selfsup pretrain``, and the commands that describe what it can train: ``methods`` and
``config``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from selfsup.cli.common import Formatter, Subparsers, add_progress_flags, fmt_default, parse_bool

EPILOG_PRETRAIN = """\
any config key can be set after the options as key=value, e.g.
  selfsup pretrain --method simclr --data DIR --out runs/a optim.lr=0.3 method.temperature=0.2
see every key and its default with: selfsup config --method simclr

examples:
  selfsup pretrain --method simclr --data ../shared/datasets/cifar10/train --out runs/simclr --max-time 10m
  selfsup pretrain --resume runs/simclr                   # continue exactly where it stopped
  selfsup pretrain --config configs/simclr_cifar10.yaml --out runs/b train.batch_size=128
  selfsup pretrain --teacher runs/big --backbone timm:mobilenetv3_small_100 --data DIR --out runs/small
"""

# (flag, config key or None, type, help). Help strings carry tuning advice; defaults are
# read from the config dataclasses so --help never drifts from the code.
PRETRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    (
        "--data",
        "data.path",
        str,
        "folder of images (any depth; class sub-folders are ignored "
        "for pretraining) or a named set: cifar10, cifar100, stl10",
    ),
    ("--data-root", "data.root", str, "where a named set is read from or downloaded to"),
    (
        "--image-size",
        "data.image_size",
        int,
        "training resolution in px (unset: the images' own size up to 64 px, else 224)",
    ),
    ("--limit", "data.limit", int, "use at most this many images (class-balanced subset)"),
    ("--workers", "data.num_workers", int, "data-loading processes (-1: up to 4)"),
    (
        "--augment",
        "data.augment",
        str,
        "where augmentations run: cpu (per image in workers), device (whole batches on the "
        "training device; the fast choice on GPUs, where a few CPU workers cannot keep up), "
        "auto (device on GPU, cpu on CPU)",
    ),
    (
        "--cache",
        "data.cache",
        str,
        "folder for a decoded-image cache (each image decoded once into a memory-mapped "
        "uint8 file; worth it for large JPEGs whose raw pixels fit on disk)",
    ),
    (
        "--bad-files",
        "data.bad_files",
        str,
        "unreadable images: skip (listed in skipped.txt) or fail",
    ),
    (
        "--normalize",
        "data.normalize",
        str,
        "given (data.mean/std, ImageNet by default) or auto (measured on the data; use it for "
        "medical, satellite or other non-photographic images)",
    ),
    (
        "--channels",
        "backbone.in_chans",
        int,
        "image channels the model takes: 3 colour, 1 grayscale, N for N-band TIFFs "
        "(grayscale images are repeated to 3 unless 1)",
    ),
    (
        "--backbone",
        "backbone.name",
        str,
        "resnet18, resnet50, ... or any timm model as timm:NAME (e.g. timm:vit_tiny_patch16_224)",
    ),
    (
        "--small-stem",
        "backbone.small_stem",
        "bool",
        "ResNet 3x3 stem without max-pool "
        "(true/false; unset: automatic for images of 64 px or less)",
    ),
    ("--epochs", "train.epochs", int, "passes over the data (with no budget at all: 100)"),
    ("--steps", "train.steps", int, "optimiser steps"),
    (
        "--max-time",
        "train.max_time",
        str,
        "time budget such as 90s, 10m, 1h30m; schedules "
        "follow it and a checkpoint is written when it runs out",
    ),
    (
        "--batch-size",
        "train.batch_size",
        int,
        "images per step (each gives one image per "
        "view); contrastive methods like large batches, but on a CPU 128-256 trains fastest per "
        "second",
    ),
    (
        "--lr",
        "optim.lr",
        float,
        "learning rate for a batch of 256 (scaled linearly with the batch size)",
    ),
    ("--optimizer", "optim.name", str, "sgd, lars (large batches) or adamw (ViTs)"),
    (
        "--precision",
        "train.precision",
        str,
        "auto, bf16, fp16 or fp32; auto picks bf16 on GPUs "
        "and on CPUs with fast bf16 (AVX-512 bf16 / AMX), about 2x faster than fp32",
    ),
    ("--device", "train.device", str, "auto, cpu, cuda, cuda:N"),
    ("--seed", "train.seed", int, "seed for weights, data order and augmentations"),
    ("--threads", "train.threads", int, "CPU threads for the model (unset: one per core)"),
    ("--compile", "train.compile", "bool", "torch.compile the model (true/false)"),
    (
        "--val-data",
        "monitor.val_path",
        str,
        "labelled folder for the online kNN monitor "
        "(unset: hold out monitor.holdout labelled training images when labels exist)",
    ),
]


def _defaults(method: str = "simclr") -> dict[str, Any]:
    from selfsup import config as C

    return C.flat_defaults(C.default_config(method))


def add_parser(sub: Subparsers) -> None:
    defaults = _defaults()
    pt = sub.add_parser(
        "pretrain", help="train a self-supervised method on unlabeled images",
        description="Pretrain a self-supervised method. Writes config.yaml, metrics.csv, "
        "tensorboard/, checkpoints/last.pt and summary.json into --out.",
        formatter_class=Formatter, epilog=EPILOG_PRETRAIN,
    )  # fmt: skip
    pt.add_argument(
        "--method",
        default=None,
        help="method name, see `selfsup methods` (default: simclr, or the config's)",
    )
    pt.add_argument("--out", default=None, help="run folder (default: runs/<method>)")
    pt.add_argument("--config", default=None, help="YAML config file (default: none)")
    pt.add_argument(
        "--resume",
        default=None,
        metavar="RUN",
        help="continue a run folder exactly (step, LR, optimizer, RNG) (default: none)",
    )
    pt.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out folder (default: false)"
    )
    for flag, key, typ, help_ in PRETRAIN_FLAGS:
        pt.add_argument(
            flag,
            dest=key,
            type=parse_bool if typ == "bool" else typ,
            default=None,
            metavar=flag[2:].upper().replace("-", "_"),
            help=f"{help_} (default: {fmt_default(defaults.get(key))})",
        )
    pt.add_argument(
        "--teacher",
        default=None,
        metavar="RUN",
        help="method distill: the frozen teacher, a run folder, checkpoint or hf export; its "
        "embedding of each view is what the student learns to reproduce (implies --method "
        "distill; the same as method.teacher=RUN) (default: none)",
    )
    add_progress_flags(pt)
    pt.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config and exit (default: false)",
    )
    pt.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. optim.lr=0.3 method.temperature=0.2",
    )
    pt.set_defaults(handler=run_pretrain)


def _print_config(a: argparse.Namespace, options: dict[str, Any]) -> None:
    from selfsup import api
    from selfsup import config as C

    if a.resume:
        from selfsup.train import checkpoint as ckpt_io

        saved = ckpt_io.load(a.resume)["config"]
        cfg = api.make_config(config=saved, overrides=a.overrides, **options)
    else:
        cfg = api.make_config(a.method, a.config, a.overrides, **options)
    print(C.to_yaml(cfg), end="")


def run_pretrain(a: argparse.Namespace) -> int:
    from selfsup import api

    if a.teacher is not None:
        if a.method not in (None, "distill"):
            from selfsup.config import ConfigError

            raise ConfigError(f"--teacher is for --method distill, not --method {a.method}.")
        if a.method is None and a.config is None:
            a.method = "distill"
        a.overrides = [*a.overrides, f"method.teacher={os.path.abspath(a.teacher)}"]
    values = {key: getattr(a, key) for _, key, _, _ in PRETRAIN_FLAGS}
    options = {short: values[key] for short, key in api.SHORTCUTS.items() if key in values}
    options = {k: v for k, v in options.items() if v is not None}
    if a.print_config:
        _print_config(a, options)
        return 0
    out = a.out
    if out is None and a.resume is None:
        name = a.method or "simclr"
        if a.config and not a.method:
            name = api.make_config(None, a.config, a.overrides, **options).method.name
        out = os.path.join("runs", name)
    from selfsup import dist
    from selfsup.train import distributed

    try:
        result = api.pretrain(
            a.method, out=out, config=a.config, overrides=a.overrides, resume=a.resume,
            overwrite=a.overwrite, progress=not a.no_progress, **options,
        )  # fmt: skip
        main = dist.is_main()
    finally:
        distributed.cleanup()
    if not main:
        return 0
    s = result.state
    if result.stopped_by == "already complete":
        print(
            f"already complete: {result.out_dir} trained its whole budget ({s.step} steps, "
            f"{s.images_seen} images, {s.elapsed:.0f}s); nothing to do. To train further, "
            f"resume with a larger budget, e.g. --resume {result.out_dir} --steps {2 * s.step} "
            "(or --epochs / --max-time); the schedule then spans the new budget."
        )
        return 0
    line = (
        f"done ({result.stopped_by}): {s.step} steps, {s.images_seen} images, "
        f"{s.elapsed:.0f}s training, {result.images_per_s:.1f} img/s, peak memory "
        f"{result.peak_memory_mb:.0f} MiB"
    )
    if result.monitor:
        line += f", kNN monitor top-1 {result.monitor['knn_top1']:.2f}%"
    print(line)
    print(f"run folder: {result.out_dir}")
    return 0


# ----------------------------------------------------------------------------- methods, config


def add_methods_parser(sub: Subparsers) -> None:
    me = sub.add_parser(
        "methods",
        help="list registered methods",
        formatter_class=Formatter,
        description="List the registered self-supervised methods.",
    )
    me.add_argument("--json", action="store_true", help="print JSON (default: false)")
    me.set_defaults(handler=run_methods)


def run_methods(a: argparse.Namespace) -> int:
    import json

    from selfsup.registry import get_method_class, list_methods

    info = []
    for name in list_methods():
        cls = get_method_class(name)
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        info.append({"name": name, "class": cls.__name__, "summary": doc})
    if a.json:
        print(json.dumps(info))
    else:
        for m in info:
            print(f"{m['name']:<14} {m['summary']}")
    return 0


def add_config_parser(sub: Subparsers) -> None:
    cf = sub.add_parser(
        "config",
        help="print a method's full default config as YAML",
        formatter_class=Formatter,
        description="Print every config key with its default (YAML), ready "
        "to edit and pass back with --config.",
    )
    cf.add_argument("--method", default="simclr", help="method name (default: simclr)")
    cf.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides applied before printing, e.g. train.batch_size=128",
    )
    cf.set_defaults(handler=run_config)


def run_config(a: argparse.Namespace) -> int:
    from selfsup import config as C

    print(C.to_yaml(C.build_config(method=a.method, overrides=a.overrides)), end="")
    return 0
