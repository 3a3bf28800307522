"""``selfsup eval video``: clip features of a run's backbone on labelled videos, kNN and a
linear probe under k-fold cross-validation over videos."""

from __future__ import annotations

import argparse
import json

from selfsup.cli.common import (
    Formatter,
    Subparsers,
    add_progress_flags,
    print_table,
    record_eval,
)

EVAL_PROTOCOLS = ("video",)

VIDEO_DESCRIPTION = """\
Classify videos by clip features of the run's backbone: each video's --clips clips of
--frames frames --stride apart (evenly spread), every frame through the backbone under its
evaluation transform, averaged over frames and clips; a video backbone (videomae's
space-time ViT) takes each clip whole, averaged over clips. Scored by weighted kNN and a linear
probe (logistic regression) under stratified --folds-fold cross-validation over videos:
mean and spread across folds of top-1 and balanced accuracy (percent). Videos: files
(mp4, avi, webm, mkv, mov; decoded with PyAV) or folders of frames, in class folders
(<root>/<class>/<video>); unreadable ones are skipped and listed.
--random-init: the same network untrained (the floor). --finetune: also fine-tune the
backbone with a new head on each fold's training videos (a clip from a random moment each
step, one random crop and flip for all its frames; SGD, cosine decay, the last epoch kept),
the protocol masked video models are judged by; costly on a CPU (every fold trains the
whole network)."""


def add_eval_parsers(evs: Subparsers) -> None:
    p = evs.add_parser("video", help="action recognition: k-fold kNN and linear on clip features",
                       formatter_class=Formatter, description=VIDEO_DESCRIPTION)  # fmt: skip
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="run folder or checkpoint file (required)")  # fmt: skip
    p.add_argument("--data", required=True, help="folder of class folders of videos (required)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames a clip (default: 8; a video backbone's own)")  # fmt: skip
    p.add_argument("--stride", type=int, default=None,
                   help="frames between a clip's frames (default: 4; a video run's "
                   "method.clip_stride or data.clip_stride)")  # fmt: skip
    p.add_argument("--clips", type=int, default=2, help="clips a video (default: %(default)s)")
    p.add_argument("--folds", type=int, default=3,
                   help="cross-validation folds over videos (default: %(default)s)")  # fmt: skip
    p.add_argument("--k", type=int, default=5, help="kNN neighbours (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="shuffles the folds (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None,
                   help="frame size for the backbone (default: the run's)")  # fmt: skip
    p.add_argument("--random-init", action="store_true",
                   help="the run's network untrained: the floor (default: false)")  # fmt: skip
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--precision", default="auto", help="auto, bf16, fp16, fp32 (default: auto)")
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune on each fold (default: false)")  # fmt: skip
    p.add_argument("--finetune-epochs", type=int, default=60,
                   help="passes over a fold's training videos when fine-tuning "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--finetune-lr", type=float, default=0.05,
                   help="head learning rate; the pretrained backbone's is a tenth of it, a "
                   "random-init one's the same (default: %(default)s)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (default: false)")
    add_progress_flags(p)


def run(a: argparse.Namespace) -> int:
    from selfsup.config import ConfigError
    from selfsup.tasks.classification import FinetuneConfig
    from selfsup.tasks.video import evaluate_video

    ft = FinetuneConfig(epochs=a.finetune_epochs, lr=a.finetune_lr) if a.finetune else None
    try:
        res = evaluate_video(a.checkpoint, a.data, frames=a.frames, stride=a.stride,
                             n_clips=a.clips, folds=a.folds, k=a.k, seed=a.seed,
                             image_size=a.image_size, random_init=a.random_init,
                             device=a.device, precision=a.precision,
                             progress=not a.no_progress, finetune=ft)  # fmt: skip
    except ValueError as err:
        raise ConfigError(str(err)) from None
    record_eval(a, res)
    if a.json:
        print(json.dumps(res))
        return 0
    rows = []
    for name in ("knn", "linear", "finetune"):
        if name not in res:
            continue
        r = res[name]
        rows += [(f"{name}: top-1 (%)", f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}"),
                 (f"{name}: balanced (%)", f"{r['balanced_mean']:.2f} ± {r['balanced_std']:.2f}")]  # fmt: skip
    rows += [("videos", f"{res['videos']} in {len(res['classes'])} classes, "
              f"{res['folds']} folds"), ("skipped", str(len(res["skipped"])))]  # fmt: skip
    what = "random init" if a.random_init else "pretrained"
    print_table(f"video ({what})", rows)
    return 0
