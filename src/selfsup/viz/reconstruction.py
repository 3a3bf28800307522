"""MAE reconstructions (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR
2022, Fig. 2-3): the masked input, the reconstruction and the original, as drawn by the
method's own :meth:`~selfsup.methods.mae.MAE.visualize`."""

from __future__ import annotations

from pathlib import Path

from selfsup.config import ConfigError
from selfsup.data import ImageSource
from selfsup.methods.mae import MAE
from selfsup.viz.common import (
    Run,
    data_name,
    image_grid,
    load_images,
    open_images,
    open_run,
    row_label,
    sample,
    save,
    show,
    to_display,
)

ROWS = ("masked", "reconstruction", "original")


def reconstruction(
    run: str | Path | Run,
    out: str | Path,
    data: str | ImageSource | None = None,
    *,
    num_images: int = 8,
    split: str = "test",
    data_root: str | None = None,
    seed: int = 0,
) -> Path:
    """Three rows over ``num_images`` images: masked input (hidden patches grey), the
    reconstruction (visible patches from the input, hidden ones predicted), the original.
    The mask is the method's fixed picture mask, the same at every epoch."""
    r = open_run(run)
    if not isinstance(r.method, MAE):
        raise ConfigError(
            f"reconstruction pictures need a masked autoencoder (mae) run, but {r.name} is a "
            f"{r.cfg.method.name} run, which reconstructs nothing. Try `selfsup viz retrieval` "
            "or `selfsup viz embedding-map`."
        )
    source = open_images(r, data, "reconstruction", split, data_root)
    x, _, _ = load_images(r, source, sample(source, num_images, seed))
    grid = r.method.visualize(x)["reconstruction"]  # (3B, C, H, W): masked, recon, original
    disp = to_display(grid, r.mean, r.std)
    img = disp.reshape(3, len(x), *disp.shape[1:])
    fig, axes = image_grid(3, len(x), (
        f"{r.name} ({r.describe}): reconstructions of {r.method.cfg.mask_ratio:.0%} masked "
        f"{data_name(source)} images"
    ), row_labels=True)  # fmt: skip
    for row in range(3):
        row_label(axes[row, 0], ROWS[row])
        for i in range(len(x)):
            show(axes[row, i], img[row, i])
    return save(fig, out)
