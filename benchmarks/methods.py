"""Train several methods for the same time budget on CIFAR-10 and write one table.

Each method is pretrained with its ``configs/<method>_cifar10.yaml`` in its own process
(so peak memory is its own), then judged the same way: kNN top-1 (k=200, cosine,
temperature 0.1) and a linear probe (learning-rate sweep on cached features, chosen on a
validation split of train) on frozen features, beside the random-init floor of each
backbone. Rows are appended to ``<out>/results.jsonl`` as they finish (a rerun skips
methods already there unless --fresh), and the table is printed and written to
``<out>/table.md``.

    python benchmarks/methods.py --budget 15m                       # every registered method
    python benchmarks/methods.py --methods simclr,byol --budget 2m --limit-train 10000 --limit-test 2000
    python benchmarks/methods.py --methods mocov2,swav --out runs/recipes \
        mocov2:method.proj_batch_norm=true swav:method.queue_size=1920

Overrides ``KEY=VALUE`` apply to every method, ``METHOD:KEY=VALUE`` to that method only; a
row records the overrides it ran with.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import selfsup
from selfsup.registry import get_method_class

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"


def pretrain(
    method: str, budget: str, data: Path, run: Path, overrides: list[str]
) -> dict[str, Any]:
    cfg = ROOT / "configs" / f"{method}_cifar10.yaml"
    if not cfg.exists():
        raise SystemExit(
            f"no config {cfg}: every benchmarked method needs configs/<method>_cifar10.yaml"
        )
    cmd = [sys.executable, "-m", "selfsup", "pretrain", "--config", str(cfg), "--data",
           str(data / "train"), "--out", str(run), "--max-time", budget, "--overwrite",
           "--no-progress", "monitor.knn=false", *overrides]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    summary: dict[str, Any] = json.loads((run / "summary.json").read_text())
    summary["wall_pretrain_s"] = time.perf_counter() - t0
    return summary


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--methods", default="all", help="comma-separated names (default: all registered)"
    )
    p.add_argument("--budget", default="15m", help="training time per method (default: 15m)")
    p.add_argument("--data", default=str(CIFAR), help="ImageFolder root with train/ and test/")
    p.add_argument("--out", default="runs/bench_methods", help="folder for runs and results")
    p.add_argument(
        "--limit-train",
        type=int,
        default=None,
        help="labelled train images for kNN/linear (default: all)",
    )
    p.add_argument("--limit-test", type=int, default=None, help="test images (default: all)")
    p.add_argument("--no-linear", action="store_true", help="skip the linear probe")
    p.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    p.add_argument("overrides", nargs="*",
                   help="KEY=VALUE (every method) or METHOD:KEY=VALUE (that method) overrides")  # fmt: skip
    a = p.parse_args()

    def overrides_for(method: str) -> list[str]:
        out = []
        for o in a.overrides:
            head, _, rest = o.partition(":")
            if rest and "=" not in head:
                if head == method:
                    out.append(rest)
            else:
                out.append(o)
        return out

    # Image methods: the video ones (videomae) learn from clips, not CIFAR-10 images.
    image_methods = [n for n in selfsup.list_methods() if not get_method_class(n).needs_video]
    names = image_methods if a.methods == "all" else a.methods.split(",")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if results_file.exists() and not a.fresh:
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            done[row["method"]] = row
    data = Path(a.data)
    train, test = str(data / "train"), str(data / "test")
    ev = dict(limit_train=a.limit_train, limit_test=a.limit_test)
    floors: dict[str, float] = {}
    for r in done.values():
        floors[r["backbone"]] = r["floor_knn_top1"]
    for name in names:
        if name in done:
            print(f"{name}: already measured, skipping (use --fresh to redo)")
            continue
        run = out / name
        print(f"== {name}: pretraining for {a.budget}", flush=True)
        try:
            s = pretrain(name, a.budget, data, run, overrides_for(name))
        except RuntimeError as err:  # one failing method does not stop the table
            print(f"{name}: FAILED\n{err}", flush=True)
            continue
        cfg = selfsup.load_config(run)
        backbone = cfg.backbone.name + (
            f" {dict(cfg.backbone.kwargs)}" if cfg.backbone.kwargs else ""
        )
        knn = selfsup.evaluate_knn(run, train, test, k=200, temperature=0.1, **ev)
        lin = None if a.no_linear else selfsup.evaluate_linear(run, train, test, **ev)
        if backbone not in floors:
            floors[backbone] = selfsup.evaluate_knn(
                run, train, test, random_init=True, cache=False, **ev
            ).top1
        row = {
            "method": name,
            "backbone": backbone,
            "budget": a.budget,
            "images_seen": s["state"]["images_seen"],
            "img_per_s": round(s["images_per_s"], 1),
            "peak_memory_mib": round(s["peak_memory_mb"]),
            "knn_top1": round(knn.top1, 2),
            "linear_top1": round(lin.top1, 2) if lin else None,
            "floor_knn_top1": round(floors[backbone], 2),
            "final_loss": s["final_loss"],
            "n_train": knn.n_train,
            "n_test": knn.n_test,
            "overrides": overrides_for(name),
        }
        print(json.dumps(row), flush=True)
        with open(results_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        done[name] = row
    rows = [done[n] for n in names if n in done]
    head = ("| method | backbone | images seen | img/s | peak memory (MiB) | kNN top-1 | "
            "linear top-1 | random-init kNN |\n|---|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    lines = [head] + [
        f"| {r['method']} | {r['backbone']} | {r['images_seen']:,} | {r['img_per_s']} | "
        f"{r['peak_memory_mib']:,} | {r['knn_top1']:.2f} | "
        f"{'-' if r['linear_top1'] is None else format(r['linear_top1'], '.2f')} | "
        f"{r['floor_knn_top1']:.2f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
