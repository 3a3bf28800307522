"""Video: pretexts at an equal CPU budget on Weizmann actions, each against its untrained
network, scored by cross-validated action recognition on clip features.

For each arm: ``selfsup pretrain`` for ``--minutes`` on the unlabeled videos, then
``selfsup eval video`` on the run and on the same network untrained (``--random-init``),
3-fold stratified cross-validation over videos repeated with fold seeds ``--seeds``. The
table gives mean and standard deviation over all folds (3 folds x 3 seeds = 9), kNN and
linear probe, with the run's optimiser steps and clips (or frames) a second.

    SELFSUP_DATASETS=../shared/datasets python benchmarks/video.py --out /tmp/video
    ... --arms rho-simclr --finetune 60     # also fine-tuning, 60 epochs a fold
    ... --arms rho-simclr --finetune 60,180 # fine-tuning at two budgets, both reported
    ... --arms rho-simclr --steps 144       # a fixed number of steps instead of --minutes
    ... --arms rho-simclr-motion,rho-simclr --train-seeds 0,1,2,3 --steps 144

``rho-simclr-motion`` is the shipped config (``configs/simclr_clips_weizmann.yaml``: the
second clip of a pair is its frame differences half the time); ``rho-simclr`` the same
without the motion view. The paired table compares every run with ``--versus``.

``--steps`` is for a machine slower than the one a time budget was set on (a CPU without
bf16 trains 5-10x slower): the same optimiser steps are the same work, so the figures
compare with those of the faster machine's time budget. Runs are cached by arm name: a run
made with another budget is refused, so give each budget its own ``--out``.

Runs go to ``<out>/<arm>/`` and each evaluation to ``<out>/eval-<arm>[-random]-seed<S>.json``;
a rerun skips what is there, so an interrupted benchmark resumes. The budgets are wall
clock: run nothing beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _cached import cached_json

from selfsup.config import parse_duration

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("SELFSUP_DATASETS", ROOT.parent / "shared" / "datasets"))

# The VICReg config on the clip ResNet, as the rho-SimCLR config has it (rho-VICReg).
RHO_VICREG = [
    "backbone.name=video_resnet18",
    "backbone.small_stem=false",
    "method.views.min_scale=0.5",
    "data.clip_stride=4",
    "data.video_gap=200",
]

# name -> (description, config, overrides)
ARMS: dict[str, tuple[str, str, list[str]]] = {
    "videomae": (
        "VideoMAE, tube masking 90% (video_vit_tiny)",
        "configs/videomae_weizmann.yaml",
        [],
    ),
    "vicreg-frames": (
        "VICReg on frames, time as augmentation (resnet18)",
        "configs/vicreg_weizmann.yaml",
        ["backbone.small_stem=false", "method.views.min_scale=0.5"],
    ),
    "simclr-frames": (
        "SimCLR on frames, time as augmentation (resnet18)",
        "configs/simclr_clips_weizmann.yaml",
        ["backbone.name=resnet18", "data.clip_motion=[]"],
    ),
    "rho-vicreg": (
        "rho-VICReg on clips (video_resnet18)",
        "configs/vicreg_weizmann.yaml",
        RHO_VICREG,
    ),
    "rho-vicreg-motion": (
        "rho-VICReg + motion view: the second clip as frame differences half the time (video_resnet18)",
        "configs/vicreg_weizmann.yaml",
        [*RHO_VICREG, "data.clip_motion=[0,0.5]"],
    ),
    "rho-simclr-noshift": (
        "rho-SimCLR on clips, no temporal shift (video_resnet18, shift_div 0)",
        "configs/simclr_clips_weizmann.yaml",
        ["backbone.kwargs={shift_div: 0}", "data.clip_motion=[]"],
    ),
    "rho-simclr": (
        "rho-SimCLR on clips (video_resnet18)",
        "configs/simclr_clips_weizmann.yaml",
        ["data.clip_motion=[]"],
    ),
    "rho-simclr-motion": (
        "rho-SimCLR + motion view: the second clip as frame differences half the time (video_resnet18)",
        "configs/simclr_clips_weizmann.yaml",
        ["data.clip_motion=[0,0.5]"],
    ),
    "rho-simclr-f4": (
        "rho-SimCLR on 4-frame clips (video_resnet18, frames 4)",
        "configs/simclr_clips_weizmann.yaml",
        ["backbone.kwargs={frames: 4}", "data.clip_motion=[]"],
    ),
}


def run(cmd: list[str], log: Path) -> None:
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def run_name(arm: str, seed: int) -> str:
    return arm if seed == 0 else f"{arm}-train{seed}"


def pretrain(arm: str, out: Path, data: Path, minutes: float, extra: list[str],
             seed: int = 0, steps: int = 0) -> dict[str, Any]:  # fmt: skip
    """``selfsup pretrain`` of one arm (cached): ``minutes`` of wall clock, or ``steps``
    optimiser steps when given (the same work on any machine)."""
    _, config, overrides = ARMS[arm]
    name = run_name(arm, seed)
    folder = out / name
    extra = [*extra, f"train.seed={seed}"] if seed else extra
    summary = folder / "summary.json"
    if not summary.exists():
        budget = ["--steps", str(steps)] if steps else ["--max-time", f"{minutes * 60:g}s"]
        print(f"pretraining {name} for {f'{steps} steps' if steps else f'{minutes:g} min'} ...",
              flush=True)  # fmt: skip
        run([sys.executable, "-m", "selfsup", "pretrain", "--config", config, "--data",
             str(data), "--out", str(folder), *budget, "--no-progress", "--overwrite",
             *overrides, *extra], out / f"{name}.log")  # fmt: skip
    result: dict[str, Any] = json.loads(summary.read_text())
    made = result["config"]["train"]
    same = (made["steps"] == steps if steps else made["steps"] is None and made["max_time"]
            and parse_duration(made["max_time"]) == minutes * 60)  # fmt: skip
    if not same:
        sys.exit(f"{folder} was pretrained with train.steps={made['steps']}, train.max_time="
                 f"{made['max_time']}, not this budget: give each budget its own --out")  # fmt: skip
    return result


def evaluate(arm: str, out: Path, data: Path, seed: int, random_init: bool,
             finetune: int = 0) -> dict[str, Any]:  # fmt: skip
    """``selfsup eval video`` of a run (cached); ``finetune`` > 0: also fine-tuning for
    that many epochs a fold (a separate cache file: the frozen protocols are the same)."""
    ft = f"-ft{finetune}" if finetune else ""
    name = f"eval-{arm}{'-random' if random_init else ''}-seed{seed}{ft}.json"
    file = out / name
    cmd = [sys.executable, "-m", "selfsup", "eval", "video", "--checkpoint", str(out / arm),
           "--data", str(data), "--folds", "3", "--seed", str(seed), "--json",
           "--no-progress"] + (["--random-init"] if random_init else [])  # fmt: skip
    if finetune:
        cmd += ["--finetune", "--finetune-epochs", str(finetune)]
    return cached_json(cmd, file, ROOT)


def evaluations(arm: str, out: Path, data: Path, seed: int, random_init: bool,
                budgets: list[int]) -> dict[str, Any]:  # fmt: skip
    """The frozen protocols (``knn``, ``linear``) and one ``finetune<E>`` entry for each
    fine-tuning budget of ``E`` epochs, of one fold seed (the same folds throughout)."""
    if not budgets:
        return evaluate(arm, out, data, seed, random_init)
    runs = {e: evaluate(arm, out, data, seed, random_init, e) for e in budgets}
    first = runs[budgets[0]]
    return {"knn": first["knn"], "linear": first["linear"]} | {
        f"finetune{e}": r["finetune"] for e, r in runs.items()
    }


def _label(arm: str, seed: int) -> str:
    return ARMS[arm][0] + (f", training seed {seed}" if seed else "")


def folds_of(evals: list[dict[str, Any]], protocol: str) -> list[float]:
    return [float(f) for e in evals for f in e[protocol]["folds_top1"]]


def pooled(evals: list[dict[str, Any]], protocol: str) -> str:
    folds = folds_of(evals, protocol)
    return f"{statistics.mean(folds):5.1f} ± {statistics.stdev(folds):4.1f}"


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], protocol: str) -> str:
    """Fold-by-fold differences a - b (the same videos in every fold: the same splits), as
    mean ± sd and wins / ties / losses."""
    d = [x - y for x, y in zip(folds_of(a, protocol), folds_of(b, protocol), strict=True)]
    w, t = sum(x > 0 for x in d), sum(x == 0 for x in d)
    return f"{statistics.mean(d):+5.1f} ± {statistics.stdev(d):4.1f} ({w}/{t}/{len(d) - w - t})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="runs and results (resumable)")
    ap.add_argument("--data", type=Path, default=DATASETS / "videos" / "weizmann4")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    ap.add_argument("--minutes", type=float, default=10.0, help="pretraining budget an arm")
    ap.add_argument("--steps", type=int, default=0,
                    help="pretrain for this many optimiser steps instead of --minutes (the same "
                    "work on a slower machine; rho-simclr made 144 in 10 min with bf16)")  # fmt: skip
    ap.add_argument("--seeds", default="0,1,2", help="fold seeds of the cross-validation")
    ap.add_argument("--train-seeds", default="0",
                    help="training seeds: one run an arm each (seed k > 0: <arm>-train<k>)")  # fmt: skip
    ap.add_argument("--versus", default=None,
                    help="the arm compared fold by fold with every other run and floor "
                    "(default: rho-simclr-motion, or rho-simclr when that is not run)")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="ARM:KEY=VALUE",
                    help="an extra config override for one arm (repeatable)")  # fmt: skip
    ap.add_argument("--finetune", default="", metavar="EPOCHS[,EPOCHS...]",
                    help="also fine-tune each run and its untrained network on every fold "
                    "for this many epochs; several budgets comma-separated, each reported "
                    "(none: frozen protocols only)")  # fmt: skip
    a = ap.parse_args()
    budgets = [int(e) for e in a.finetune.split(",") if e]
    protocols = ["knn", "linear"] + [f"finetune{e}" for e in budgets]
    a.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    results: dict[str, list[dict[str, Any]]] = {}
    for arm in a.arms.split(","):
        if arm not in ARMS:
            sys.exit(f"unknown arm {arm!r}: one of {', '.join(ARMS)}")
        extra = [s.split(":", 1)[1] for s in a.set if s.split(":", 1)[0] == arm]
        for t in (int(x) for x in a.train_seeds.split(",")):
            name = run_name(arm, t)
            summary = pretrain(arm, a.out, a.data, a.minutes, extra, t, a.steps)
            ssl = [evaluations(name, a.out, a.data, s, False, budgets) for s in seeds]
            floor = [evaluations(name, a.out, a.data, s, True, budgets) for s in seeds]
            state = summary["state"]
            what = _label(arm, t)
            results[what], results[f"{what}: untrained"] = ssl, floor
            rows.append((what, f"{state['step']}", f"{summary['images_per_s']:.1f}",
                         *[pooled(ssl, p) for p in protocols],
                         *[pooled(floor, p) for p in protocols]))  # fmt: skip
            print(f"{name}: done", flush=True)
        train_seeds = a.train_seeds.split(",")
        if len(train_seeds) > 1:  # the arm over all its training seeds: folds pooled
            what = f"{ARMS[arm][0]}, training seeds {a.train_seeds}"
            ssl = [e for t in train_seeds for e in results[_label(arm, int(t))]]
            floor = [e for t in train_seeds for e in results[_label(arm, int(t)) + ": untrained"]]
            results[what], results[f"{what}: untrained"] = ssl, floor
            rows.append((what, "", "", *[pooled(ssl, p) for p in protocols],
                         *[pooled(floor, p) for p in protocols]))  # fmt: skip
    budget = f"{a.steps} steps" if a.steps else f"{a.minutes:g} min"
    print(f"\n{a.data.name}: {budget} a pretext on this machine; mean ± sd over "
          f"{3 * len(seeds)} folds (3-fold CV x fold seeds {a.seeds})\n")  # fmt: skip
    names = {"knn": "kNN", "linear": "linear"} | {f"finetune{e}": f"fine-tune {e} ep"
                                                   for e in budgets}  # fmt: skip
    head = ("pretext", "steps", "samples/s", *[names[p] for p in protocols],
            *[f"{names[p]} untrained" for p in protocols])  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    arms = a.arms.split(",")
    versus = a.versus or ("rho-simclr-motion" if "rho-simclr-motion" in arms else "rho-simclr")
    label = ARMS.get(versus, ("?",))[0]
    refs = {k: v for k, v in results.items() if k.startswith(label) and "untrained" not in k}
    if not refs:
        return
    print(f"\n{ARMS[versus][0]} minus each other row of the same training seed(s), fold by "
          "fold (the same splits): mean ± sd of the differences, (wins/ties/losses)\n")  # fmt: skip
    print("| row | against | " + " | ".join(names[p] for p in protocols) + " |\n|---|---|"
          + "---|" * len(protocols))  # fmt: skip
    for what, evals in results.items():
        if what in refs:
            continue
        tail = what.split(")", 1)[-1].replace(": untrained", "")
        ref = next((k for k in refs if k.split(")", 1)[-1] == tail), None)
        if ref is None or len(refs[ref]) != len(evals):
            continue
        diffs = " | ".join(paired(refs[ref], evals, p) for p in protocols)
        print(f"| {ref} | {what} | {diffs} |")


if __name__ == "__main__":
    main()
