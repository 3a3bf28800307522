"""SimCLR / ResNet-18 at 32 px on CIFAR-10 under a fixed time budget.

Prints training images/s, images seen, peak memory, and kNN top-1 (k=200, cosine,
temperature 0.1, the full 50,000-image train set as the bank, the 10,000 test images as
queries) of the trained network beside the random-init floor of the same initial weights,
all measured in this one command.

    python benchmarks/simclr_budget.py --budget 15m
    python benchmarks/simclr_budget.py --budget 2m --limit-train 10000 --limit-test 2000  # quick

The recipe is configs/simclr_cifar10.yaml; extra KEY=VALUE overrides go after the options.
lightly's SimCLR on this machine (see ../shared/BASELINE.md): 25.5 img/s, 22,272 images in
15 minutes, kNN top-1 40.23% against a floor of 36.48%.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import selfsup

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budget", default="15m", help="training time budget (default: 15m)")
    p.add_argument(
        "--data", default=str(CIFAR), help="CIFAR-10 ImageFolder root with train/ and test/"
    )
    p.add_argument("--config", default=str(ROOT / "configs" / "simclr_cifar10.yaml"))
    p.add_argument("--out", default="runs/bench_simclr_budget")
    p.add_argument(
        "--limit-train", type=int, default=None, help="kNN bank size (default: all 50,000)"
    )
    p.add_argument("--limit-test", type=int, default=None, help="kNN queries (default: all 10,000)")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    p.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE")
    a = p.parse_args()

    train, test = f"{a.data}/train", f"{a.data}/test"
    t0 = time.perf_counter()
    res = selfsup.pretrain(
        data=train, out=a.out, config=a.config, overwrite=True, max_time=a.budget,
        overrides=["monitor.knn=false", *a.overrides],
    )  # fmt: skip
    kw = dict(
        limit_train=a.limit_train, limit_test=a.limit_test, k=200, temperature=0.1, cache=False
    )
    trained = selfsup.evaluate_knn(a.out, train, test, **kw)
    floor = selfsup.evaluate_knn(a.out, train, test, random_init=True, **kw)
    s = res.state
    out = {
        "budget": a.budget,
        "training_s": round(s.elapsed, 1),
        "steps": s.step,
        "images_seen": s.images_seen,
        "epochs": round(s.images_seen / 50000, 3),
        "train_img_per_s": round(res.images_per_s, 2),
        "peak_memory_mib": round(res.peak_memory_mb),
        "precision": res.precision,
        "knn_top1": round(trained.top1, 2),
        "knn_top5": round(trained.top5, 2),
        "floor_top1": round(floor.top1, 2),
        "gain": round(trained.top1 - floor.top1, 2),
        "knn_bank": trained.n_train,
        "knn_queries": trained.n_test,
        "knn_eval_s": round(trained.seconds, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    width = max(map(len, out))
    print("\nSimCLR / ResNet-18 (small stem) on CIFAR-10, 32 px")
    for k, v in out.items():
        print(f"  {k:<{width}}  {v}")
    print(
        f"  {'vs lightly img/s':<{width}}  {out['train_img_per_s'] / 25.5:.2f}x (lightly: 25.5 img/s)"
    )
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
