"""Does the linear probe's regularisation decide "pretext against random init" on video?

For runs of ``benchmarks/video.py`` (folders under ``--out``), extracts the clip features
of each run and of its untrained network once (as ``selfsup eval video`` does: 2 clips a
video at the run's frames and stride), then scores several linear probes on the same
3-fold x 3-seed splits: the shipped one (standardised features, C = 1), C chosen by an
inner 3-fold cross-validation on each training fold, fixed strong or weak regularisation,
and no standardising. Prints each probe's mean top-1 per run and untrained, and the paired
difference (run minus untrained, fold by fold) pooled over the runs.

    SELFSUP_DATASETS=../shared/datasets python benchmarks/video_probes.py --out /tmp/video \\
        --runs rho-simclr,rho-simclr-train1,rho-simclr-train2,rho-simclr-train3
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("SELFSUP_DATASETS", ROOT.parent / "shared" / "datasets"))


def features(run: Path, data: Path, random_init: bool) -> tuple[np.ndarray, np.ndarray]:
    """The run's clip features and labels, cached beside the run."""
    cache = run.parent / f"features-{run.name}{'-random' if random_init else ''}.pt"
    if not cache.exists():
        import selfsup.tasks.video as tv

        got: dict[str, torch.Tensor] = {}
        real = tv.cross_validate

        def keep(feats: torch.Tensor, labels: torch.Tensor, **kw: Any) -> Any:
            got["f"], got["y"] = feats, labels
            return real(feats, labels, **kw)

        tv.cross_validate = keep  # type: ignore[assignment]
        try:
            tv.evaluate_video(run, data, random_init=random_init, progress=False)
        finally:
            tv.cross_validate = real
        torch.save(got, cache)
    d = torch.load(cache)
    x = torch.nn.functional.normalize(d["f"].float(), dim=1)  # as cross_validate does
    return x.numpy(), d["y"].numpy()


def probes() -> dict[str, Callable[[], Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def std(c: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    inner = StratifiedKFold(3, shuffle=True, random_state=0)
    grid = {"logisticregression__C": [1e-3, 1e-2, 1e-1, 1.0, 10.0]}
    return {
        "standardised, C = 1 (shipped)": lambda: std(1.0),
        "standardised, C by inner 3-fold CV": lambda: GridSearchCV(std(1.0), grid, cv=inner),
        "standardised, C = 0.01": lambda: std(0.01),
        "not standardised, C = 1": lambda: LogisticRegression(C=1.0, max_iter=5000),
        "not standardised, C = 100": lambda: LogisticRegression(C=100.0, max_iter=5000),
    }


def fold_scores(make: Callable[[], Any], x: np.ndarray, y: np.ndarray) -> list[float]:
    from sklearn.model_selection import StratifiedKFold

    out = []
    for seed in (0, 1, 2):
        for tr, te in StratifiedKFold(3, shuffle=True, random_state=seed).split(x, y):
            pred = make().fit(x[tr], y[tr]).predict(x[te])
            out.append(float((pred == y[te]).mean() * 100))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="benchmarks/video.py's --out")
    ap.add_argument("--runs", required=True, help="run folders under --out, comma-separated")
    ap.add_argument("--data", type=Path, default=DATASETS / "videos" / "weizmann4")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    runs = [a.out / r for r in a.runs.split(",")]
    feats = {(r, rnd): features(r, a.data, rnd) for r in runs for rnd in (False, True)}
    print("| probe | " + " | ".join(r.name for r in runs) + " | paired, pooled (w/t/l) |")
    print("|---|" + "---|" * len(runs) + "---|")
    for name, make in probes().items():
        cells, diffs = [], []
        for r in runs:
            ssl, floor = (fold_scores(make, *feats[(r, rnd)]) for rnd in (False, True))
            cells.append(f"{statistics.mean(ssl):.1f} / {statistics.mean(floor):.1f}")
            diffs += [u - v for u, v in zip(ssl, floor, strict=True)]
        w, t = sum(d > 0 for d in diffs), sum(d == 0 for d in diffs)
        paired = f"{statistics.mean(diffs):+.1f} ± {statistics.stdev(diffs):.1f}"
        print(f"| {name} | " + " | ".join(cells) + f" | {paired} ({w}/{t}/{len(diffs) - w - t}) |")
    print("\ncells: run / its untrained network, mean top-1 over 9 folds")


if __name__ == "__main__":
    main()
