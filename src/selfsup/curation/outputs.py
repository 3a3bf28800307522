"""What ``curate`` writes besides ``curation.json``: ``curation.csv`` (one row per image,
flagged first) and the image grids ``outliers.png`` and ``duplicates.png``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.curation.report import CurationReport, DuplicateGroup, Member
from selfsup.curation.scan import Scan
from selfsup.data import ImageSource
from selfsup.data.decode import to_tensor


def write_csv(report: CurationReport, scan: Scan, classes: list[str], path: Path) -> None:
    """``curation.csv``: one row per image; flagged duplicates (by group), then flagged
    outliers (by rank), then the rest (kept images and ok, by rank)."""
    group_of: dict[str, tuple[DuplicateGroup, Member | None]] = {}
    for grp in report.groups:
        group_of[grp.keep] = (grp, None)
        for mem in grp.members:
            group_of[mem.path] = (grp, mem)
    label_of = dict(zip(scan.paths, scan.labels, strict=True))
    flagged = set(report.flagged_outliers)
    dup_rows: list[dict[str, Any]] = []
    out_rows: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for o in report.outliers:
        g: DuplicateGroup | None = None
        m: Member | None = None
        if o.path in group_of:
            g, m = group_of[o.path]
        status = "ok"
        if m is not None:
            status = f"{m.kind}_duplicate"
        elif o.path in flagged:
            status = "outlier"
        elif g is not None:
            status = "keep"
        t = label_of.get(o.path, -1)
        row = {
            "path": o.path, "label": t if t >= 0 else "", "class": classes[t] if 0 <= t < len(classes) else "",
            "status": status, "group": g.id if g else "", "keep": g.keep if g else "",
            "similarity": m.similarity if m else "",
            "hash_bits": "" if m is None or m.hash_bits is None else m.hash_bits,
            "outlier_rank": o.rank, "severity": o.severity, "z_embedding": o.z_embedding,
            "z_pixels": o.z_pixels, "knn_distance": o.knn_distance,
            "reason": o.reason if status == "outlier" else "",
        }  # fmt: skip
        (dup_rows if m else out_rows if status == "outlier" else rest).append(row)
    dup_rows.sort(key=lambda r: (r["group"], r["path"]))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list((dup_rows + out_rows + rest)[0]))
        w.writeheader()
        w.writerows(dup_rows + out_rows + rest)


def _tile(source: ImageSource, i: int, size: int) -> np.ndarray:
    from PIL import Image

    raw = to_tensor(source.load(i), 3)
    if raw.dtype != torch.uint8:
        raw = (raw.clamp(0, 1) * 255).round().to(torch.uint8)
    img = Image.fromarray(raw.permute(1, 2, 0).numpy())
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    if max(img.size) < size:  # small images: blow up with visible pixels
        f = size / max(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))),
                         Image.Resampling.NEAREST)  # fmt: skip
    return np.asarray(img)


Cell = tuple[int, str, bool] | None
GRID_COLUMNS = 9


def save_grid(
    rows: list[list[Cell]], source: ImageSource, title: str, path: Path, tile: int = 64,
    dpi: int = 100, columns: int = GRID_COLUMNS,
) -> Path:  # fmt: skip
    """A PNG of image rows, ``tile`` px a cell, at least ``columns`` wide; each cell
    ``(source index, caption, highlight)`` or None (a gap). One mosaic drawn on a single
    axis: fast, and small whatever the count."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pad, caption, top = 4, 14, 22
    cols = max(columns, *(len(r) for r in rows))
    width, height = cols * (tile + pad) + pad, top + len(rows) * (tile + caption + pad)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    texts: list[tuple[float, float, str, bool]] = []
    for r, row in enumerate(rows):
        y = top + r * (tile + caption + pad)
        for c, cell in enumerate(row):
            if cell is None:
                continue
            i, text, hot = cell
            x = pad + c * (tile + pad)
            img = _tile(source, i, tile)
            dy, dx = (tile - img.shape[0]) // 2, (tile - img.shape[1]) // 2
            canvas[y + dy : y + dy + img.shape[0], x + dx : x + dx + img.shape[1]] = img[..., :3]
            texts.append((x + tile / 2, y + tile + caption / 2, text, hot))
    ax.imshow(canvas, interpolation="nearest")
    for tx, ty, text, hot in texts:
        ax.text(tx, ty, text, ha="center", va="center", fontsize=6.5,
                color="#c0392b" if hot else "#222222")  # fmt: skip
    ax.text(pad, top / 2, title, ha="left", va="center", fontsize=7.5)
    fig.savefig(path, dpi=dpi)
    return path


def write_grids(report: CurationReport, scan: Scan, source: ImageSource, out: Path,
                top_outliers: int, top_groups: int) -> dict[str, str]:  # fmt: skip
    """outliers.png (most outlying first) and duplicates.png (groups side by side, each
    its kept image then up to five flagged copies)."""
    pos = {p: scan.index[k] for k, p in enumerate(scan.paths)}
    files = {}
    dups = set(report.flagged_duplicates)
    ranked = [o for o in report.outliers if o.path not in dups][:top_outliers]
    if ranked:
        cells: list[Cell] = [(pos[o.path], f"#{o.rank} {o.severity:.2f}", o.flagged)
                             for o in ranked]  # fmt: skip
        rows = [cells[s : s + GRID_COLUMNS] for s in range(0, len(cells), GRID_COLUMNS)]
        title = f"most outlying of {report.images} images: rank, severity (>= 1: flagged, red)"
        files["outliers_png"] = str(save_grid(rows, source, title, out / "outliers.png"))
    if report.groups:
        rows, row = [], list[Cell]()
        for g in report.groups[:top_groups]:
            group: list[Cell] = [(pos[g.keep], "keep", False)]
            for m in g.members[:5]:
                cap = "exact" if m.kind == "exact" else (
                    f"{m.similarity:.3f} / {m.hash_bits}b" if m.hash_bits is not None
                    else f"{m.similarity:.3f} blank")  # fmt: skip
                group.append((pos[m.path], cap, True))
            if row and len(row) + 1 + len(group) > GRID_COLUMNS:
                rows.append(row)
                row = []
            row += ([None] if row else []) + group
        rows.append(row)
        title = "duplicate groups: kept image, then its flagged copies (cosine / hash bits)"
        files["duplicates_png"] = str(save_grid(rows, source, title, out / "duplicates.png"))
    return files
