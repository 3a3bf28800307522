"""``curate``: open the data and the model, scan, analyse, write the report, quarantine."""

from __future__ import annotations

import json
import time
from pathlib import Path

from torch import nn

from selfsup.config import ConfigError
from selfsup.curation.analysis import analyse
from selfsup.curation.fingerprints import HASH_BITS
from selfsup.curation.outputs import write_csv, write_grids
from selfsup.curation.quarantine import MANIFEST, move_flagged
from selfsup.curation.report import CurationReport
from selfsup.curation.scan import Scan, file_of, root_of, scan_source
from selfsup.data import ImageSource, subset
from selfsup.data.sources import DataError
from selfsup.embeddings import check_device_precision, feature_model, open_data
from selfsup.methods.base import Method


def _check_settings(hash_bits: int, dup_neighbors: int, outlier_k: int, outlier_z: float,
                    degenerate_z: float, outliers_top: int | None) -> None:  # fmt: skip
    if not 0 <= hash_bits <= HASH_BITS:
        raise ConfigError(f"--hash-bits must be between 0 and {HASH_BITS}, got {hash_bits}.")
    if dup_neighbors < 1 or outlier_k < 1:
        raise ConfigError("--dup-neighbors and --outlier-k must be at least 1.")
    if outlier_z <= 0 or degenerate_z <= 0:
        raise ConfigError("--outlier-z and --degenerate-z must be positive.")
    if outliers_top is not None and outliers_top < 0:
        raise ConfigError(f"--outliers-top must be 0 or more, got {outliers_top}.")


def _quarantine_folder(move_to: str | Path | None, root: Path | None) -> Path | None:
    """The resolved ``move_to`` folder, refused for named sets and inside the data folder."""
    quarantine = Path(move_to).expanduser().resolve() if move_to is not None else None
    if quarantine is not None:
        if root is None:
            raise ConfigError("--move-to needs a folder of images as --data, not a named set.")
        if quarantine == root.resolve() or root.resolve() in quarantine.parents:
            raise ConfigError(
                f"--move-to {str(quarantine)!r} is inside --data {str(root)!r}: quarantined "
                "files would be scanned again. Choose a folder outside it."
            )
    return quarantine


def _write_outputs(report: CurationReport, scan: Scan, source: ImageSource, folder: Path,
                   grid_outliers: int, grid_groups: int) -> None:  # fmt: skip
    """Grids and ``curation.csv`` into ``folder``; ``curation.json`` is written last, by
    :func:`curate`, once the moves and the time are known."""
    folder.mkdir(parents=True, exist_ok=True)
    report.files = write_grids(report, scan, source, folder, grid_outliers, grid_groups)
    write_csv(report, scan, list(source.classes), folder / "curation.csv")
    report.files["csv"] = str(folder / "curation.csv")
    report.files["json"] = str(folder / "curation.json")


def curate(
    model: str | Path | Method | nn.Module,
    data: str | Path | ImageSource,
    out: str | Path | None = "curation",
    *,
    move_to: str | Path | None = None,
    hash_bits: int = 8,
    dup_neighbors: int = 5,
    outlier_k: int = 20,
    outlier_z: float = 5.0,
    degenerate_z: float = 12.0,
    outliers_top: int | None = None,
    split: str = "train",
    data_root: str | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    limit: int | None = None,
    workers: int = -1,
    random_init: bool = False,
    grid_outliers: int = 32,
    grid_groups: int = 12,
    progress: bool = False,
) -> CurationReport:
    """Find exact duplicates, near duplicates and outliers in ``data`` with the embedding of
    ``model`` (a run folder, checkpoint, Method or feature ``nn.Module``) plus model-free
    image fingerprints; write the report to ``out`` (None: write nothing) and, with
    ``move_to``, move the flagged files there (see the :mod:`selfsup.curation` docstring for
    the method and the meaning of every threshold)."""
    t0 = time.perf_counter()
    _check_settings(hash_bits, dup_neighbors, outlier_k, outlier_z, degenerate_z, outliers_top)
    dev, prec = check_device_precision(device, precision)
    source = subset(open_data(data, split, data_root), limit, seed=0)
    root = root_of(source)
    quarantine = _quarantine_folder(move_to, root)
    if len(source) < 3:
        raise DataError(f"{source.name} has {len(source)} images; curation needs at least 3.")
    fm = feature_model(model, source, image_size, random_init)
    scan = scan_source(source, fm, dev, prec, batch_size, workers, progress)
    if len(scan.paths) < 3:
        raise DataError(f"only {len(scan.paths)} images of {source.name} are readable.")
    settings = {"hash_bits": hash_bits, "dup_neighbors": dup_neighbors, "outlier_k": outlier_k,
                "outlier_z": outlier_z, "degenerate_z": degenerate_z,
                "outliers_top": outliers_top, "image_size": fm.image_size}  # fmt: skip
    groups, outliers = analyse(
        scan, hash_bits=hash_bits, dup_neighbors=dup_neighbors, outlier_k=outlier_k,
        outlier_z=outlier_z, degenerate_z=degenerate_z, outliers_top=outliers_top, device=dev,
    )  # fmt: skip
    readable = set(scan.index)
    unreadable = [file_of(source, i)[1] for i in range(len(source)) if i not in readable]
    report = CurationReport(str(root) if root else source.name, fm.name, len(source), settings,
                            groups, outliers, unreadable)  # fmt: skip
    if out is not None:
        _write_outputs(report, scan, source, Path(out).expanduser(), grid_outliers, grid_groups)
    if quarantine is not None and root is not None:
        report.moved = move_flagged(report, root, quarantine)
        report.files["manifest"] = str(quarantine / MANIFEST)
    report.seconds = time.perf_counter() - t0
    if out is not None:
        Path(report.files["json"]).write_text(json.dumps(report.as_dict(), indent=1))
    return report
