"""Precision and recall of ``selfsup curate`` on CIFAR-10 with planted problems.

Builds a folder of CIFAR-10 training images (``--per-class`` a class) into which exact
copies, near copies (upscaled 2x, downscaled to 3/4, JPEG re-encoded at quality 30 then 40,
cropped by 10% and resized back) and out-of-domain images (PneumoniaMNIST chest X-rays,
uniform noise, flat colour) are planted, runs ``selfsup curate`` on it through the CLI with
the given run and with the same run's random-init weights, and prints one table:

    python benchmarks/curation.py --checkpoint RUN
    python benchmarks/curation.py --checkpoint RUN --per-class 20 --exact 10 --near 20 --ood 15

The planted set is rebuilt from ``--seed`` each time (under ``--work``), so the figures are
reproducible. Precision counts a genuine near-duplicate already in CIFAR-10 as a false
positive; the flagged pairs that were not planted are listed so they can be looked at.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "tests"))

from planted import plant_curation_set, score_curation  # noqa: E402

from selfsup.cli import main as cli  # noqa: E402

ROWS = [
    ("exact duplicates: recall", "exact_recall"),
    ("exact duplicates: precision", "exact_precision"),
    ("near duplicates: recall", "near_recall"),
    ("  upscaled 2x", "near_recall_upscaled"),
    ("  downscaled to 3/4", "near_recall_downscaled"),
    ("  JPEG quality 30 -> 40", "near_recall_jpeg"),
    ("  cropped 10%, resized back", "near_recall_cropped"),
    ("near duplicates: precision", "near_precision"),
    ("outliers flagged", "outlier_flagged"),
    ("outliers: precision (flagged)", "outlier_precision"),
    ("outliers: recall (flagged)", "outlier_recall"),
    ("outliers: recall in top K", "outlier_recall_at_k"),
    ("  chest X-rays", "outlier_recall_at_k_xray"),
    ("  uniform noise", "outlier_recall_at_k_noise"),
    ("  flat colour", "outlier_recall_at_k_flat"),
]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="run folder (curate writes nothing there)")
    p.add_argument("--work", default="/tmp/selfsup-curation-bench", help="planted set, reports")
    p.add_argument("--cifar", default=str(SHARED / "cifar10" / "train"))
    p.add_argument("--xrays", default=str(SHARED / "pneumoniamnist" / "train"))
    p.add_argument("--per-class", type=int, default=200, help="CIFAR-10 images a class")
    p.add_argument("--exact", type=int, default=50, help="planted exact copies")
    p.add_argument("--near", type=int, default=50, help="planted near copies")
    p.add_argument("--ood", type=int, default=50, help="planted out-of-domain images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-floor", action="store_true", help="skip the random-init column")
    p.add_argument("options", nargs="*", help="extra curate options, e.g. -- --device cuda")
    a = p.parse_args()

    work = Path(a.work)
    truth = plant_curation_set(Path(a.cifar), Path(a.xrays), work / "data", a.per_class,
                               a.exact, a.near, a.ood, a.seed)  # fmt: skip
    n = len(truth.originals) + a.exact + a.near + a.ood
    print(f"planted set: {truth.root} ({n} images: {len(truth.originals)} CIFAR-10, "
          f"{a.exact} exact copies, {a.near} near copies, {a.ood} out-of-domain)")  # fmt: skip
    columns = {}
    for name, extra in [("trained", []), ("random init", ["--random-init"])][
        : 1 if a.no_floor else 2
    ]:
        out = work / ("report" if not extra else "report_random_init")
        args = ["curate", "--checkpoint", a.checkpoint, "--data", str(truth.root),
                "--out", str(out), "--no-progress", *extra, *a.options]  # fmt: skip
        print("$ selfsup " + shlex.join(args), flush=True)
        t0 = time.perf_counter()
        if cli(args) != 0:
            raise SystemExit(f"curate failed ({name})")
        report = json.loads((out / "curation.json").read_text())
        m = score_curation(report, truth)
        m["seconds"] = time.perf_counter() - t0
        columns[name] = m
        planted = {frozenset(x[:2]) for x in truth.exact + truth.near}
        extra_pairs = [(mm["path"], g["keep"], mm["similarity"], mm["hash_bits"])
                       for g in report["duplicate_groups"] for mm in g["members"]
                       if frozenset((mm["path"], g["keep"])) not in planted]  # fmt: skip
        for pair in extra_pairs:
            print(f"  [{name}] flagged, not planted: {pair[0]} ~ {pair[1]} "
                  f"(cosine {pair[2]}, hash bits {pair[3]})")  # fmt: skip
    print()
    print("| " + " | ".join(["", *columns]) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, key in [*ROWS, ("seconds (this machine)", "seconds")]:
        cells = []
        for m in columns.values():
            v = m[key]
            cells.append(f"{int(v)}" if key.endswith("flagged") else f"{v:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nK = {a.ood} (the number of planted out-of-domain images); reports in {work}")


if __name__ == "__main__":
    main()
