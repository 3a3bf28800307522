"""What ResNet-18 knows after a fixed CPU budget on CIFAR-10: recipes side by side.

Each arm pretrains for ``--budget`` (wall clock) on the CIFAR-10 training images, then is
scored by the kNN protocol of ``../shared/BASELINE.md``: k = 200, cosine, temperature 0.1,
the 50,000 training images (unaugmented) as the bank, the 10,000 test images as queries.
The untrained floor (the same network with seed 0's initial weights) is measured in the
same command. Per arm: images seen, images/s, kNN top-1 per seed and mean ± sd over seeds.

    python benchmarks/cpu_budget.py --out /tmp/cpu15 --seeds recipe=0,1,2
    python benchmarks/cpu_budget.py --out /tmp/screen --budget 5m --limit-train 10000 \\
        --limit-test 2000 --arms vicreg-device,vicreg-progressive   # a quick screen

Arms are the configs as they stand (simclr, vicreg, recipe) and the levers of issue 19,
each one change on top of the VICReg config (see ``ARMS``); ``--set ARM:KEY=VALUE`` adds
an override to one arm. Every run and every evaluation is written under ``--out`` and a
rerun skips what is there, so an interrupted benchmark resumes. The budgets are wall
clock: run nothing beside it, and compare figures of one command only (machines of this
kind differ by a quarter from day to day).
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

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("SELFSUP_DATASETS", ROOT.parent / "shared" / "datasets"))
VICREG = "configs/vicreg_cifar10.yaml"
DEVICE = ["data.augment=device"]

# name -> (description, config, overrides)
ARMS: dict[str, tuple[str, str, list[str]]] = {
    "simclr": ("SimCLR config", "configs/simclr_cifar10.yaml", []),
    "vicreg": ("VICReg config", VICREG, []),
    "recipe": ("15-minute recipe", "configs/fast_cifar10.yaml", []),
    # Levers, one change each on top of the VICReg config with batched augmentation.
    "vicreg-device": ("VICReg, batched augmentation", VICREG, DEVICE),
    "vicreg-progressive": (
        "VICReg, batched augmentation, views 16 px growing to 32 by 75% of the budget",
        VICREG,
        [*DEVICE, "data.progressive_start=0.5", "data.progressive_until=0.75"],
    ),
    "vicreg-batch64": (
        "VICReg, batched augmentation, batch 64 (lr scaled)",
        VICREG,
        [*DEVICE, "train.batch_size=64"],
    ),
    "vicreg-mild": (
        "VICReg, batched augmentation, milder crops (scale 0.2-1)",
        VICREG,
        [*DEVICE, "method.views.min_scale=0.2"],
    ),
}


def run(cmd: list[str], log: Path) -> None:
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def pretrain(arm: str, seed: int, a: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    _, config, overrides = ARMS[arm]
    folder = a.out / f"{arm}-seed{seed}"
    summary = folder / "summary.json"
    if not summary.exists():
        extra = [s.split(":", 1)[1] for s in a.set if s.split(":", 1)[0] == arm]
        print(f"pretraining {folder.name} for {a.budget} ...", flush=True)
        run([sys.executable, "-m", "selfsup", "pretrain", "--config", config, "--data",
             str(a.data / "train"), "--out", str(folder), "--max-time", a.budget,
             "--no-progress", "--overwrite", "monitor.knn=false", f"train.seed={seed}",
             *overrides, *extra], a.out / f"{folder.name}.log")  # fmt: skip
    return folder, json.loads(summary.read_text())


def knn(folder: Path, a: argparse.Namespace, random_init: bool = False) -> dict[str, Any]:
    file = folder.parent / f"knn-{folder.name}{'-random' if random_init else ''}.json"
    cmd = [sys.executable, "-m", "selfsup", "eval", "knn", "--checkpoint", str(folder),
           "--train", str(a.data / "train"), "--test", str(a.data / "test"), "--k", "200",
           "--temperature", "0.1", "--no-cache", "--json", "--no-progress"]  # fmt: skip
    cmd += ["--random-init"] if random_init else []
    cmd += ["--limit-train", str(a.limit_train)] if a.limit_train else []
    cmd += ["--limit-test", str(a.limit_test)] if a.limit_test else []
    return cached_json(cmd, file, ROOT)


def seeds_of(arm: str, spec: list[str]) -> list[int]:
    for s in spec:
        name, _, seeds = s.partition("=")
        if name == arm:
            return [int(x) for x in seeds.split(",")]
    return [0]


def mean_sd(xs: list[float], fmt: str = "{:.2f}") -> str:
    if len(xs) == 1:
        return fmt.format(xs[0])
    spread = fmt.replace("+", "")  # a spread has no sign
    return f"{fmt.format(statistics.mean(xs))} ± {spread.format(statistics.stdev(xs))}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="arms: " + "; ".join(f"{k}: {v[0]}" for k, v in ARMS.items()),
    )
    ap.add_argument("--out", type=Path, required=True, help="runs and results (resumable)")
    ap.add_argument("--data", type=Path, default=DATASETS / "cifar10",
                    help="CIFAR-10 as train/ and test/ class folders")  # fmt: skip
    ap.add_argument("--arms", default="simclr,vicreg,recipe", help=f"of {', '.join(ARMS)}")
    ap.add_argument("--budget", default="15m", help="pretraining wall clock an arm and seed")
    ap.add_argument("--seeds", action="append", default=[], metavar="ARM=S,S,...",
                    help="training seeds of one arm (default: 0 for every arm)")  # fmt: skip
    ap.add_argument("--limit-train", type=int, default=None, help="kNN bank (default: all)")
    ap.add_argument("--limit-test", type=int, default=None, help="kNN queries (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="ARM:KEY=VALUE",
                    help="an extra config override for one arm (repeatable)")  # fmt: skip
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    arms = a.arms.split(",")
    for arm in arms:
        if arm not in ARMS:
            sys.exit(f"unknown arm {arm!r}: one of {', '.join(ARMS)}")
    rows, floor = [], None
    for arm in arms:
        seen, speed, top1 = [], [], []
        for seed in seeds_of(arm, a.seeds):
            folder, summary = pretrain(arm, seed, a)
            res = knn(folder, a)
            if floor is None:
                floor = knn(folder, a, random_init=True)
            seen.append(float(summary["state"]["images_seen"]))
            speed.append(float(summary["images_per_s"]))
            top1.append(float(res["top1"]))
            print(f"{folder.name}: {seen[-1]:.0f} images, {speed[-1]:.1f} img/s, "
                  f"kNN {top1[-1]:.2f}", flush=True)  # fmt: skip
        rows.append((arm, ARMS[arm][0], seen, speed, top1))
    assert floor is not None
    bank = a.limit_train or 50000
    queries = a.limit_test or 10000
    print(f"\nResNet-18 on CIFAR-10, {a.budget} of pretraining an arm on this machine; kNN "
          f"k = 200 on a bank of {bank:,} training images, {queries:,} test queries\n")  # fmt: skip
    print("| arm | what | seeds | images seen | images/s | kNN top-1 | over the floor |")
    print("|---|---|---:|---:|---:|---:|---:|")
    f = float(floor["top1"])
    for arm, what, seen, speed, top1 in rows:
        gain = [t - f for t in top1]
        print(
            f"| {arm} | {what} | {len(top1)} | {mean_sd(seen, '{:,.0f}')} | "
            f"{mean_sd(speed, '{:.1f}')} | {mean_sd(top1)} | {mean_sd(gain, '{:+.2f}')} |"
        )
    print(f"| floor | untrained network (seed 0's initial weights) | | | | {f:.2f} | |")


if __name__ == "__main__":
    main()
