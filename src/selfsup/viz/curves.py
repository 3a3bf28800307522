"""Training curves from a run's ``metrics.csv``: one small multiple per signal (loss,
learning rate, throughput, online probe, kNN monitor, collapse statistics, and whatever
else the method logs), against the optimiser step."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from matplotlib.ticker import FuncFormatter

from selfsup.config import ConfigError
from selfsup.train import checkpoint as ckpt_io
from selfsup.viz.common import figure, save

# (title, columns drawn together); the method's other columns follow, one panel each.
PANELS: list[tuple[str, list[str]]] = [
    ("loss", ["loss"]),
    ("learning rate", ["lr"]),
    ("throughput (images/s)", ["img_per_s"]),
    ("online linear probe accuracy (%)", ["probe_acc"]),
    ("kNN monitor accuracy (%)", ["knn_top1", "knn_top5"]),
    ("feature std ratio (collapse: near 0)", ["std_ratio"]),
    ("RankMe effective rank (collapse: near 1)", ["rankme"]),
]
NOT_DRAWN = {"step", "epoch", "images", "elapsed_s", "data_wait", "collapse"}
COLS = 3
PANEL_W, PANEL_H = 3.4, 2.5


def run_folder(run: str | Path) -> Path:
    """A run folder, or the folder of a checkpoint file."""
    p = Path(run).expanduser()
    if p.is_file():
        return p.parent.parent if p.parent.name == ckpt_io.CHECKPOINT_DIR else p.parent
    if not p.is_dir():
        raise ConfigError(f"run folder {str(p)!r} does not exist.")
    return p


def read_metrics(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``metrics.csv`` -> {column: [(step, value), ...]} for every numeric, non-empty cell."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            for key, text in row.items():
                if key is None or key in NOT_DRAWN or not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(step) and math.isfinite(value):
                    series.setdefault(key, []).append((step, value))
    return series


def _collapsed_steps(path: Path) -> list[float]:
    with open(path, newline="") as f:
        return [float(r["step"]) for r in csv.DictReader(f)
                if r.get("collapse") in ("1", "True", "true") and r.get("step")]  # fmt: skip


def panels(series: dict[str, list[tuple[float, float]]]) -> list[tuple[str, list[str]]]:
    """The panels that have data: the standard ones, then one per other logged column."""
    out = [(t, [c for c in cols if c in series]) for t, cols in PANELS]
    out = [(t, cols) for t, cols in out if cols]
    known = {c for _, cols in PANELS for c in cols}
    out += [(key, [key]) for key in series if key not in known]
    return out


def curves(run: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Small multiples of every signal in ``<run>/metrics.csv``; red lines mark steps where
    the collapse monitor fired."""
    folder = run_folder(run)
    path = folder / "metrics.csv"
    if not path.is_file():
        raise ConfigError(
            f"no metrics.csv in {str(folder)!r}: curves need a run folder written by "
            "`selfsup pretrain` (it logs every train.log_every steps)."
        )
    series = read_metrics(path)
    chosen = panels(series)
    if not chosen:
        raise ConfigError(
            f"{path} holds no logged values yet; train for at least train.log_every steps."
        )
    rows = math.ceil(len(chosen) / COLS)
    cols = min(COLS, len(chosen))
    last = max(s for pts in series.values() for s, _ in pts)
    fig = figure(cols * PANEL_W, rows * PANEL_H + 0.6,
                 title or f"{folder.name}: training curves (up to step {last:.0f})")  # fmt: skip
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / (rows * PANEL_H + 0.6),
                        top=1 - 0.6 / (rows * PANEL_H + 0.6), wspace=0.3, hspace=0.55)  # fmt: skip
    axes = fig.subplots(rows, cols, squeeze=False)
    collapsed = _collapsed_steps(path)
    for ax in axes.flat[len(chosen) :]:
        ax.set_visible(False)
    for ax, (name, cols_) in zip(axes.flat, chosen, strict=False):
        for c in cols_:
            xs, ys = zip(*series[c], strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, ms=3, lw=1.4, label=c)
        if name.startswith(("feature std", "RankMe")):
            for s in collapsed:
                ax.axvline(s, color="#d62728", lw=0.8, alpha=0.6)
        if len(cols_) > 1:
            ax.legend(fontsize=7, frameon=False)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return save(fig, out)
