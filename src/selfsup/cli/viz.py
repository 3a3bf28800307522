"""``selfsup viz KIND`` (one figure as PNG) and ``selfsup report`` (one HTML page)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from selfsup.cli.common import Formatter, Subparsers

EPILOG_VIZ = """\
kinds:
  embedding-map   2-D map of the embeddings (--algo pca|tsne|umap), coloured by class
  retrieval       query images and their --k nearest neighbours (cosine), green/red borders
  attention       ViT class-token self-attention per head (DINO-style)
  gradcam         Grad-CAM of a logistic-regression probe's class, for CNN backbones
  video-gradcam   Grad-CAM frame by frame of one clip a class (CNNs, videomae; --data videos)
  patch-pca       PCA of ViT patch features as colours (DINOv2-style)
  reconstruction  MAE masked input / reconstruction / original
  augmentations   the method's training views of a few images
  curves          training curves from the run's metrics.csv

examples:
  selfsup viz embedding-map --checkpoint runs/simclr --data cifar10 --algo tsne --out map.png
  selfsup viz retrieval --checkpoint runs/simclr --data ../shared/datasets/cifar10/test --out nn.png
  selfsup viz gradcam --checkpoint runs/simclr --data DIR --class-index cat --out cam.png
  selfsup viz video-gradcam --checkpoint runs/simclr --data ../shared/datasets/videos/weizmann4 --out cam.png
  selfsup viz curves --checkpoint runs/simclr --out curves.png
without --data, figures use the run's own data.path when it is still there.
"""

# (flag, keyword of the figure functions, type, help); a flag a kind does not use is refused.
VIZ_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--data", "data", str, "images: a folder (class sub-folders give labels) or a named set "
     "(default: the run's data.path)"),
    ("--data-root", "data_root", str, "where named sets are read from (default: none)"),
    ("--split", "split", str, "split of a named set (default: test)"),
    ("--queries", "queries", str, "retrieval, gradcam: folder of the images to show (default: "
     "drawn from --data)"),
    ("--algo", "algo", str, "embedding-map: pca (instant), tsne (clusters, ~10 s for 2,000 "
     "images) or umap (needs umap-learn) (default: tsne)"),
    ("--limit", "limit", int, "embedding-map, retrieval bank, gradcam probe: at most this many "
     "images, class-balanced (default: 2000; retrieval 1000)"),
    ("--num-images", "num_images", int, "images shown (default: 6 or 8; augmentations 4)"),
    ("--num-views", "num_views", int, "augmentations: views a row; more than the method "
     "draws per sample shows further samples (default: the method's, e.g. 2 SimCLR, 8 DINO)"),
    ("--k", "k", int, "retrieval: neighbours a query (default: 8)"),
    ("--class-index", "class_index", str, "gradcam: explain this class (index or name) for "
     "every image (default: each image's predicted class)"),
    ("--threshold", "threshold", float, "patch-pca: foreground when the first component, "
     "scaled to [0, 1], is above it; 0 keeps every patch (default: 0.5)"),
    ("--frames", "frames", int, "video-gradcam: frames a clip (default: 8; a video run's own)"),
    ("--stride", "stride", int, "video-gradcam: frames between a clip's frames (default: 4; a video run's own)"),
    ("--clips", "clips", int, "video-gradcam: clips a video for the probe's features (default: 2)"),
    ("--seed", "seed", int, "which images are drawn (default: 0)"),
    ("--device", "device", str, "feature extraction device: auto, cpu, cuda (default: auto)"),
]  # fmt: skip


# The figure kinds of selfsup.viz.KINDS, named here so that building the parser (every
# command's start-up) does not import selfsup.viz and matplotlib (about a second);
# tests/test_viz.py checks that the two agree.
KIND_NAMES = ("embedding-map", "retrieval", "attention", "gradcam", "patch-pca",
              "reconstruction", "augmentations", "curves", "video-gradcam")  # fmt: skip


def add_viz_parser(sub: Subparsers) -> None:
    vz = sub.add_parser(
        "viz", help="draw a figure of a run as PNG: embedding-map, retrieval, attention, ...",
        formatter_class=Formatter, epilog=EPILOG_VIZ,
        description="Draw one figure of a trained run into a PNG file (matplotlib, no display "
        "needed). Images are shown with the run's normalisation undone.",
    )  # fmt: skip
    vz.set_defaults(handler=run_viz)
    vz.add_argument("kind", choices=KIND_NAMES, metavar="KIND", help="figure: see kinds below")
    vz.add_argument("--checkpoint", required=True, metavar="RUN",
                    help="run folder or checkpoint file (required)")  # fmt: skip
    vz.add_argument("--out", required=True, metavar="FILE.png", help="PNG file to write (required)")
    for flag, key, typ, help_ in VIZ_FLAGS:
        vz.add_argument(flag, dest=key, type=typ, default=None, help=help_)


def add_report_parser(sub: Subparsers) -> None:
    rp = sub.add_parser(
        "report", help="one self-contained HTML page about a run",
        formatter_class=Formatter,
        description="Write an HTML report of a run: summary, resolved config, training "
        "curves, evaluation tables found in the run folder, and the figures that apply to the "
        "run (figures/ saved by the trainer are reused). Images are embedded, no scripts or "
        "external resources: one file, readable offline.",
    )  # fmt: skip
    rp.set_defaults(handler=run_report)
    rp.add_argument("run", metavar="RUN", help="run folder (required)")
    rp.add_argument("--out", default=None, help="HTML file (default: RUN/report.html)")
    rp.add_argument("--data", default=None, help="images for the figures that need some "
                    "(default: the run's data.path when it is still there)")  # fmt: skip
    rp.add_argument("--data-root", default=None, help="where named sets live (default: none)")
    rp.add_argument("--split", default="test", help="split of a named set (default: test)")
    rp.add_argument("--algo", default="tsne", help="embedding map: pca, tsne, umap (default: tsne)")
    rp.add_argument("--limit", type=int, default=2000,
                    help="images for the embedding map, retrieval bank and probe (default: 2000)")  # fmt: skip
    rp.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")


def run_viz(a: argparse.Namespace) -> int:
    import inspect

    from selfsup import viz
    from selfsup.config import ConfigError

    takes = inspect.signature(viz.KINDS[a.kind]).parameters
    options: dict[str, Any] = {}
    for flag, key, _, _ in VIZ_FLAGS:
        value = getattr(a, key)
        if value is None:
            continue
        if key not in takes:
            raise ConfigError(f"viz {a.kind} does not use {flag}.")
        options[key] = int(value) if key == "class_index" and value.isdigit() else value
    path = viz.make(a.kind, a.checkpoint, a.out, **options)
    print(f"written: {path}")
    return 0


def run_report(a: argparse.Namespace) -> int:
    from selfsup.viz import write_report

    path = write_report(a.run, a.out, a.data, data_root=a.data_root, split=a.split,
                        algo=a.algo, limit=a.limit, device=a.device,
                        log=lambda msg: print(msg, file=sys.stderr))  # fmt: skip
    print(f"written: {path}")
    return 0
