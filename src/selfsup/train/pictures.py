"""Pictures a method draws of itself during training (e.g. MAE reconstructions): the same
few images at every epoch, saved under ``<run>/figures/``."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.config import Config
from selfsup.data import EvalDataset, ImageSource
from selfsup.methods.base import Method
from selfsup.runtime import autocast
from selfsup.transforms import eval_transform


def fixed_batch(
    source: ImageSource, image_size: int, cfg: Config, channels: int, n: int = 8
) -> torch.Tensor:
    """The same few evaluation-transformed images at every epoch (for pictures)."""
    ds = EvalDataset(source, eval_transform(image_size, cfg.data.mean, cfg.data.std), image_size,
                     channels, "skip")  # fmt: skip
    n = min(n, len(source))
    step = max(1, len(source) // n)
    return torch.stack([ds[i * step][0] for i in range(n)])


def save_grids(grids: dict[str, torch.Tensor], folder: Path, step: int, mean: list[float],
               std: list[float], per_row: int) -> None:  # fmt: skip
    from torchvision.utils import save_image

    folder.mkdir(parents=True, exist_ok=True)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    for name, imgs in grids.items():
        pix = (imgs.detach().float().cpu() * s + m).clamp(0, 1)
        save_image(pix, folder / f"{name}_step{step}.png", nrow=per_row, padding=1)


class Pictures:
    """Draws ``method.visualize`` on a fixed batch into ``folder`` (nothing when the method
    draws nothing)."""

    def __init__(self, method: Method, source: ImageSource, cfg: Config, folder: Path | None,
                 device: torch.device, precision: str) -> None:  # fmt: skip
        assert cfg.data.image_size is not None
        wanted = type(method).visualize is not Method.visualize and folder is not None
        self.batch = (
            fixed_batch(source, cfg.data.image_size, cfg, cfg.backbone.in_chans) if wanted else None
        )
        self.method, self.cfg, self.folder = method, cfg, folder
        self.device, self.precision = device, precision

    def save(self, step: int) -> None:
        if self.batch is None or self.folder is None:
            return
        method = self.method
        was = method.training
        method.eval()
        try:
            x = self.batch.to(self.device)
            if self.cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                grids = method.visualize(x)
        finally:
            method.train(was)
        d = self.cfg.data
        save_grids(grids, self.folder / "figures", step, d.mean, d.std, len(x))
