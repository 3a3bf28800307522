"""``selfsup eval depth``: the depth probe of a run (frozen backbone, a head trained on depth
maps), scored as the field reports depth, beside trivial baselines measured by the same code."""

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

EVAL_PROTOCOLS = ("depth",)

DEPTH_DESCRIPTION = """\
Train a depth head on the run's frozen backbone and score it once on test frames: AbsRel,
SqRel, RMSE, RMSE log (errors) and delta < 1.25, 1.25^2, 1.25^3 (fractions), per frame over
valid pixels within [--min-depth, --max-depth], averaged over frames. Beside it, the same
metrics of a constant (the training frames' median depth), plain and median-scaled per
frame.
  linear:  BatchNorm + 1x1 head on the last dense map (DINOv2's linear depth probe)
  decoder: a light FPN over every level (a small DPT-style decoder), backbone still frozen
Data: one folder split by time (--data DIR --train-frames 0:800 --test-frames 800:1000;
<stem>.color.jpg beside <stem>.depth.png) or two folders (--train/--test, each images/ +
depth/). Depth files: 16-bit PNG in millimetres, float TIFF or NPY in metres (--depth-scale
for others); 0 and 65535 are "no reading".
--random-init: the same network untrained (the floor)."""


def add_eval_parsers(evs: Subparsers) -> None:
    from selfsup.tasks.depth import DepthConfig

    d = DepthConfig()
    p = evs.add_parser("depth", help="depth probe: AbsRel, RMSE, delta < 1.25",
                       formatter_class=Formatter, description=DEPTH_DESCRIPTION)  # fmt: skip
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="run folder or checkpoint file (required)")  # fmt: skip
    p.add_argument("--data", default=None, help="one folder of frames, split by time")
    p.add_argument("--train-frames", default=None, metavar="A:B",
                   help="training frames of --data, e.g. 0:800")  # fmt: skip
    p.add_argument("--test-frames", default=None, metavar="A:B",
                   help="test frames of --data, e.g. 800:1000")  # fmt: skip
    p.add_argument("--train", default=None, help="training folder (instead of --data)")
    p.add_argument("--test", default=None, help="test folder (instead of --data)")
    p.add_argument("--depth-scale", type=float, default=None,
                   help="metres per stored depth unit (default: 0.001 for 16-bit PNG, 1 for "
                   "float TIFF/NPY)")  # fmt: skip
    p.add_argument("--protocol", dest="depth_protocol", choices=("linear", "decoder"),
                   default=d.protocol, help="head on the frozen backbone (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=d.max_steps,
                   help="optimiser steps, the same for SSL and random init (default: %(default)s)")  # fmt: skip
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="shorter side of the frames for the model (default: %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="frames a step (default: %(default)s)")  # fmt: skip
    p.add_argument("--lr", type=float, default=d.lr,
                   help="AdamW learning rate of the head (default: %(default)s)")  # fmt: skip
    p.add_argument("--min-depth", type=float, default=d.min_depth,
                   help="metres; nearer truth is not scored (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-depth", type=float, default=d.max_depth,
                   help="metres; farther truth is not scored, and the output's bound "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed, help="seeds training (default: %(default)s)")
    p.add_argument("--random-init", action="store_true",
                   help="the run's network untrained: the floor (default: false)")  # fmt: skip
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--precision", default="auto", help="auto, bf16, fp16, fp32 (default: auto)")
    p.add_argument("--workers", type=int, default=-1, help="data workers (default: auto)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (default: false)")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="folder for <name>.json and <name>.png (frames, predicted and true depth, "
                   "error), shown by selfsup report (default: <run>/dense)")  # fmt: skip
    p.add_argument("--no-save", action="store_true", help="write no files (default: false)")
    add_progress_flags(p)


def _save_folder(a: argparse.Namespace) -> Path | None:
    if a.no_save:
        return None
    if a.save is not None:
        return Path(a.save)
    from selfsup.runs import run_folder
    from selfsup.train import checkpoint as ckpt_io

    return run_folder(ckpt_io.resolve(a.checkpoint)) / "dense"


def run(a: argparse.Namespace) -> int:
    from selfsup.config import ConfigError
    from selfsup.eval.depth import METRICS
    from selfsup.tasks.depth import DepthConfig, evaluate_depth

    if a.data is None and (a.train is None or a.test is None):
        raise ConfigError(
            "give --data DIR with --train-frames/--test-frames, or --train and --test."
        )
    if a.data is not None and (a.train_frames is None or a.test_frames is None):
        raise ConfigError(
            "with --data, give --train-frames and --test-frames (e.g. 0:800 and 800:1000): "
            "frames of a video are split by time, never at random."
        )
    cfg = DepthConfig(
        protocol=a.depth_protocol, image_size=a.image_size, max_steps=a.max_steps,
        batch_size=a.batch_size, lr=a.lr, min_depth=a.min_depth, max_depth=a.max_depth,
        seed=a.seed, device=a.device, precision=a.precision, num_workers=a.workers,
    )  # fmt: skip
    res = evaluate_depth(a.checkpoint, a.data, cfg, train_frames=a.train_frames,
                         test_frames=a.test_frames, train=a.train, test=a.test,
                         scale=a.depth_scale, random_init=a.random_init,
                         progress=not a.no_progress, save=_save_folder(a))  # fmt: skip
    record_eval(a, res.as_dict())
    if a.json:
        print(json.dumps(res.as_dict()))
        return 0
    what = "random init" if a.random_init else "pretrained"
    cols = ["probe", "constant", "constant, median-scaled"]
    probe: dict[str, Any] = res.as_dict()
    sources = [probe, res.baselines["constant"], res.baselines["constant_median_scaled"]]
    rows = [(k, "  ".join(f"{s[k]:.4f}".rjust(len(c)) for s, c in zip(sources, cols, strict=True)))
            for k in METRICS]  # fmt: skip
    rows.insert(0, ("", "  ".join(cols)))
    rows += [("train / test frames", f"{res.train_frames} / {res.test_frames}"),
             ("steps", str(res.steps)), ("seconds", f"{res.seconds:.0f}")]  # fmt: skip
    print_table(f"depth ({res.protocol}, {what})", rows)
    return 0


TRAIN_DESCRIPTION = """\
Self-supervised monocular depth from video alone (Monodepth2): a depth network (a run's CNN
backbone as encoder with --encoder, else an untrained ResNet-18, under a U-Net disparity
decoder) and a pose network learn from consecutive frames by view synthesis: each source
frame (--offsets from the target) is warped into the target with the intrinsics and the
predicted depth and motion; loss 0.85 SSIM + 0.15 L1, per-pixel minimum over sources,
auto-masking of static pixels, edge-aware smoothness, four scales. No depth is read for
training. With --test-frames (frames with depth) the run is scored at the end, median-scaled.
--poses uses <stem>.pose.txt (4x4 camera-to-world) instead of the pose network.
Checkpoints every 100 steps in OUT/checkpoints; --resume continues."""


def add_parser(sub: Subparsers) -> None:
    from selfsup.tasks.monodepth import MonodepthConfig

    d = MonodepthConfig()
    p = sub.add_parser("depth", help="self-supervised depth from video: train, eval, predict",
                       formatter_class=Formatter,
                       description="Self-supervised monocular depth learned from video.")  # fmt: skip
    cmds = p.add_subparsers(dest="depth_command", metavar="{train,eval,predict}")
    t = cmds.add_parser("train", help="train depth and pose networks on frames",
                        formatter_class=Formatter, description=TRAIN_DESCRIPTION)  # fmt: skip
    t.add_argument("--frames", required=True,
                   help="folder of frames in time order (<stem>.color.jpg, or plain images)")  # fmt: skip
    t.add_argument("--out", required=True, help="run folder to write (required)")
    t.add_argument("--intrinsics", default=None,
                   help="3x3 intrinsics of the colour camera at the frames' full size "
                   "(default: FRAMES/camera-intrinsics.txt). RGB-D sets often ship the depth "
                   "camera's (7-Scenes: fx 585 at 640x480; its colour camera's is ~525): "
                   "benchmarks/depth_intrinsics.py measures which fits")  # fmt: skip
    t.add_argument("--encoder", default=None, metavar="RUN",
                   help="a pretraining run whose backbone is the encoder (default: an "
                   "untrained ResNet-18)")  # fmt: skip
    t.add_argument("--random-init", action="store_true",
                   help="the --encoder run's network untrained: the floor (default: false)")  # fmt: skip
    t.add_argument("--train-frames", default=None, metavar="A:B",
                   help="frames trained on, e.g. 0:800 (default: all)")  # fmt: skip
    t.add_argument("--test-frames", default=None, metavar="A:B",
                   help="frames with depth scored at the end, e.g. 800:1000 (default: none)")  # fmt: skip
    t.add_argument("--offsets", default=",".join(str(o) for o in d.offsets),
                   help="source frames relative to the target; write it with '=' when it "
                   "starts with a minus: --offsets=-3,3 (default: %(default)s)")  # fmt: skip
    t.add_argument("--steps", type=int, default=d.steps,
                   help="optimiser steps; the learning-rate schedule spans them (default: %(default)s)")  # fmt: skip
    t.add_argument("--max-time", default=None,
                   help="also stop after this wall-clock time, e.g. 15m (checked after each "
                   "epoch; default: none)")  # fmt: skip
    t.add_argument("--poses", action="store_true",
                   help="known poses from <stem>.pose.txt instead of the pose network")  # fmt: skip
    t.add_argument("--image-size", type=int, default=d.image_size,
                   help="shorter side the networks see (default: %(default)s)")  # fmt: skip
    t.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="target frames a step (default: %(default)s)")  # fmt: skip
    t.add_argument(
        "--lr", type=float, default=d.lr, help="AdamW learning rate (default: %(default)s)"
    )
    t.add_argument(
        "--min-depth", type=float, default=d.min_depth, help="metres (default: %(default)s)"
    )
    t.add_argument(
        "--max-depth", type=float, default=d.max_depth, help="metres (default: %(default)s)"
    )
    t.add_argument("--no-automask", action="store_true", help="keep static pixels (default: false)")
    t.add_argument("--init-depth", type=float, default=None, metavar="METRES",
                   help="depth the decoder starts at (default: the geometric middle of "
                   "[min-depth, max-depth] with --poses, Monodepth2's start otherwise)")  # fmt: skip
    t.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    t.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    t.add_argument("--precision", default="auto", help="auto, bf16, fp16, fp32 (default: auto)")
    t.add_argument("--workers", type=int, default=-1, help="data workers (default: auto)")
    t.add_argument(
        "--resume", action="store_true", help="continue OUT/checkpoints (default: false)"
    )
    t.add_argument("--json", action="store_true", help="one JSON object on stdout (default: false)")
    add_progress_flags(t)
    e = cmds.add_parser("eval", help="score a depth run (median-scaled) on frames with depth",
                        formatter_class=Formatter)  # fmt: skip
    e.add_argument("--run", required=True, help="a selfsup depth train run folder")
    e.add_argument("--frames", required=True, help="folder of frames with depth")
    e.add_argument("--test-frames", default=None, metavar="A:B", help="(default: all)")
    e.add_argument("--json", action="store_true", help="one JSON object on stdout (default: false)")
    r = cmds.add_parser("predict", help="write depth maps (16-bit PNG, mm) and pictures",
                        formatter_class=Formatter)  # fmt: skip
    r.add_argument("--run", required=True, help="a selfsup depth train run folder")
    r.add_argument("--data", required=True, help="folder of frames or images")
    r.add_argument("--out", required=True, help="folder for <stem>.depth.png and pictures")
    p.set_defaults(handler=run_depth)


def run_depth(a: argparse.Namespace) -> int:
    from selfsup.config import ConfigError, parse_duration
    from selfsup.tasks import monodepth as md

    if a.depth_command is None:
        raise ConfigError("choose: selfsup depth train|eval|predict (see --help)")
    if a.depth_command == "predict":
        paths = md.predict_depth(a.run, a.data, a.out)
        print(f"wrote {len(paths)} depth maps (16-bit PNG, mm) and pictures to {a.out}")
        return 0
    if a.depth_command == "eval":
        res = md.evaluate_monodepth(a.run, a.frames, a.test_frames)
    else:
        try:
            offsets = [int(o) for o in a.offsets.split(",") if o.strip()]
        except ValueError:
            raise ConfigError(
                f"--offsets {a.offsets!r} is not a list of integers like -3,3"
            ) from None
        if not offsets or 0 in offsets:
            raise ConfigError("--offsets needs nonzero frame offsets, e.g. -3,3")
        max_seconds = None if a.max_time is None else parse_duration(a.max_time, "--max-time")
        cfg = md.MonodepthConfig(
            image_size=a.image_size, offsets=offsets, steps=a.steps, max_seconds=max_seconds,
            batch_size=a.batch_size, lr=a.lr, min_depth=a.min_depth, max_depth=a.max_depth,
            automask=not a.no_automask, init_depth=a.init_depth,
            known_poses=a.poses, seed=a.seed, device=a.device, precision=a.precision,
            num_workers=a.workers, train_frames=a.train_frames, test_frames=a.test_frames,
        )  # fmt: skip
        res = md.train_monodepth(a.frames, a.out, cfg, encoder_run=a.encoder,
                                 random_init=a.random_init, intrinsics=a.intrinsics,
                                 resume=a.resume, progress=not a.no_progress)  # fmt: skip
    if a.json:
        print(json.dumps(res))
        return 0
    rows: list[tuple[str, str]] = [(k, f"{res[k]:.4f}") for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1",
                                          "delta2", "delta3") if k in res]  # fmt: skip
    base = res.get("baselines", {}).get("constant_median_scaled")
    if base:
        rows.append(("constant, median-scaled: abs_rel / delta1",
                     f"{base['abs_rel']:.4f} / {base['delta1']:.4f}"))  # fmt: skip
    rows += [(k, str(res[k])) for k in ("steps", "test_frames") if k in res]
    print_table(f"depth ({a.depth_command}, median-scaled)", rows)
    return 0
