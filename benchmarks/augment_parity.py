"""Does the fast path learn as well as the plain one? SimCLR for the same number of images,
twice, in one command:

* reference: fp32, contiguous memory, augmentations per image in the data workers
  (``precision=fp32 train.channels_last=false data.augment=cpu``);
* fast: bf16 autocast, channels_last, augmentations batched on the device
  (``precision=bf16 train.channels_last=true data.augment=device``).

Both start from the same seed and see the same images in the same order (the sampler does
not depend on the pipeline); only the augmentation draws and the arithmetic differ. Prints
images/s and kNN top-1 (k = 200, cosine, t = 0.1) of each, their ratio and difference.

    python benchmarks/augment_parity.py --steps 100 --limit-train 10000 --limit-test 2000

The difference between two runs of the *same* pipeline with different seeds (``--seeds``
adds such runs) is the yardstick a gap should be read against.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import selfsup

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"

PIPELINES = {
    "reference (fp32, per image)": ["train.precision=fp32", "train.channels_last=false",
                                    "data.augment=cpu"],
    "fast (bf16, channels_last, batched)": ["train.precision=bf16", "train.channels_last=true",
                                            "data.augment=device"],
}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=str(CIFAR), help="ImageFolder root with train/ and test/")
    p.add_argument("--out", default="runs/augment_parity")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps for each pipeline")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit-train", type=int, default=10000, help="kNN memory bank images")
    p.add_argument("--limit-test", type=int, default=2000, help="kNN query images")
    p.add_argument("--seeds", type=int, default=1, help="runs of each pipeline (seeds 0..)")
    a = p.parse_args()

    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in PIPELINES}
    for seed in range(a.seeds):
        for name, overrides in PIPELINES.items():
            run = out / f"{name.split()[0]}_seed{seed}"
            res = selfsup.pretrain(
                "simclr", data=str(data / "train"), out=run, steps=a.steps,
                batch_size=a.batch_size, seed=seed, progress=False, overwrite=True,
                overrides=["monitor.knn=false", *overrides],
            )  # fmt: skip
            knn = selfsup.evaluate_knn(run, str(data / "train"), str(data / "test"),
                                       limit_train=a.limit_train, limit_test=a.limit_test)  # fmt: skip
            row = {"seed": seed, "images": res.state.images_seen,
                   "img_per_s": round(res.images_per_s, 1), "knn_top1": round(knn.top1, 2)}  # fmt: skip
            results[name].append(row)
            print(f"{name:<38} {json.dumps(row)}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    ref, fast = (results[n] for n in PIPELINES)
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    print(f"\n{'pipeline':<38} {'img/s':>7} {'kNN top-1':>10}")
    for name, rows in results.items():
        print(f"{name:<38} {mean(rows, 'img_per_s'):7.1f} {mean(rows, 'knn_top1'):10.2f}")
    print(f"fast / reference speed: {mean(fast, 'img_per_s') / mean(ref, 'img_per_s'):.2f}x; "
          f"kNN difference: {mean(fast, 'knn_top1') - mean(ref, 'knn_top1'):+.2f} points")  # fmt: skip
    if a.seeds > 1:
        spread = max(r["knn_top1"] for r in ref) - min(r["knn_top1"] for r in ref)
        print(f"reference seed-to-seed spread: {spread:.2f} points")


if __name__ == "__main__":
    main()
