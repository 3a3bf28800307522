"""``selfsup eval knn|linear``: frozen-feature protocols, with the random-init floor beside
them (``--floor``, via :func:`selfsup.api.evaluate`). The few-label protocols of ``eval``
live in :mod:`selfsup.cli.experiment`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from selfsup.cli import dense, depth, experiment, video
from selfsup.cli.common import (
    Formatter,
    Subparsers,
    add_progress_flags,
    print_table,
    record_eval,
)

if TYPE_CHECKING:
    from selfsup.api import Evaluation


def _lin_defaults() -> tuple[tuple[float, ...], tuple[float, ...]]:
    from selfsup.eval.linear import DEFAULT_LRS, DEFAULT_WDS

    return DEFAULT_LRS, DEFAULT_WDS


def add_parser(sub: Subparsers) -> None:
    """``eval`` with its protocols: knn and linear here, the few-label ones after them."""
    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: knn, linear, fewshot, finetune, scratch, selftrain, segment",
        formatter_class=Formatter,
        description="Evaluate frozen features of a checkpoint.",
    )
    ev.set_defaults(handler=run_eval)
    evs = ev.add_subparsers(dest="protocol", metavar="PROTOCOL")
    knn = evs.add_parser(
        "knn",
        help="weighted k-nearest-neighbour accuracy",
        formatter_class=Formatter,
        description="kNN on frozen features: cosine similarity to the "
        "training features, votes weighted by exp(similarity/temperature).",
    )
    lin = evs.add_parser(
        "linear",
        help="linear probe with a learning-rate sweep",
        formatter_class=Formatter,
        description="Linear probe on frozen features computed once and "
        "cached. A sweep of learning rates and weight decays trains in "
        "parallel; the best on a validation split carved from --train is "
        "applied once to --test.",
    )
    for e in (knn, lin):
        _frozen_options(e)
    _knn_options(knn)
    _linear_options(lin)
    experiment.add_eval_parsers(evs)
    dense.add_eval_parsers(evs)
    depth.add_eval_parsers(evs)
    video.add_eval_parsers(evs)


def _frozen_options(e: argparse.ArgumentParser) -> None:
    """The options knn and linear share: model, data, extraction, output."""
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
        help="labelled training images: folder with class sub-folders or a named set (required)",
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
    add_progress_flags(e, legacy=True)


def _knn_options(knn: argparse.ArgumentParser) -> None:
    knn.add_argument("--k", type=int, default=200, help="neighbours that vote (default: 200)")
    knn.add_argument(
        "--temperature",
        type=float,
        default=0.1,
        help="vote weight exp(sim/T); lower values trust the nearest "
        "neighbours more (default: 0.1)",
    )


def _linear_options(lin: argparse.ArgumentParser) -> None:
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


def run_eval(a: argparse.Namespace) -> int:
    from selfsup import api
    from selfsup.config import ConfigError

    if a.protocol is None:
        raise ConfigError(
            "choose a protocol: selfsup eval knn|linear|fewshot|finetune|scratch|selftrain|segment|detect|depth|video"
        )
    if a.protocol in experiment.EVAL_PROTOCOLS:
        return experiment.run_fewlabel(a)
    if a.protocol in dense.EVAL_PROTOCOLS:
        return dense.run(a)
    if a.protocol in depth.EVAL_PROTOCOLS:
        return depth.run(a)
    if a.protocol in video.EVAL_PROTOCOLS:
        return video.run(a)
    if a.checkpoint is None and not a.random_init:
        raise ConfigError("pass --checkpoint RUN (or --random-init to evaluate an untrained net).")
    if a.floor and a.checkpoint is None:
        raise ConfigError("--floor compares a checkpoint with its random init: pass --checkpoint.")
    if a.checkpoint is not None:
        model: Any = a.checkpoint
    else:
        cfg = api.make_config("simclr", backbone=a.backbone, image_size=a.image_size or 32)
        model = api.build_method(cfg).feature_extractor()
    ev = api.evaluate(
        a.protocol, model, a.train, a.test, floor=a.floor, random_init=a.random_init,
        **_protocol_options(a), data_root=a.data_root, image_size=a.image_size,
        batch_size=a.batch_size, device=a.device, precision=a.precision,
        limit_train=a.limit_train, limit_test=a.limit_test, progress=not a.no_progress,
        cache=not a.no_cache,
    )  # fmt: skip
    out: dict[str, Any] = {"protocol": a.protocol, "checkpoint": a.checkpoint,
                           "random_init": a.random_init, **ev.as_dict()}  # fmt: skip
    record_eval(a, out)
    if a.json:
        print(json.dumps(out))
        return 0
    what = "random init" if a.random_init else (a.checkpoint or "")
    print_table(f"{a.protocol} evaluation: {what}", _rows(ev))
    note = getattr(ev.result, "note", None)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _protocol_options(a: argparse.Namespace) -> dict[str, Any]:
    if a.protocol == "knn":
        return {"k": a.k, "temperature": a.temperature}
    return {
        "lrs": tuple(float(x) for x in a.lrs.split(",")),
        "weight_decays": tuple(float(x) for x in a.wds.split(",")),
        "epochs": a.epochs,
        "val_fraction": a.val_fraction,
    }


def _rows(ev: Evaluation) -> list[tuple[str, str]]:
    """The table of ``selfsup eval knn|linear``."""
    main = ev.result.as_dict()
    rows = [("top-1 (%)", f"{main['top1']:.2f}"), ("top-5 (%)", f"{main['top5']:.2f}")]
    if ev.floor is not None:
        rows += [
            ("random-init floor top-1 (%)", f"{ev.floor.top1:.2f}"),
            ("gain over floor (points)", f"{ev.gain_top1:+.2f}"),
        ]
    if ev.protocol == "knn":
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
        ("seconds", f"{ev.seconds:.1f}"),
    ]
    return rows
