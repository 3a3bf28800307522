"""The ``selfsup`` command line. Every command is a thin layer over :mod:`selfsup.api`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from selfsup import __version__

EPILOG_PRETRAIN = """\
any config key can be set after the options as key=value, e.g.
  selfsup pretrain --method simclr --data DIR --out runs/a optim.lr=0.3 method.temperature=0.2
see every key and its default with: selfsup config --method simclr

examples:
  selfsup pretrain --method simclr --data ../shared/datasets/cifar10/train --out runs/simclr --max-time 10m
  selfsup pretrain --resume runs/simclr                   # continue exactly where it stopped
  selfsup pretrain --config configs/simclr_cifar10.yaml --out runs/b train.batch_size=128
"""


def _defaults(method: str = "simclr") -> dict[str, Any]:
    from selfsup import config as C

    return C.flat_defaults(C.default_config(method))


def _fmt_default(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


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


def _bool(text: str) -> bool:
    t = text.lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    defaults = _defaults()
    p = argparse.ArgumentParser(
        prog="selfsup",
        description="Self-supervised pretraining for vision: learn from unlabeled images, "
        "then measure what was learned with few labels.",
        formatter_class=_Formatter,
        epilog="run `selfsup COMMAND --help` for each command's options.",
    )
    p.add_argument("--version", action="version", version=f"selfsup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # -- pretrain
    pt = sub.add_parser(
        "pretrain", help="train a self-supervised method on unlabeled images",
        description="Pretrain a self-supervised method. Writes config.yaml, metrics.csv, "
        "tensorboard/, checkpoints/last.pt and summary.json into --out.",
        formatter_class=_Formatter, epilog=EPILOG_PRETRAIN,
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
        conv = _bool if typ == "bool" else typ
        pt.add_argument(
            flag,
            dest=key,
            type=conv,
            default=None,
            metavar=flag[2:].upper().replace("-", "_"),
            help=f"{help_} (default: {_fmt_default(defaults.get(key))})",
        )
    pt.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
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

    # -- eval
    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: knn, linear, fewshot, finetune, scratch, selftrain",
        formatter_class=_Formatter,
        description="Evaluate frozen features of a checkpoint.",
    )
    evs = ev.add_subparsers(dest="protocol", metavar="PROTOCOL")
    knn = evs.add_parser(
        "knn",
        help="weighted k-nearest-neighbour accuracy",
        formatter_class=_Formatter,
        description="kNN on frozen features: cosine similarity to the "
        "training features, votes weighted by exp(similarity/temperature).",
    )
    lin = evs.add_parser(
        "linear",
        help="linear probe with a learning-rate sweep",
        formatter_class=_Formatter,
        description="Linear probe on frozen features computed once and "
        "cached. A sweep of learning rates and weight decays trains in "
        "parallel; the best on a validation split carved from --train is "
        "applied once to --test.",
    )
    for e in (knn, lin):
        e.add_argument(
            "--checkpoint",
            default=None,
            metavar="RUN",
            help="run folder or checkpoint file (default: none; required unless "
            "--random-init with --backbone)",
        )
        e.add_argument(
            "--train",
            required=True,
            help="labelled training images: folder with class sub-folders or a "
            "named set (required)",
        )
        e.add_argument(
            "--test", required=True, help="labelled test images: folder or named set (required)"
        )
        e.add_argument(
            "--data-root",
            default=None,
            help="where named sets are read from (default: ~/.cache/selfsup/data)",
        )
        e.add_argument(
            "--random-init",
            action="store_true",
            help="evaluate the untrained network with the run's initial weights "
            "(the floor) instead of the trained one (default: false)",
        )
        e.add_argument(
            "--floor",
            action="store_true",
            help="evaluate both the trained and the random-init network and show "
            "the gain (default: false)",
        )
        e.add_argument(
            "--backbone",
            default="resnet18",
            help="backbone for --random-init without a checkpoint (default: resnet18)",
        )
        e.add_argument(
            "--image-size",
            type=int,
            default=None,
            help="resolution (default: the checkpoint's, else automatic)",
        )
        e.add_argument(
            "--limit-train",
            type=int,
            default=None,
            help="use at most this many training images (default: all)",
        )
        e.add_argument(
            "--limit-test",
            type=int,
            default=None,
            help="use at most this many test images (default: all)",
        )
        e.add_argument(
            "--batch-size", type=int, default=256, help="feature extraction batch (default: 256)"
        )
        e.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
        e.add_argument(
            "--precision",
            default="auto",
            help="auto, bf16, fp32 for feature extraction (default: auto)",
        )
        e.add_argument(
            "--no-cache",
            action="store_true",
            help="do not read or write <run>/eval_cache features (default: cache)",
        )
        e.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object on stdout instead of a table (default: false)",
        )
        e.add_argument(
            "--progress",
            action="store_true",
            help="show feature extraction progress (default: false)",
        )
    knn.add_argument("--k", type=int, default=200, help="neighbours that vote (default: 200)")
    knn.add_argument(
        "--temperature",
        type=float,
        default=0.1,
        help="vote weight exp(sim/T); lower values trust the nearest "
        "neighbours more (default: 0.1)",
    )
    lin.add_argument(
        "--lrs",
        default=",".join(str(x) for x in _lin_defaults()[0]),
        help="comma-separated learning rates to sweep (default: %(default)s)",
    )
    lin.add_argument(
        "--wds",
        default=",".join(str(x) for x in _lin_defaults()[1]),
        help="comma-separated weight decays to sweep (default: %(default)s)",
    )
    lin.add_argument(
        "--epochs", type=int, default=30, help="epochs over the cached features (default: 30)"
    )
    lin.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of --train held out to choose the sweep's winner (default: 0.1)",
    )

    # -- few-label protocols (eval fewshot/finetune/scratch/selftrain, experiment)
    _add_fewlabel_parsers(evs, sub)

    # -- data
    da = sub.add_parser(
        "data",
        help="inspect data: data check PATH",
        formatter_class=_Formatter,
        description="Tools for image folders.",
    )
    das = da.add_subparsers(dest="data_command", metavar="ACTION")
    dc = das.add_parser(
        "check", formatter_class=_Formatter, help="scan a folder and report what is in it",
        description="Scan every image under PATH in parallel: counts, formats, colour modes, "
        "bit depths, channels, sizes, unreadable files, exact duplicates, and per-channel "
        "mean/std as training sees them (reused by pretrain --normalize auto).",
    )  # fmt: skip
    dc.add_argument("path", help="folder of images (any depth)")
    dc.add_argument(
        "--channels",
        type=int,
        default=3,
        help="channels the images are converted to for statistics (default: 3)",
    )
    dc.add_argument(
        "--out",
        default="data_report.json",
        help="report file (default: data_report.json); a copy is cached for --normalize auto",
    )
    dc.add_argument(
        "--workers",
        type=int,
        default=None,
        help="scanning processes (default: one per core, up to 8)",
    )
    dc.add_argument("--json", action="store_true", help="print the report as JSON (default: false)")

    # -- methods, config
    me = sub.add_parser(
        "methods",
        help="list registered methods",
        formatter_class=_Formatter,
        description="List the registered self-supervised methods.",
    )
    me.add_argument("--json", action="store_true", help="print JSON (default: false)")
    cf = sub.add_parser(
        "config",
        help="print a method's full default config as YAML",
        formatter_class=_Formatter,
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
    _add_export_parser(sub)
    _add_viz_parsers(sub)
    _add_embed_curate_parsers(sub)
    return p


def _finetune_options(p: argparse.ArgumentParser) -> None:
    from selfsup.eval.finetune import FinetuneConfig

    d = FinetuneConfig()
    p.add_argument(
        "--val-per-class",
        type=int,
        default=10,
        help="validation images a class carved from --train (extra labels, used "
        "only to choose the epoch) (default: 10)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help=f"maximum epochs; early stopping may end sooner (default: {d.epochs})",
    )
    p.add_argument(
        "--max-time",
        default=None,
        help="wall-clock budget per training run, e.g. 3m; results then depend on the "
        "machine's load, prefer --max-steps for figures you report (default: none)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="cap on optimiser steps per training run; the learning-rate schedule "
        "spans the cap, so results are reproducible on any machine (default: none)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"images a step (default: {d.batch_size})",
    )
    p.add_argument(
        "--lr", type=float, default=d.lr, help=f"head learning rate, SGD + cosine (default: {d.lr})"
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=d.backbone_lr_scale,
        help="backbone lr as a fraction of --lr for pretrained backbones; small "
        f"values refine rather than overwrite them (default: {d.backbone_lr_scale})",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help=f"epochs without validation gain before stopping (default: {d.patience})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"seed of the labelled draw and training (default: {d.seed})",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--workers", type=int, default=-1, help="data workers (default: -1, up to 4)")


def _finetune_config(a: argparse.Namespace) -> Any:
    from selfsup.eval.finetune import FinetuneConfig

    return FinetuneConfig(epochs=a.epochs, max_time=a.max_time, max_steps=a.max_steps,
                          batch_size=a.batch_size, lr=a.lr,
                          backbone_lr_scale=a.backbone_lr_scale, patience=a.patience,
                          seed=a.seed, device=a.device, num_workers=a.workers)  # fmt: skip


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _add_fewlabel_parsers(evs: Any, sub: Any) -> None:
    common = dict(formatter_class=_Formatter)
    fs = evs.add_parser("fewshot", help="k labelled images a class: linear and nearest-centroid",
                        description="Few-shot evaluation on frozen features: for each k, "
                        "seeded stratified draws of k images a class; a logistic regression "
                        "(L2 chosen by cross-validation on the k-shot set) and a nearest-centroid "
                        "classifier; mean and std over draws.", **common)  # fmt: skip
    fs.add_argument(
        "--shots", default="1,5,10,30,100", help="comma-separated k (default: %(default)s)"
    )
    fs.add_argument("--seeds", type=int, default=5, help="draws for each k (default: 5)")
    for name, help_, desc in (
        (
            "finetune",
            "fine-tune the whole network on a label subset",
            "Fine-tune backbone + linear head on k images a class (--shots) or a fraction of "
            "the labels (--fraction), with light augmentation, a lower backbone learning rate "
            "(layer-wise decay for ViTs) and early stopping on a validation split from --train.",
        ),
        (
            "scratch",
            "train the same network from scratch on the same labels",
            "The baseline for every SSL number: the same backbone from random initialisation, "
            "trained on the same labelled subset with the same budget and augmentation.",
        ),
        (
            "selftrain",
            "fine-tuned teacher + pseudo-labels -> student",
            "Self-training: the fine-tuned SSL model labels the unlabelled training images; "
            "confident, class-balanced pseudo-labels plus the true labels train a student under "
            "strong augmentation; reports the gain over the teacher.",
        ),
    ):
        p = evs.add_parser(name, help=help_, description=desc, **common)
        p.add_argument(
            "--shots",
            type=int,
            default=None,
            help="labelled images a class (default: none; or --fraction)",
        )
        p.add_argument(
            "--fraction",
            type=float,
            default=None,
            help="fraction of the labelled images, e.g. 0.01 (default: none)",
        )
        _finetune_options(p)
        if name == "selftrain":
            p.add_argument(
                "--threshold",
                type=float,
                default=0.7,
                help="minimum teacher confidence for a pseudo-label (default: 0.7)",
            )
            p.add_argument(
                "--max-per-class",
                type=int,
                default=500,
                help="pseudo-labels a class at most (default: 500)",
            )
            p.add_argument(
                "--pool-limit",
                type=int,
                default=10000,
                help="unlabelled images the teacher labels at most (default: 10000)",
            )
        if name != "selftrain":
            p.add_argument(
                "--confusion",
                default=None,
                help="write the test confusion matrix PNG here (default: none)",
            )
    for p in (fs, *[evs.choices[n] for n in ("finetune", "scratch", "selftrain")]):
        p.add_argument(
            "--checkpoint",
            required=True,
            metavar="RUN",
            help="run folder or checkpoint file (required)",
        )
        p.add_argument("--train", required=True, help="labelled training images (required)")
        p.add_argument("--test", required=True, help="labelled test images (required)")
        p.add_argument("--data-root", default=None, help="where named sets live (default: none)")
        p.add_argument(
            "--json", action="store_true", help="one JSON object on stdout (default: false)"
        )

    ex = sub.add_parser("experiment", help="multi-protocol experiments: label-efficiency",
                        description="Experiments that combine protocols.", **common)  # fmt: skip
    exs = ex.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    le = exs.add_parser("label-efficiency", **common,
                        help="accuracy against labels a class: scratch, SSL+linear, "
                        "SSL+fine-tune, SSL+self-training",
                        description="Runs every protocol at each label budget and writes "
                        "label_efficiency.md, .json and .png (plus confusion matrices) into "
                        "--out. Works on any labelled ImageFolder.")  # fmt: skip
    le.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder (required)")
    le.add_argument("--train", required=True, help="labelled training images (required)")
    le.add_argument("--test", required=True, help="labelled test images (required)")
    le.add_argument("--data-root", default=None, help="where named sets live (default: none)")
    le.add_argument("--out", default=None, help="output folder (default: RUN/label_efficiency)")
    le.add_argument("--shots", default="10,30,100", help="labels a class (default: %(default)s)")
    le.add_argument("--seeds", type=int, default=3, help="draws for SSL+linear (default: 3)")
    le.add_argument(
        "--protocols",
        default="scratch,linear,finetune,selftrain",
        help="which protocols (default: %(default)s)",
    )
    le.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="self-training confidence threshold (default: 0.7)",
    )
    le.add_argument(
        "--pool-limit",
        type=int,
        default=10000,
        help="unlabelled images for self-training (default: 10000)",
    )
    _finetune_options(le)


def cmd_fewlabel(a: argparse.Namespace) -> int:
    from selfsup import experiments

    if a.protocol == "fewshot":
        res: Any = experiments.evaluate_fewshot(a.checkpoint, a.train, a.test,
                                                shots=_int_list(a.shots), seeds=a.seeds,
                                                data_root=a.data_root)  # fmt: skip
        out = res.as_dict()
        rows = [(f"{r.shots} shots ({r.labels_used} labels)",
                 f"linear {r.linear_top1_mean:.2f} ± {r.linear_top1_std:.2f} | centroid "
                 f"{r.centroid_top1_mean:.2f} ± {r.centroid_top1_std:.2f}") for r in res.results]  # fmt: skip
    else:
        cfg = _finetune_config(a)
        kw = dict(shots=a.shots, fraction=a.fraction, val_per_class=a.val_per_class, config=cfg,
                  data_root=a.data_root)  # fmt: skip
        if a.protocol == "selftrain":
            out = experiments.evaluate_selftrain(a.checkpoint, a.train, a.test, threshold=a.threshold,
                                                 max_per_class=a.max_per_class,
                                                 pool_limit=a.pool_limit, **kw)  # fmt: skip
            t, s = out["teacher"]["test"], out["student"]["test"]
            rows = [("teacher top-1 / balanced", f"{t['top1']:.2f} / {t['balanced']:.2f}"),
                    ("student top-1 / balanced", f"{s['top1']:.2f} / {s['balanced']:.2f}"),
                    ("gain (points)", f"{out['gain_top1']:+.2f}"),
                    ("pseudo-labels (accuracy)",
                     f"{out['pseudo_labels']} ({out['pseudo_label_accuracy']:.1f}%)"),
                    ("true labels", str(out["true_labels"]))]  # fmt: skip
        else:
            rep = experiments.evaluate_finetune(a.checkpoint, a.train, a.test,
                                                random_init=a.protocol == "scratch",
                                                confusion_png=a.confusion, **kw)  # fmt: skip
            out = rep.as_dict()
            m = rep.test
            rows = [("top-1 (%)", f"{m.top1:.2f}"), (f"top-{m.k} (%)", f"{m.topk:.2f}"),
                    ("balanced accuracy (%)", f"{m.balanced:.2f}"),
                    ("validation top-1 (%)", f"{rep.val_top1:.2f}"),
                    ("kept epoch / run", f"{rep.best_epoch} / {rep.epochs_run}"),
                    ("training labels", str(rep.train_images)),
                    ("validation labels", str(rep.val_images)),
                    ("seconds", f"{rep.seconds:.1f}")]  # fmt: skip
            rows += [(f"  {c}", f"{v:.1f}") for c, v in zip(m.classes, m.per_class, strict=True)]
    if a.json:
        print(json.dumps(out, default=str))
    else:
        _print_table(f"{a.protocol}: {a.checkpoint}", rows)
    return 0


def cmd_experiment(a: argparse.Namespace) -> int:
    from selfsup import experiments
    from selfsup.config import ConfigError

    if a.experiment != "label-efficiency":
        raise ConfigError("choose an experiment: selfsup experiment label-efficiency ...")
    out = a.out or str(__import__("pathlib").Path(a.checkpoint) / "label_efficiency")
    res = experiments.label_efficiency(
        a.checkpoint, a.train, a.test, out, shots=_int_list(a.shots), seeds=a.seeds,
        val_per_class=a.val_per_class, protocols=tuple(a.protocols.split(",")),
        config=_finetune_config(a), data_root=a.data_root, threshold=a.threshold,
        pool_limit=a.pool_limit,
    )  # fmt: skip
    print(experiments._markdown(res))
    print(f"written: {out}/label_efficiency.md, .json, .png")
    return 0


def _lin_defaults() -> tuple[tuple[float, ...], tuple[float, ...]]:
    from selfsup.eval.linear import DEFAULT_LRS, DEFAULT_WDS

    return DEFAULT_LRS, DEFAULT_WDS


# ----------------------------------------------------------------------------- commands


def cmd_pretrain(a: argparse.Namespace) -> int:
    from selfsup import api
    from selfsup import config as C

    values = {key: getattr(a, key) for _, key, _, _ in PRETRAIN_FLAGS}
    options = {short: values[key] for short, key in api.SHORTCUTS.items() if key in values}
    options = {k: v for k, v in options.items() if v is not None}
    if a.print_config:
        if a.resume:
            from selfsup.train import checkpoint as ckpt_io

            saved = ckpt_io.load(a.resume)["config"]
            cfg = api.make_config(config=saved, overrides=a.overrides, **options)
        else:
            cfg = api.make_config(a.method, a.config, a.overrides, **options)
        print(C.to_yaml(cfg), end="")
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


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def cmd_eval(a: argparse.Namespace) -> int:
    from selfsup import api
    from selfsup.config import ConfigError
    from selfsup.eval import KNNResult, LinearResult

    if a.protocol is None:
        raise ConfigError(
            "choose a protocol: selfsup eval knn|linear|fewshot|finetune|scratch|selftrain"
        )
    if a.protocol in ("fewshot", "finetune", "scratch", "selftrain"):
        return cmd_fewlabel(a)
    if a.checkpoint is None and not a.random_init:
        raise ConfigError("pass --checkpoint RUN (or --random-init to evaluate an untrained net).")
    if a.floor and a.checkpoint is None:
        raise ConfigError("--floor compares a checkpoint with its random init: pass --checkpoint.")

    def model_for(random_init: bool) -> Any:
        if a.checkpoint is not None:
            return a.checkpoint
        cfg = api.make_config("simclr", backbone=a.backbone, image_size=a.image_size or 32)
        return api.build_method(cfg).feature_extractor()

    kw: dict[str, Any] = dict(
        data_root=a.data_root, image_size=a.image_size, batch_size=a.batch_size,
        device=a.device, precision=a.precision, limit_train=a.limit_train,
        limit_test=a.limit_test, progress=a.progress, cache=not a.no_cache,
    )  # fmt: skip

    def run(random_init: bool) -> dict[str, Any]:
        model = model_for(random_init)
        r: KNNResult | LinearResult
        extra = {"random_init": random_init} if isinstance(model, str) else {}
        if a.protocol == "knn":
            r = api.evaluate_knn(model, a.train, a.test, k=a.k, temperature=a.temperature,
                                 **kw, **extra)  # fmt: skip
        else:
            lrs = tuple(float(x) for x in a.lrs.split(","))
            wds = tuple(float(x) for x in a.wds.split(","))
            r = api.evaluate_linear(model, a.train, a.test, lrs=lrs, weight_decays=wds,
                                    epochs=a.epochs, val_fraction=a.val_fraction, **kw, **extra)  # fmt: skip
        return r.as_dict()

    main = run(a.random_init)
    out: dict[str, Any] = {"protocol": a.protocol, "checkpoint": a.checkpoint,
                           "random_init": a.random_init, **main}  # fmt: skip
    if a.floor:
        floor = run(True)
        out["floor"] = floor
        out["gain_top1"] = main["top1"] - floor["top1"]
    if a.json:
        print(json.dumps(out))
        return 0
    what = "random init" if a.random_init else (a.checkpoint or "")
    rows = [("top-1 (%)", f"{main['top1']:.2f}"), ("top-5 (%)", f"{main['top5']:.2f}")]
    if a.floor:
        rows += [
            ("random-init floor top-1 (%)", f"{out['floor']['top1']:.2f}"),
            ("gain over floor (points)", f"{out['gain_top1']:+.2f}"),
        ]
    if a.protocol == "knn":
        rows += [("k", str(main["k"])), ("temperature", str(main["temperature"]))]
    else:
        rows += [
            ("validation top-1 (%)", f"{main['val_top1']:.2f}"),
            ("chosen lr / weight decay", f"{main['lr']} / {main['weight_decay']}"),
            ("chosen epoch", f"{main['epoch']} of {main['epochs']}"),
            ("validation images", str(main["n_val"])),
        ]
    rows += [
        ("train images", str(main["n_train"])),
        ("test images", str(main["n_test"])),
        ("seconds", f"{main['seconds'] + (out['floor']['seconds'] if a.floor else 0):.1f}"),
    ]
    _print_table(f"{a.protocol} evaluation: {what}", rows)
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from selfsup.config import ConfigError
    from selfsup.data.check import check_folder, save_report

    if a.data_command != "check":
        raise ConfigError("choose an action: selfsup data check PATH")
    report = check_folder(a.path, channels=a.channels, workers=a.workers)
    written = save_report(report, a.out)
    if a.json:
        print(json.dumps(report))
        return 0
    w, h = report["width"], report["height"]
    rows = [
        ("files", str(report["files"])),
        ("readable", str(report["readable"])),
        ("unreadable", str(len(report["unreadable"]))),
        ("exact duplicates", f"{report['duplicate_files']} in {len(report['duplicates'])} groups"),
        ("labelled (class folders)", f"{report['labelled']} ({len(report['classes'])} classes)"),
        ("formats", _counts(report["formats"])),
        ("modes", _counts(report["modes"])),
        ("bit depths", _counts(report["bit_depths"])),
        ("channels", _counts(report["native_channels"])),
        ("width min / median / max", f"{w.get('min')} / {w.get('median')} / {w.get('max')}"),
        ("height min / median / max", f"{h.get('min')} / {h.get('median')} / {h.get('max')}"),
        (f"mean ({report['channels']} ch)", ", ".join(f"{m:.4f}" for m in report["mean"])),
        (f"std ({report['channels']} ch)", ", ".join(f"{s:.4f}" for s in report["std"])),
        ("seconds", str(report["seconds"])),
    ]
    _print_table(f"data check: {report['path']}", rows)
    for bad in report["unreadable"][:10]:
        print(f"unreadable: {bad['file']}: {bad['error']}")
    if len(report["unreadable"]) > 10:
        print(f"... and {len(report['unreadable']) - 10} more (see the report)")
    print(f"report: {written[0]}")
    return 0


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def cmd_methods(a: argparse.Namespace) -> int:
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


def cmd_config(a: argparse.Namespace) -> int:
    from selfsup import config as C

    print(C.to_yaml(C.build_config(method=a.method, overrides=a.overrides)), end="")
    return 0


EPILOG_EXPORT = """\
examples:
  selfsup export runs/simclr --format torchvision      # -> runs/simclr/export/torchvision/
  selfsup export runs/dino --format onnx --student --out deploy/dino-student
  selfsup export runs/mae/checkpoints/last.pt --format safetensors --out weights/

each export folder holds the model file and preprocessing.json: input size, channels,
mean/std, resize, architecture and build keywords, embed dim, and Python lines that load it.
"""


def _add_export_parser(sub: Any) -> None:
    from selfsup.export import FILES, FORMATS

    ex = sub.add_parser(
        "export", help="export a run's backbone (no heads) for use without selfsup",
        formatter_class=_Formatter, epilog=EPILOG_EXPORT,
        description="Export the backbone a run evaluates with, without projection heads: "
        "images (B, C, S, S) -> features (B, D), with its preprocessing in preprocessing.json. "
        "The written file is loaded back and its features compared with the run's.",
    )  # fmt: skip
    ex.add_argument("run", metavar="RUN", help="run folder or checkpoint file (required)")
    files = ", ".join(f"{f}: {FILES[f]}" for f in FORMATS)
    ex.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="torchvision / timm: a state dict for the stock model (strict=True), only for "
        "backbones of that library; safetensors: the same state dict, loads without running "
        "code; onnx: for onnxruntime, dynamic batch (needs pip install 'selfsup[export]'); "
        f"torchscript: traced, for torch.jit.load. Files: {files} (required)",
    )
    ex.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder to write (default: RUN/export/FORMAT)",
    )
    who = ex.add_mutually_exclusive_group()
    who.add_argument(
        "--teacher",
        dest="which",
        action="store_const",
        const="teacher",
        default=None,
        help="export the EMA teacher (DINO teacher, BYOL target, MoCo momentum encoder) "
        "(default: unset: the backbone the method evaluates with, i.e. the teacher for "
        "DINO/DINOv2 with method.eval_teacher=true, else the online network)",
    )
    who.add_argument(
        "--student",
        dest="which",
        action="store_const",
        const="student",
        help="export the trained (online) backbone of a method with an EMA teacher "
        "(default: unset, see --teacher)",
    )
    ex.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier export in --out (default: false)",
    )
    ex.add_argument(
        "--no-verify",
        action="store_true",
        help="skip loading the file back and comparing its features with the run's "
        "(default: verify)",
    )
    ex.add_argument(
        "--json", action="store_true", help="print preprocessing.json on stdout (default: false)"
    )


def cmd_export(a: argparse.Namespace) -> int:
    from selfsup.export import export_backbone

    res = export_backbone(a.run, a.format, a.out, which=a.which, verify=not a.no_verify,
                          overwrite=a.overwrite)  # fmt: skip
    if a.json:
        print(json.dumps(res.info))
        return 0
    arch = res.info["architecture"]
    role = res.info["source"]["role"]
    print(f"exported the {role} {arch['backbone']} ({res.info['embed_dim']}-d features) "
          f"as {res.format}:")  # fmt: skip
    for f in res.files:
        print(f"  {f}")
    check = res.info.get("check")
    if check and check["max_abs_diff"] is not None:
        print(f"check: max |exported - run| = {check['max_abs_diff']:.2g} ({check['note']})")
    elif check:
        print(f"check: {check['note']}")
    return 0


EPILOG_VIZ = """\
kinds:
  embedding-map   2-D map of the embeddings (--algo pca|tsne|umap), coloured by class
  retrieval       query images and their --k nearest neighbours (cosine), green/red borders
  attention       ViT class-token self-attention per head (DINO-style)
  gradcam         Grad-CAM of a logistic-regression probe's class, for CNN backbones
  patch-pca       PCA of ViT patch features as colours (DINOv2-style)
  reconstruction  MAE masked input / reconstruction / original
  augmentations   the method's training views of a few images
  curves          training curves from the run's metrics.csv

examples:
  selfsup viz embedding-map --checkpoint runs/simclr --data cifar10 --algo tsne --out map.png
  selfsup viz retrieval --checkpoint runs/simclr --data ../shared/datasets/cifar10/test --out nn.png
  selfsup viz gradcam --checkpoint runs/simclr --data DIR --class-index cat --out cam.png
  selfsup viz curves --checkpoint runs/simclr --out curves.png
without --data, figures use the run's own data.path when it is still there.
"""

# (flag, keyword of the figure functions, type, help); a flag a kind does not use is refused.
VIZ_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--data", "data", str, "images: a folder (class sub-folders give labels) or a named set "
     "(default: the run's data.path)"),
    ("--data-root", "data_root", str, "where named sets are read from (default: none)"),
    ("--split", "split", str, "split of a named set (default: test)"),
    ("--queries", "queries", str, "retrieval, gradcam: folder of the images to show (default: "
     "drawn from --data)"),
    ("--algo", "algo", str, "embedding-map: pca (instant), tsne (clusters, ~10 s for 2,000 "
     "images) or umap (needs umap-learn) (default: tsne)"),
    ("--limit", "limit", int, "embedding-map, retrieval bank, gradcam probe: at most this many "
     "images, class-balanced (default: 2000; retrieval 1000)"),
    ("--num-images", "num_images", int, "images shown (default: 6 or 8; augmentations 4)"),
    ("--num-views", "num_views", int, "augmentations: views a row; more than the method "
     "draws per sample shows further samples (default: the method's, e.g. 2 SimCLR, 8 DINO)"),
    ("--k", "k", int, "retrieval: neighbours a query (default: 8)"),
    ("--class-index", "class_index", str, "gradcam: explain this class (index or name) for "
     "every image (default: each image's predicted class)"),
    ("--threshold", "threshold", float, "patch-pca: foreground when the first component, "
     "scaled to [0, 1], is above it; 0 keeps every patch (default: 0.5)"),
    ("--seed", "seed", int, "which images are drawn (default: 0)"),
    ("--device", "device", str, "feature extraction device: auto, cpu, cuda (default: auto)"),
]  # fmt: skip


def _add_viz_parsers(sub: Any) -> None:
    from selfsup.viz import KINDS

    vz = sub.add_parser(
        "viz", help="draw a figure of a run as PNG: embedding-map, retrieval, attention, ...",
        formatter_class=_Formatter, epilog=EPILOG_VIZ,
        description="Draw one figure of a trained run into a PNG file (matplotlib, no display "
        "needed). Images are shown with the run's normalisation undone.",
    )  # fmt: skip
    vz.add_argument("kind", choices=list(KINDS), metavar="KIND", help="figure: see kinds below")
    vz.add_argument("--checkpoint", required=True, metavar="RUN",
                    help="run folder or checkpoint file (required)")  # fmt: skip
    vz.add_argument("--out", required=True, metavar="FILE.png", help="PNG file to write (required)")
    for flag, key, typ, help_ in VIZ_FLAGS:
        vz.add_argument(flag, dest=key, type=typ, default=None, help=help_)

    rp = sub.add_parser(
        "report", help="one self-contained HTML page about a run",
        formatter_class=_Formatter,
        description="Write an HTML report of a run: summary, resolved config, training "
        "curves, evaluation tables found in the run folder, and the figures that apply to the "
        "run (figures/ saved by the trainer are reused). Images are embedded, no scripts or "
        "external resources: one file, readable offline.",
    )  # fmt: skip
    rp.add_argument("run", metavar="RUN", help="run folder (required)")
    rp.add_argument("--out", default=None, help="HTML file (default: RUN/report.html)")
    rp.add_argument("--data", default=None, help="images for the figures that need some "
                    "(default: the run's data.path when it is still there)")  # fmt: skip
    rp.add_argument("--data-root", default=None, help="where named sets live (default: none)")
    rp.add_argument("--split", default="test", help="split of a named set (default: test)")
    rp.add_argument("--algo", default="tsne", help="embedding map: pca, tsne, umap (default: tsne)")
    rp.add_argument("--limit", type=int, default=2000,
                    help="images for the embedding map, retrieval bank and probe (default: 2000)")  # fmt: skip
    rp.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")


def cmd_viz(a: argparse.Namespace) -> int:
    import inspect

    from selfsup import viz
    from selfsup.config import ConfigError

    takes = inspect.signature(viz.KINDS[a.kind]).parameters
    options: dict[str, Any] = {}
    for flag, key, _, _ in VIZ_FLAGS:
        value = getattr(a, key)
        if value is None:
            continue
        if key not in takes:
            raise ConfigError(f"viz {a.kind} does not use {flag}.")
        options[key] = int(value) if key == "class_index" and value.isdigit() else value
    path = viz.make(a.kind, a.checkpoint, a.out, **options)
    print(f"written: {path}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from selfsup.viz import write_report

    path = write_report(a.run, a.out, a.data, data_root=a.data_root, split=a.split,
                        algo=a.algo, limit=a.limit, device=a.device,
                        log=lambda msg: print(msg, file=sys.stderr))  # fmt: skip
    print(f"written: {path}")
    return 0


EPILOG_EMBED = """\
formats (by the --out suffix):
  .parquet  one row per image: index, path, label, class, embedding (fixed-size list<float32>);
            read with pandas.read_parquet or selfsup.read_embeddings
  .npy      the (N, D) float32 matrix, plus NAME.paths.txt (one path a line) and, for
            labelled folders, NAME.labels.txt (class index<TAB>class name a line)

examples:
  selfsup embed --checkpoint runs/simclr --data ../shared/datasets/cifar10/test --out test.parquet
  selfsup embed --checkpoint runs/simclr --data DIR --out emb.npy --l2-normalize --device cuda
"""

EPILOG_CURATE = """\
how it decides:
  exact duplicates  identical file bytes
  near duplicates   one image among the other's --dup-neighbors nearest embeddings AND
                    perceptual hashes within --hash-bits (best of the whole image and nine
                    90% crops): catches resized, re-encoded and slightly cropped copies even
                    with a weakly trained model; each group keeps its largest image
  outliers          mean cosine distance to the --outlier-k nearest embeddings as a robust
                    z-score (--outlier-z), or a model-free z-score for noise-like and blank
                    images (--degenerate-z), or, in a mostly colour data set, a colourless
                    image whose --outlier-k nearest embeddings are colourless far more often
                    than chance (p <= 0.001: a group from another source, e.g. X-rays);
                    ranked by the largest, each divided by its threshold (severity >= 1 is
                    flagged)

tuning:
  too many false near duplicates (similar but distinct images): lower --hash-bits (6);
  copies missed (heavier crops or edits): raise --hash-bits (12) and --dup-neighbors (10).
  outliers: look at outliers.png first; raise --outlier-z to flag fewer, or give
  --outliers-top N to flag exactly the N most outlying. Raise --outlier-k above the size of
  the largest group of similar stray images you expect (a cluster of 30 look-alike
  out-of-domain images hides itself from k=20).

outputs in --out: curation.json, curation.csv (one row per image, flagged first),
duplicates.png, outliers.png. --move-to moves the flagged files (never deletes), keeping
their paths relative to --data, and writes curation_manifest.json there; --undo moves back.

examples:
  selfsup curate --checkpoint runs/simclr --data photos/ --out curation/
  selfsup curate --checkpoint runs/simclr --data photos/ --move-to quarantine/ --outliers-top 50
  selfsup curate --undo quarantine/
"""


def _signature_default(func: Any, name: str) -> Any:
    import inspect

    return inspect.signature(func).parameters[name].default


def _feature_options(p: argparse.ArgumentParser, func: Any) -> None:
    """Options shared by embed and curate (defaults read from ``func``)."""

    def d(name: str) -> str:
        return _fmt_default(_signature_default(func, name))

    p.add_argument(
        "--data-root",
        default=None,
        help="where a named set is read from (default: ~/.cache/selfsup/data)",
    )
    p.add_argument(
        "--split", default=d("split"), help=f"split of a named set (default: {d('split')})"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resolution (default: the run's training resolution)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many images, class-balanced (default: all)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=_signature_default(func, "batch_size"),
        help=f"images a forward pass; memory stays bounded by it (default: {d('batch_size')})",
    )
    p.add_argument(
        "--device", default=d("device"), help=f"auto, cpu, cuda, cuda:N (default: {d('device')})"
    )
    p.add_argument(
        "--precision",
        default=d("precision"),
        help=f"auto, bf16, fp16 (GPU) or fp32; auto is bf16 on GPUs and fast-bf16 "
        f"CPUs (default: {d('precision')})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=_signature_default(func, "workers"),
        help=f"decoding processes; 0 decodes in the main process (default: "
        f"{d('workers')}: up to 4)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="use the run's architecture with its untrained initial weights (default: false)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object (default: false)")  # fmt: skip


def _add_embed_curate_parsers(sub: Any) -> None:
    from selfsup.curation import HASH_BITS, curate
    from selfsup.embeddings import embed

    em = sub.add_parser(
        "embed", help="write one embedding per image to .parquet or .npy",
        formatter_class=_Formatter, epilog=EPILOG_EMBED,
        description="Embed every image of a folder (or named set) with a run's backbone, "
        "streamed batch by batch to a Parquet or .npy file, so memory stays bounded for "
        "folders of any size. Unreadable images are skipped with a warning.",
    )  # fmt: skip
    em.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN",
        help="run folder or checkpoint file (required)",
    )
    em.add_argument(
        "--data",
        required=True,
        help="folder of images (class sub-folders give labels) or a named set (required)",
    )
    em.add_argument(
        "--out",
        default="embeddings.parquet",
        help="output file, .parquet or .npy (default: embeddings.parquet)",
    )
    em.add_argument("--l2-normalize", action="store_true",
                    help="scale each embedding to unit length, so cosine similarity is a dot "
                    "product (default: false, raw backbone features)")  # fmt: skip
    _feature_options(em, embed)

    def d(name: str) -> Any:
        return _signature_default(curate, name)

    cu = sub.add_parser(
        "curate", help="find duplicates, near duplicates and outliers; optionally quarantine",
        formatter_class=_Formatter, epilog=EPILOG_CURATE,
        description="Rank the exact duplicates, near duplicates and outliers of an image "
        "folder with a run's embedding plus cheap perceptual checks, write a report and "
        "image grids, and optionally move the flagged files to a quarantine folder.",
    )  # fmt: skip
    cu.add_argument(
        "--checkpoint",
        default=None,
        metavar="RUN",
        help="run folder or checkpoint file (required unless --undo)",
    )
    cu.add_argument(
        "--data", default=None, help="folder of images, any depth (required unless --undo)"
    )
    cu.add_argument(
        "--out", default=d("out"), metavar="DIR", help=f"report folder (default: {d('out')})"
    )
    cu.add_argument(
        "--move-to",
        default=None,
        metavar="DIR",
        help="move flagged files here, keeping their relative paths, and record "
        "them in DIR/curation_manifest.json; must be outside --data "
        "(default: move nothing)",
    )
    cu.add_argument(
        "--undo",
        default=None,
        metavar="DIR",
        help="move the files listed in DIR/curation_manifest.json back and exit (default: none)",
    )
    cu.add_argument(
        "--hash-bits",
        type=int,
        default=d("hash_bits"),
        help=f"most differing perceptual-hash bits (of {HASH_BITS}) for a near "
        f"duplicate; resized or re-encoded copies differ by 0-4, 10%% crops by "
        f"0-8, unrelated images by ~30 (default: {d('hash_bits')})",
    )
    cu.add_argument(
        "--dup-neighbors",
        type=int,
        default=d("dup_neighbors"),
        help=f"one image of a near-duplicate pair must be among the other's this many nearest "
        f"embeddings; raise it for groups of many copies "
        f"(default: {d('dup_neighbors')})",
    )
    cu.add_argument(
        "--outlier-k",
        type=int,
        default=d("outlier_k"),
        help=f"neighbours whose mean cosine distance scores an image (its own "
        f"duplicates left out) (default: {d('outlier_k')})",
    )
    cu.add_argument(
        "--outlier-z",
        type=float,
        default=d("outlier_z"),
        help=f"robust z-score of that distance from which an image is flagged; the "
        f"highest of 2,000 CIFAR-10 photos is about 4, and more images reach higher: 4 "
        f"flags more, 8 only the blatant (default: {d('outlier_z')})",
    )
    cu.add_argument(
        "--degenerate-z",
        type=float,
        default=d("degenerate_z"),
        help=f"robust z-score of the model-free noise / blank measures from which "
        f"an image is flagged; among 2,000 CIFAR-10 photos the highest is 8.5, pure noise "
        f"and flat images score about 20 (default: {d('degenerate_z')})",
    )
    cu.add_argument(
        "--outliers-top",
        type=int,
        default=None,
        metavar="N",
        help="flag exactly the N most outlying images instead of using the "
        "thresholds (default: thresholds)",
    )
    cu.add_argument(
        "--grid-outliers",
        type=int,
        default=d("grid_outliers"),
        help=f"images in outliers.png (default: {d('grid_outliers')})",
    )
    cu.add_argument("--grid-groups", type=int, default=d("grid_groups"),
                    help=f"groups in duplicates.png (default: {d('grid_groups')})")  # fmt: skip
    _feature_options(cu, curate)


def _feature_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return dict(split=a.split, data_root=a.data_root, image_size=a.image_size,
                batch_size=a.batch_size, device=a.device, precision=a.precision, limit=a.limit,
                workers=a.workers, random_init=a.random_init, progress=not a.no_progress)  # fmt: skip


def cmd_embed(a: argparse.Namespace) -> int:
    from selfsup.embeddings import embed

    res = embed(a.checkpoint, a.data, a.out, l2_normalize=a.l2_normalize, **_feature_kwargs(a))
    if a.json:
        print(json.dumps(res.as_dict()))
        return 0
    print(f"{res.rows} embeddings of {res.dim} values written to {res.path} "
          f"({res.seconds:.1f}s{f', {res.skipped} unreadable images skipped' if res.skipped else ''})")  # fmt: skip
    for p in res.sidecars:
        print(f"  {p}")
    return 0


def cmd_curate(a: argparse.Namespace) -> int:
    from selfsup.config import ConfigError
    from selfsup.curation import curate, restore_quarantine

    if a.undo:
        counts = restore_quarantine(a.undo)
        print(json.dumps(counts) if a.json else
              f"restored {counts['restored']} files; {counts['left']} left in {a.undo}"
              + (f" ({counts['missing']} no longer there)" if counts["missing"] else ""))  # fmt: skip
        return 0
    if a.checkpoint is None or a.data is None:
        raise ConfigError("selfsup curate needs --checkpoint RUN and --data DIR (or --undo DIR).")
    rep = curate(a.checkpoint, a.data, a.out, move_to=a.move_to, hash_bits=a.hash_bits,
                 dup_neighbors=a.dup_neighbors, outlier_k=a.outlier_k, outlier_z=a.outlier_z,
                 degenerate_z=a.degenerate_z, outliers_top=a.outliers_top,
                 grid_outliers=a.grid_outliers, grid_groups=a.grid_groups,
                 **_feature_kwargs(a))  # fmt: skip
    if a.json:
        print(json.dumps(rep.summary() | {"files": rep.files}))
        return 0
    s = rep.summary()
    _print_table(f"curation: {rep.data}", [
        ("images", str(s["images"])),
        ("unreadable", str(s["unreadable"])),
        ("exact duplicates (groups)", f"{s['exact_duplicates']} ({s['exact_groups']})"),
        ("near duplicates (groups)", f"{s['near_duplicates']} ({s['near_groups']})"),
        ("outliers flagged", str(s["outliers"])),
        ("moved to quarantine", str(s["moved"])),
        ("seconds", f"{rep.seconds:.1f}"),
    ])  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    top = [o for o in rep.outliers if o.path not in set(rep.flagged_duplicates)][:10]
    if top:
        t = Table(title="most outlying images (severity >= 1 is flagged)")
        for col in ("rank", "path", "severity", "why"):
            t.add_column(col)
        for o in top:
            t.add_row(str(o.rank), o.path, f"{o.severity:.2f}", o.reason)
        Console().print(t)
    if rep.groups:
        t = Table(title=f"duplicate groups (first 10 of {len(rep.groups)})")
        for col in ("group", "keep", "flagged copies"):
            t.add_column(col)
        for g in rep.groups[:10]:
            t.add_row(str(g.id), g.keep, ", ".join(f"{m.path} ({m.kind})" for m in g.members))
        Console().print(t)
    for name, path in rep.files.items():
        print(f"{name}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from selfsup.config import ConfigError
    from selfsup.data import DataError
    from selfsup.registry import UnknownNameError
    from selfsup.train import TrainingError
    from selfsup.train.checkpoint import CheckpointError

    handlers = {"pretrain": cmd_pretrain, "eval": cmd_eval, "methods": cmd_methods,
                "config": cmd_config, "data": cmd_data,
                "experiment": cmd_experiment, "export": cmd_export,
                "viz": cmd_viz, "report": cmd_report,
                "embed": cmd_embed, "curate": cmd_curate}  # fmt: skip
    try:
        return handlers[args.command](args)
    except (ConfigError, DataError, CheckpointError, UnknownNameError, TrainingError) as err:
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print(f"selfsup: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
