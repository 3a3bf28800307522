"""Embedding maps: the features of many images projected to 2-D (PCA, t-SNE or UMAP) and
coloured by class, to see at a glance whether the representation groups what belongs
together (van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008; McInnes et
al., "UMAP", 2018)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.config import ConfigError
from selfsup.data import open_source
from selfsup.viz.common import Run, data_name, data_spec, figure, open_run, save

ALGOS = ("pca", "tsne", "umap")
AXIS = {"pca": "PC", "tsne": "t-SNE", "umap": "UMAP"}
# t-SNE and UMAP first reduce the features to this many principal components: the usual
# practice (van der Maaten 2014), much faster and it removes noise dimensions.
PRE_PCA = 50
WIDTH, HEIGHT = 8.0, 6.0


def pca(x: torch.Tensor, k: int = 2) -> torch.Tensor:
    """The first ``k`` principal components of ``x`` (N, D) -> (N, k), with signs fixed so
    that each component's largest loading is positive (reproducible pictures)."""
    x = x.double() - x.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[:k]
    sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    v = v * torch.where(sign == 0, torch.ones_like(sign), sign)
    out: torch.Tensor = (x @ v.T).float()
    return out


def _one_thread() -> contextlib.AbstractContextManager[object]:
    """Run scikit-learn / UMAP on one OpenMP thread. They share PyTorch's OpenMP runtime and
    its thread count, and their per-iteration barriers then dominate at the few thousand
    points of a map: t-SNE of 100 points took 20x longer with PyTorch's 2 threads than
    with 1 on a busy 2-core machine, 2,000 points 3.6x."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    limits: contextlib.AbstractContextManager[object] = threadpool_limits(1, user_api="openmp")
    return limits


def _umap() -> Any:
    try:
        import umap
    except ImportError:
        raise ConfigError(
            "--algo umap needs the umap-learn package, which is not installed: "
            "pip install umap-learn, or pip install 'selfsup[umap]' (or use --algo tsne or pca)."
        ) from None
    return umap


def project_2d(
    features: torch.Tensor, algo: str = "pca", seed: int = 0, normalize: bool = True
) -> torch.Tensor:
    """Features (N, D) -> 2-D points (N, 2). ``normalize`` first puts them on the unit
    sphere, the cosine geometry that kNN and retrieval use."""
    if algo not in ALGOS:
        raise ConfigError(f"--algo {algo!r} is not one of {', '.join(ALGOS)}.")
    n = features.shape[0]
    if n < 3:
        raise ConfigError(f"an embedding map needs at least 3 images, got {n}.")
    x = features.float()
    if normalize:
        x = F.normalize(x, dim=1)
    if algo == "pca":
        return pca(x, 2)
    if x.shape[1] > PRE_PCA:
        x = pca(x, min(PRE_PCA, n))
    arr = x.numpy().astype(np.float32)
    if algo == "tsne":
        from sklearn.manifold import TSNE

        # Perplexity must stay below the number of points; 30 is the usual value.
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        with _one_thread():
            return torch.from_numpy(np.asarray(tsne.fit_transform(arr), dtype=np.float32))
    umap = _umap()
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed)
    with _one_thread():
        return torch.from_numpy(np.asarray(reducer.fit_transform(arr), dtype=np.float32))


def plot_embedding(
    points: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    classes: Sequence[str],
    out: str | Path,
    title: str,
    axis: str = "PC",
) -> Path:
    """Scatter 2-D ``points`` coloured by label (-1: unknown, grey), with a legend of
    ``classes``; writes a PNG of WIDTH x HEIGHT inches."""
    pts = points.detach().float().cpu().numpy()
    y = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64)
    fig = figure(WIDTH, HEIGHT, title)
    ax = fig.add_axes((0.08, 0.09, 0.62, 0.80))
    present = sorted(int(c) for c in np.unique(y) if c >= 0)
    size = float(np.clip(3000 / max(len(pts), 1), 3, 40))
    if (y < 0).any():
        m = y < 0
        ax.scatter(pts[m, 0], pts[m, 1], s=size, c="0.6", alpha=0.6, linewidths=0,
                   label="unlabelled")  # fmt: skip
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(present) <= 10 else "tab20"]
    for j, c in enumerate(present):
        m = y == c
        name = classes[c] if c < len(classes) else str(c)
        ax.scatter(pts[m, 0], pts[m, 1], s=size, color=cmap(j % cmap.N), alpha=0.75,
                   linewidths=0, label=name)  # fmt: skip
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    if len(present) <= 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, markerscale=2.0,
                  frameon=False, title="class" if present else None)  # fmt: skip
    return save(fig, out)


def embedding_map(
    run: str | Path | Run,
    out: str | Path,
    data: str | None = None,
    *,
    algo: str = "tsne",
    limit: int | None = 2000,
    split: str = "test",
    data_root: str | None = None,
    seed: int = 0,
    device: str = "auto",
) -> Path:
    """2-D map of the embeddings of (at most ``limit``, class-balanced) images of ``data``
    (default: the run's own data), coloured by class when the images are labelled.
    Features are cached in ``<run>/eval_cache/`` when ``data`` is a path or named set."""
    from selfsup import api

    r = open_run(run)
    if algo not in ALGOS:
        raise ConfigError(f"--algo {algo!r} is not one of {', '.join(ALGOS)}.")
    if algo == "umap":
        _umap()  # before computing any feature
    spec, root = data_spec(r, data, "embedding-map", data_root)
    source = open_source(spec, split=split, root=root)
    feats, labels = api.extract(r.checkpoint, spec, split, data_root=root, limit=limit,
                                device=device, progress=None)  # fmt: skip
    points = project_2d(feats, algo, seed=seed)
    what = "labelled " if (labels >= 0).any() else ""
    title = f"{r.name} ({r.describe}): {AXIS[algo]} map of {len(feats)} {what}{data_name(source)} embeddings"
    return plot_embedding(points, labels, source.classes, out, title, AXIS[algo])
