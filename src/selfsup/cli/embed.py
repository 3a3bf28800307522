"""``selfsup embed`` (one embedding per image to a file) and ``selfsup curate`` (duplicates,
near duplicates and outliers found with those embeddings)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from selfsup.cli.common import (
    Formatter,
    Subparsers,
    add_progress_flags,
    fmt_default,
    print_columns,
    print_table,
    signature_default,
)

if TYPE_CHECKING:
    from selfsup.curation import CurationReport

EPILOG_EMBED = """\
formats (by the --out suffix):
  .parquet  one row per image: index, path, label, class, embedding (fixed-size list<float32>);
            read with pandas.read_parquet or selfsup.read_embeddings
  .npy      the (N, D) float32 matrix, plus NAME.paths.txt (one path a line) and, for
            labelled folders, NAME.labels.txt (class index<TAB>class name a line)

examples:
  selfsup embed --checkpoint runs/simclr --data ../shared/datasets/cifar10/test --out test.parquet
  selfsup embed --checkpoint runs/simclr --data DIR --out emb.npy --l2-normalize --device cuda
"""

EPILOG_CURATE = """\
how it decides:
  exact duplicates  identical file bytes
  near duplicates   one image among the other's --dup-neighbors nearest embeddings AND
                    perceptual hashes within --hash-bits (best of the whole image and nine
                    90% crops): catches resized, re-encoded and slightly cropped copies even
                    with a weakly trained model; each group keeps its largest image
  outliers          mean cosine distance to the --outlier-k nearest embeddings as a robust
                    z-score (--outlier-z), or a model-free z-score for noise-like and blank
                    images (--degenerate-z), or, in a mostly colour data set, a colourless
                    image whose --outlier-k nearest embeddings are colourless far more often
                    than chance (p <= 0.001: a group from another source, e.g. X-rays);
                    ranked by the largest, each divided by its threshold (severity >= 1 is
                    flagged)

tuning:
  too many false near duplicates (similar but distinct images): lower --hash-bits (6);
  copies missed (heavier crops or edits): raise --hash-bits (12) and --dup-neighbors (10).
  outliers: look at outliers.png first; raise --outlier-z to flag fewer, or give
  --outliers-top N to flag exactly the N most outlying. Raise --outlier-k above the size of
  the largest group of similar stray images you expect (a cluster of 30 look-alike
  out-of-domain images hides itself from k=20).

outputs in --out: curation.json, curation.csv (one row per image, flagged first),
duplicates.png, outliers.png. --move-to moves the flagged files (never deletes), keeping
their paths relative to --data, and writes curation_manifest.json there; --undo moves back.

examples:
  selfsup curate --checkpoint runs/simclr --data photos/ --out curation/
  selfsup curate --checkpoint runs/simclr --data photos/ --move-to quarantine/ --outliers-top 50
  selfsup curate --undo quarantine/
"""


def _feature_options(p: argparse.ArgumentParser, func: Callable[..., Any]) -> None:
    """Options shared by embed and curate (defaults read from ``func``)."""

    def d(name: str) -> str:
        return fmt_default(signature_default(func, name))

    p.add_argument(
        "--data-root",
        default=None,
        help="where a named set is read from (default: ~/.cache/selfsup/data)",
    )
    p.add_argument(
        "--split", default=d("split"), help=f"split of a named set (default: {d('split')})"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resolution (default: the run's training resolution)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many images, class-balanced (default: all)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=signature_default(func, "batch_size"),
        help=f"images a forward pass; memory stays bounded by it (default: {d('batch_size')})",
    )
    p.add_argument(
        "--device", default=d("device"), help=f"auto, cpu, cuda, cuda:N (default: {d('device')})"
    )
    p.add_argument(
        "--precision",
        default=d("precision"),
        help=f"auto, bf16, fp16 (GPU) or fp32; auto is bf16 on GPUs and fast-bf16 "
        f"CPUs (default: {d('precision')})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=signature_default(func, "workers"),
        help=f"decoding processes; 0 decodes in the main process (default: "
        f"{d('workers')}: up to 4)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="use the run's architecture with its untrained initial weights (default: false)",
    )
    add_progress_flags(p)
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object (default: false)")  # fmt: skip


def _feature_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return dict(split=a.split, data_root=a.data_root, image_size=a.image_size,
                batch_size=a.batch_size, device=a.device, precision=a.precision, limit=a.limit,
                workers=a.workers, random_init=a.random_init, progress=not a.no_progress)  # fmt: skip


# ----------------------------------------------------------------------------- embed


def add_embed_parser(sub: Subparsers) -> None:
    from selfsup.embeddings import embed

    em = sub.add_parser(
        "embed", help="write one embedding per image to .parquet or .npy",
        formatter_class=Formatter, epilog=EPILOG_EMBED,
        description="Embed every image of a folder (or named set) with a run's backbone, "
        "streamed batch by batch to a Parquet or .npy file, so memory stays bounded for "
        "folders of any size. Unreadable images are skipped with a warning.",
    )  # fmt: skip
    em.set_defaults(handler=run_embed)
    em.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN",
        help="run folder or checkpoint file (required)",
    )
    em.add_argument(
        "--data",
        required=True,
        help="folder of images (class sub-folders give labels) or a named set (required)",
    )
    em.add_argument(
        "--out",
        default="embeddings.parquet",
        help="output file, .parquet or .npy (default: embeddings.parquet)",
    )
    em.add_argument("--l2-normalize", action="store_true",
                    help="scale each embedding to unit length, so cosine similarity is a dot "
                    "product (default: false, raw backbone features)")  # fmt: skip
    _feature_options(em, embed)


def run_embed(a: argparse.Namespace) -> int:
    from selfsup.embeddings import embed

    res = embed(a.checkpoint, a.data, a.out, l2_normalize=a.l2_normalize, **_feature_kwargs(a))
    if a.json:
        print(json.dumps(res.as_dict()))
        return 0
    print(f"{res.rows} embeddings of {res.dim} values written to {res.path} "
          f"({res.seconds:.1f}s{f', {res.skipped} unreadable images skipped' if res.skipped else ''})")  # fmt: skip
    for p in res.sidecars:
        print(f"  {p}")
    return 0


# ----------------------------------------------------------------------------- curate


def add_curate_parser(sub: Subparsers) -> None:
    from selfsup.curation import curate

    cu = sub.add_parser(
        "curate", help="find duplicates, near duplicates and outliers; optionally quarantine",
        formatter_class=Formatter, epilog=EPILOG_CURATE,
        description="Rank the exact duplicates, near duplicates and outliers of an image "
        "folder with a run's embedding plus cheap perceptual checks, write a report and "
        "image grids, and optionally move the flagged files to a quarantine folder.",
    )  # fmt: skip
    cu.set_defaults(handler=run_curate)
    cu.add_argument(
        "--checkpoint",
        default=None,
        metavar="RUN",
        help="run folder or checkpoint file (required unless --undo)",
    )
    cu.add_argument(
        "--data", default=None, help="folder of images, any depth (required unless --undo)"
    )
    cu.add_argument(
        "--out",
        default=signature_default(curate, "out"),
        metavar="DIR",
        help=f"report folder (default: {signature_default(curate, 'out')})",
    )
    cu.add_argument(
        "--move-to",
        default=None,
        metavar="DIR",
        help="move flagged files here, keeping their relative paths, and record "
        "them in DIR/curation_manifest.json; must be outside --data "
        "(default: move nothing)",
    )
    cu.add_argument(
        "--undo",
        default=None,
        metavar="DIR",
        help="move the files listed in DIR/curation_manifest.json back and exit (default: none)",
    )
    _curate_thresholds(cu, curate)
    _feature_options(cu, curate)


def _curate_thresholds(cu: argparse.ArgumentParser, curate: Callable[..., Any]) -> None:
    """How curate decides what to flag, and how much of it the grids show."""
    from selfsup.curation import HASH_BITS

    def d(name: str) -> Any:
        return signature_default(curate, name)

    cu.add_argument(
        "--hash-bits",
        type=int,
        default=d("hash_bits"),
        help=f"most differing perceptual-hash bits (of {HASH_BITS}) for a near "
        f"duplicate; resized or re-encoded copies differ by 0-4, 10%% crops by "
        f"0-8, unrelated images by ~30 (default: {d('hash_bits')})",
    )
    cu.add_argument(
        "--dup-neighbors",
        type=int,
        default=d("dup_neighbors"),
        help=f"one image of a near-duplicate pair must be among the other's this many nearest "
        f"embeddings; raise it for groups of many copies "
        f"(default: {d('dup_neighbors')})",
    )
    cu.add_argument(
        "--outlier-k",
        type=int,
        default=d("outlier_k"),
        help=f"neighbours whose mean cosine distance scores an image (its own "
        f"duplicates left out) (default: {d('outlier_k')})",
    )
    cu.add_argument(
        "--outlier-z",
        type=float,
        default=d("outlier_z"),
        help=f"robust z-score of that distance from which an image is flagged; the "
        f"highest of 2,000 CIFAR-10 photos is about 4, and more images reach higher: 4 "
        f"flags more, 8 only the blatant (default: {d('outlier_z')})",
    )
    cu.add_argument(
        "--degenerate-z",
        type=float,
        default=d("degenerate_z"),
        help=f"robust z-score of the model-free noise / blank measures from which "
        f"an image is flagged; among 2,000 CIFAR-10 photos the highest is 8.5, pure noise "
        f"and flat images score about 20 (default: {d('degenerate_z')})",
    )
    cu.add_argument(
        "--outliers-top",
        type=int,
        default=None,
        metavar="N",
        help="flag exactly the N most outlying images instead of using the "
        "thresholds (default: thresholds)",
    )
    cu.add_argument(
        "--grid-outliers",
        type=int,
        default=d("grid_outliers"),
        help=f"images in outliers.png (default: {d('grid_outliers')})",
    )
    cu.add_argument("--grid-groups", type=int, default=d("grid_groups"),
                    help=f"groups in duplicates.png (default: {d('grid_groups')})")  # fmt: skip


def run_curate(a: argparse.Namespace) -> int:
    from selfsup.config import ConfigError
    from selfsup.curation import curate, restore_quarantine

    if a.undo:
        counts = restore_quarantine(a.undo)
        print(json.dumps(counts) if a.json else
              f"restored {counts['restored']} files; {counts['left']} left in {a.undo}"
              + (f" ({counts['missing']} no longer there)" if counts["missing"] else ""))  # fmt: skip
        return 0
    if a.checkpoint is None or a.data is None:
        raise ConfigError("selfsup curate needs --checkpoint RUN and --data DIR (or --undo DIR).")
    rep = curate(a.checkpoint, a.data, a.out, move_to=a.move_to, hash_bits=a.hash_bits,
                 dup_neighbors=a.dup_neighbors, outlier_k=a.outlier_k, outlier_z=a.outlier_z,
                 degenerate_z=a.degenerate_z, outliers_top=a.outliers_top,
                 grid_outliers=a.grid_outliers, grid_groups=a.grid_groups,
                 **_feature_kwargs(a))  # fmt: skip
    if a.json:
        print(json.dumps(rep.summary() | {"files": rep.files}))
        return 0
    _print_curation(rep)
    return 0


def _print_curation(rep: CurationReport) -> None:
    """The summary table, the most outlying images, the duplicate groups, the files."""
    s = rep.summary()
    print_table(f"curation: {rep.data}", [
        ("images", str(s["images"])),
        ("unreadable", str(s["unreadable"])),
        ("exact duplicates (groups)", f"{s['exact_duplicates']} ({s['exact_groups']})"),
        ("near duplicates (groups)", f"{s['near_duplicates']} ({s['near_groups']})"),
        ("outliers flagged", str(s["outliers"])),
        ("moved to quarantine", str(s["moved"])),
        ("seconds", f"{rep.seconds:.1f}"),
    ])  # fmt: skip
    top = [o for o in rep.outliers if o.path not in set(rep.flagged_duplicates)][:10]
    if top:
        rows = [(str(o.rank), o.path, f"{o.severity:.2f}", o.reason) for o in top]
        title = "most outlying images (severity >= 1 is flagged)"
        print_columns(title, ("rank", "path", "severity", "why"), rows)
    if rep.groups:
        groups = [
            (str(g.id), g.keep, ", ".join(f"{m.path} ({m.kind})" for m in g.members))
            for g in rep.groups[:10]
        ]
        title = f"duplicate groups (first 10 of {len(rep.groups)})"
        print_columns(title, ("group", "keep", "flagged copies"), groups)
    for name, path in rep.files.items():
        print(f"{name}: {path}")
