"""Run logs: ``metrics.csv`` (one row per logged step), TensorBoard event files, and the
rows mirrored to external trackers (MLflow, W&B: :mod:`selfsup.train.trackers`)."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

from selfsup.train.trackers import Tracker, numeric

BASE_COLUMNS = ["step", "epoch", "images", "elapsed_s", "lr", "img_per_s", "data_wait"]
MONITOR_COLUMNS = ["knn_top1", "knn_top5"]


class MetricsLogger:
    """Appends rows to ``metrics.csv`` and scalars to TensorBoard.

    The CSV header is fixed by the first row (standard columns, the method's own log keys,
    monitor columns); on resume, rows after the resumed step are dropped so that the curve
    stays one consistent history.
    """

    def __init__(self, out_dir: Path, resume_step: int | None = None, tensorboard: bool = True,
                 trackers: list[Tracker] | None = None) -> None:  # fmt: skip
        self.trackers = trackers or []
        self.path = out_dir / "metrics.csv"
        self.columns: list[str] | None = None
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                rows = [r for r in reader if r.get("step") and int(r["step"]) <= resume_step]
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.columns)
                w.writeheader()
                w.writerows(rows)
        elif self.path.exists():
            self.path.unlink()
        self.tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                warnings.warn(
                    "tensorboard is not installed; logging to metrics.csv only.", stacklevel=2
                )

    def log(self, row: dict[str, Any]) -> None:
        if self.columns is None:
            extra = [k for k in row if k not in BASE_COLUMNS and k not in MONITOR_COLUMNS]
            self.columns = BASE_COLUMNS + extra + MONITOR_COLUMNS
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writeheader()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writerow({k: _fmt(v) for k, v in row.items()})
        if self.tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k in ("step",) or v is None or not isinstance(v, int | float):
                    continue
                self.tb.add_scalar(_tb_name(k), v, step)
        values = numeric({k: v for k, v in row.items() if k != "step"})
        for t in self.trackers:
            t.log_metrics(values, int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def _tb_name(key: str) -> str:
    if key.startswith("knn"):
        return f"monitor/{key}"
    if key in BASE_COLUMNS:
        return f"train/{key}"
    return f"loss/{key}" if "loss" in key else f"method/{key}"


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return v
