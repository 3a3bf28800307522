"""Figures of a trained run, written as PNG files, and a one-page HTML report.

>>> from selfsup import viz
>>> viz.embedding_map("runs/simclr", "map.png", data="cifar10", algo="tsne")
>>> viz.retrieval("runs/simclr", "nn.png", data="data/test")
>>> viz.make("gradcam", "runs/simclr", "cam.png", data="data/test")
>>> viz.write_report("runs/simclr", data="data/test")    # runs/simclr/report.html

Kinds (``selfsup viz KIND``): embedding-map, retrieval, attention (ViT), gradcam (CNN),
video-gradcam (CNN, videos), patch-pca (ViT), reconstruction (MAE), augmentations, curves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfsup.config import ConfigError
from selfsup.registry import closest
from selfsup.viz.attention import attention
from selfsup.viz.augmentations import augmentations
from selfsup.viz.common import Run, open_run
from selfsup.viz.curves import curves
from selfsup.viz.embedding import embedding_map, project_2d
from selfsup.viz.gradcam import grad_cam, gradcam
from selfsup.viz.patch_pca import patch_pca, patch_pca_rgb
from selfsup.viz.reconstruction import reconstruction
from selfsup.viz.report import write_report
from selfsup.viz.retrieval import retrieval
from selfsup.viz.video_gradcam import video_gradcam

KINDS: dict[str, Callable[..., Path]] = {
    "embedding-map": embedding_map,
    "retrieval": retrieval,
    "attention": attention,
    "gradcam": gradcam,
    "patch-pca": patch_pca,
    "reconstruction": reconstruction,
    "augmentations": augmentations,
    "curves": curves,
    "video-gradcam": video_gradcam,
}


def make(kind: str, run: str | Path | Run, out: str | Path, **options: Any) -> Path:
    """Draw figure ``kind`` of ``run`` into ``out`` (a .png); ``options`` are the keyword
    options of that kind's function (``data``, ``algo``, ``k``...)."""
    if kind not in KINDS:
        hint = closest(kind, list(KINDS))
        did = f" Did you mean {', '.join(hint)}?" if hint else ""
        raise ConfigError(f"unknown figure {kind!r}.{did} Kinds: {', '.join(KINDS)}.")
    if kind == "curves":
        folder = run.folder if isinstance(run, Run) else run
        return curves(folder, out, **options)
    return KINDS[kind](run, out, **options)


__all__ = [
    "KINDS",
    "Run",
    "attention",
    "augmentations",
    "curves",
    "embedding_map",
    "grad_cam",
    "gradcam",
    "make",
    "open_run",
    "patch_pca",
    "patch_pca_rgb",
    "project_2d",
    "reconstruction",
    "retrieval",
    "video_gradcam",
    "write_report",
]
