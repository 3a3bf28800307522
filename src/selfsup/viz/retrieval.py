"""Retrieval grids: a few query images and their nearest neighbours in a bank of images by
cosine similarity of the learned features, the picture behind kNN evaluation (Wu et al.,
"Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.config import ConfigError
from selfsup.data import ImageSource, SubsetSource
from selfsup.viz.common import (
    Run,
    class_name,
    data_name,
    embed,
    image_grid,
    load_images,
    open_images,
    open_run,
    sample,
    save,
    show,
    to_display,
)

SAME, OTHER, QUERY = "#2ca02c", "#d62728", "#1f77b4"


def nearest(
    queries: torch.Tensor, bank: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` cosine similarities and bank indices (Q, k) of each query (Q, D) among the
    bank (N, D); ``exclude`` (Q,) gives one bank index per query that may not be returned
    (the query itself when queries come from the bank)."""
    sims = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    if exclude is not None:
        sims[torch.arange(len(sims)), exclude] = float("-inf")
    top = sims.topk(k, dim=1)
    return top.values, top.indices


def retrieval(
    run: str | Path | Run,
    out: str | Path,
    data: str | ImageSource | None = None,
    *,
    queries: str | ImageSource | None = None,
    num_images: int = 6,
    k: int = 8,
    limit: int | None = 1000,
    split: str = "test",
    data_root: str | None = None,
    seed: int = 0,
) -> Path:
    """Nearest-neighbour grid: ``num_images`` query images (from ``queries``, else drawn
    from the bank) and their top-``k`` neighbours among (at most ``limit``) images of
    ``data``, with the cosine similarity under each and a green / red border when their
    labels agree / disagree with the query's."""
    r = open_run(run)
    if k < 1 or num_images < 1:
        raise ConfigError(f"retrieval needs k >= 1 and at least one query (got k={k}, "
                          f"{num_images} queries).")  # fmt: skip
    bank_src = open_images(r, data, "retrieval", split, data_root)
    bank_x, bank_y, bank_idx = load_images(
        r, bank_src, sample(bank_src, limit or len(bank_src), seed)
    )
    bank_f = embed(r, bank_x)
    exclude: torch.Tensor | None = None
    if queries is None:
        kept = SubsetSource(bank_src, bank_idx)
        pos = sample(kept, num_images, seed + 1)
        q_x, q_y = bank_x[pos], [bank_y[i] for i in pos]
        q_f = bank_f[pos]
        exclude = torch.tensor(pos)
        q_src: ImageSource = bank_src
    else:
        q_src = open_images(r, queries, "retrieval", split, data_root)
        q_x, q_y, _ = load_images(r, q_src, sample(q_src, num_images, seed + 1))
        q_f = embed(r, q_x)
    k = min(k, len(bank_f) - (1 if exclude is not None else 0))
    if k < 1:
        raise ConfigError(f"the bank of {bank_src.name} holds too few images for retrieval.")
    sims, idx = nearest(q_f, bank_f, k, exclude)
    fig, axes = image_grid(len(q_x), 1 + k, (
        f"{r.name} ({r.describe}): top-{k} neighbours among {len(bank_f)} {data_name(bank_src)} images\n"
        f"(cosine similarity under each; green: same class as the query, red: another class)"
    ), captions=True)  # fmt: skip
    q_img = to_display(q_x, r.mean, r.std)
    b_img = to_display(bank_x[idx.flatten()], r.mean, r.std).reshape(len(q_x), k, *q_img.shape[1:])
    for i in range(len(q_x)):
        show(axes[i, 0], q_img[i], border=QUERY, caption=f"query: {class_name(q_src, q_y[i])}")
        for j in range(k):
            y = bank_y[int(idx[i, j])]
            known = y >= 0 and q_y[i] >= 0
            # Compared by class name: queries may come from another folder of the same classes.
            same = class_name(bank_src, y) == class_name(q_src, q_y[i])
            colour = (SAME if same else OTHER) if known else None
            show(axes[i, 1 + j], b_img[i, j], border=colour, caption=f"{float(sims[i, j]):.2f}")
    return save(fig, out)
