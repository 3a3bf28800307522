"""The few-label protocols: ``selfsup eval fewshot|finetune|scratch|selftrain`` and
``selfsup experiment label-efficiency``, which runs them side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from selfsup.cli.common import (
    Formatter,
    Subparsers,
    add_progress_flags,
    int_list,
    print_table,
    record_eval,
)

EVAL_PROTOCOLS = ("fewshot", "finetune", "scratch", "selftrain")

# What a protocol's handler gives back: the JSON object, and the rows of its table.
Table = tuple[Any, list[tuple[str, str]]]

_TRAINED = (
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
)


def _finetune_options(p: argparse.ArgumentParser) -> None:
    from selfsup.tasks.classification import FinetuneConfig

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
    from selfsup.tasks.classification import FinetuneConfig

    return FinetuneConfig(epochs=a.epochs, max_time=a.max_time, max_steps=a.max_steps,
                          batch_size=a.batch_size, lr=a.lr,
                          backbone_lr_scale=a.backbone_lr_scale, patience=a.patience,
                          seed=a.seed, device=a.device, num_workers=a.workers)  # fmt: skip


def add_eval_parsers(evs: Subparsers) -> None:
    """``eval fewshot``, ``eval finetune``, ``eval scratch`` and ``eval selftrain``."""
    fs = evs.add_parser("fewshot", help="k labelled images a class: linear and nearest-centroid",
                        description="Few-shot evaluation on frozen features: for each k, "
                        "seeded stratified draws of k images a class; a logistic regression "
                        "(L2 chosen by cross-validation on the k-shot set) and a nearest-centroid "
                        "classifier; mean and std over draws.",
                        formatter_class=Formatter)  # fmt: skip
    fs.add_argument(
        "--shots", default="1,5,10,30,100", help="comma-separated k (default: %(default)s)"
    )
    fs.add_argument("--seeds", type=int, default=5, help="draws for each k (default: 5)")
    parsers = [fs]
    for name, help_, desc in _TRAINED:
        p = evs.add_parser(name, help=help_, description=desc, formatter_class=Formatter)
        _trained_options(p, name)
        parsers.append(p)
    for p in parsers:
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
        add_progress_flags(p)


def _trained_options(p: argparse.ArgumentParser, name: str) -> None:
    """Options of the protocols that train a network (finetune, scratch, selftrain)."""
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
    else:
        p.add_argument(
            "--confusion",
            default=None,
            help="write the test confusion matrix PNG here (default: none)",
        )


def add_parser(sub: Subparsers) -> None:
    """``experiment label-efficiency``."""
    ex = sub.add_parser("experiment", help="multi-protocol experiments: label-efficiency",
                        description="Experiments that combine protocols.",
                        formatter_class=Formatter)  # fmt: skip
    ex.set_defaults(handler=run_experiment)
    exs = ex.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    le = exs.add_parser("label-efficiency", formatter_class=Formatter,
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
    add_progress_flags(le)


# ----------------------------------------------------------------------------- handlers


def run_fewlabel(a: argparse.Namespace) -> int:
    """``selfsup eval fewshot|finetune|scratch|selftrain``."""
    if a.protocol == "fewshot":
        out, rows = _fewshot(a)
    elif a.protocol == "selftrain":
        out, rows = _selftrain(a)
    else:
        out, rows = _finetune(a)
    record_eval(a, out)
    if a.json:
        print(json.dumps(out, default=str))
    else:
        print_table(f"{a.protocol}: {a.checkpoint}", rows)
    return 0


def _fewshot(a: argparse.Namespace) -> Table:
    from selfsup import experiments

    res = experiments.evaluate_fewshot(a.checkpoint, a.train, a.test, shots=int_list(a.shots),
                                       seeds=a.seeds, data_root=a.data_root,
                                       progress=not a.no_progress)  # fmt: skip
    rows = [(f"{r.shots} shots ({r.labels_used} labels)",
             f"linear {r.linear_top1_mean:.2f} ± {r.linear_top1_std:.2f} | centroid "
             f"{r.centroid_top1_mean:.2f} ± {r.centroid_top1_std:.2f}") for r in res.results]  # fmt: skip
    return res.as_dict(), rows


def _labels_options(a: argparse.Namespace) -> dict[str, Any]:
    return dict(shots=a.shots, fraction=a.fraction, val_per_class=a.val_per_class,
                config=_finetune_config(a), data_root=a.data_root)  # fmt: skip


def _selftrain(a: argparse.Namespace) -> Table:
    from selfsup import experiments

    out = experiments.evaluate_selftrain(a.checkpoint, a.train, a.test, threshold=a.threshold,
                                         max_per_class=a.max_per_class,
                                         pool_limit=a.pool_limit, **_labels_options(a))  # fmt: skip
    t, s = out["teacher"]["test"], out["student"]["test"]
    rows = [("teacher top-1 / balanced", f"{t['top1']:.2f} / {t['balanced']:.2f}"),
            ("student top-1 / balanced", f"{s['top1']:.2f} / {s['balanced']:.2f}"),
            ("gain (points)", f"{out['gain_top1']:+.2f}"),
            ("pseudo-labels (accuracy)",
             f"{out['pseudo_labels']} ({out['pseudo_label_accuracy']:.1f}%)"),
            ("true labels", str(out["true_labels"]))]  # fmt: skip
    return out, rows


def _finetune(a: argparse.Namespace) -> Table:
    from selfsup import experiments

    rep = experiments.evaluate_finetune(
        a.checkpoint, a.train, a.test, random_init=a.protocol == "scratch",
        confusion_png=a.confusion, **_labels_options(a),
    )  # fmt: skip
    m = rep.test
    rows = [("top-1 (%)", f"{m.top1:.2f}"), (f"top-{m.k} (%)", f"{m.topk:.2f}"),
            ("balanced accuracy (%)", f"{m.balanced:.2f}"),
            ("validation top-1 (%)", f"{rep.val_top1:.2f}"),
            ("kept epoch / run", f"{rep.best_epoch} / {rep.epochs_run}"),
            ("training labels", str(rep.train_images)),
            ("validation labels", str(rep.val_images)),
            ("seconds", f"{rep.seconds:.1f}")]  # fmt: skip
    rows += [(f"  {c}", f"{v:.1f}") for c, v in zip(m.classes, m.per_class, strict=True)]
    return rep.as_dict(), rows


def run_experiment(a: argparse.Namespace) -> int:
    """``selfsup experiment label-efficiency``."""
    from selfsup import experiments
    from selfsup.config import ConfigError

    if a.experiment != "label-efficiency":
        raise ConfigError("choose an experiment: selfsup experiment label-efficiency ...")
    out = a.out or str(Path(a.checkpoint) / "label_efficiency")
    res = experiments.label_efficiency(
        a.checkpoint, a.train, a.test, out, shots=int_list(a.shots), seeds=a.seeds,
        val_per_class=a.val_per_class, protocols=tuple(a.protocols.split(",")),
        config=_finetune_config(a), data_root=a.data_root, threshold=a.threshold,
        pool_limit=a.pool_limit,
    )  # fmt: skip
    print(experiments._markdown(res))
    print(f"written: {out}/label_efficiency.md, .json, .png")
    return 0
