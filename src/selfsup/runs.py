"""Open a run folder: its config, its method (trained or untrained) and its checkpoint.

The one place that turns a run folder or checkpoint file back into a model; the API,
embeddings, export, visualisations and the label-efficiency experiments all use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfsup import config as C
from selfsup.backbones import create_backbone
from selfsup.config import Config
from selfsup.methods.base import Method
from selfsup.registry import get_method_class
from selfsup.train import checkpoint as ckpt_io


def build_method(cfg: Config, image_size: int | None = None) -> Method:
    """The method of ``cfg`` with freshly initialised weights (seeded by ``train.seed``, so
    the same config always gives the same initial weights: the random-init floor)."""
    size = image_size or cfg.data.image_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        backbone = create_backbone(cfg.backbone, size)
        return get_method_class(cfg.method.name)(cfg.method, backbone)


@dataclass
class LoadedRun:
    """A run opened from disk. ``method`` is on the CPU in eval mode; ``checkpoint`` is the
    raw checkpoint dict; ``file`` the checkpoint read and ``folder`` the run folder."""

    config: Config
    method: Method
    checkpoint: dict[str, Any]
    file: Path
    folder: Path


def run_folder(file: Path) -> Path:
    """The run folder of a checkpoint file (``<run>/checkpoints/last.pt`` -> ``<run>``)."""
    return file.parent.parent if file.parent.name == ckpt_io.CHECKPOINT_DIR else file.parent


def load_run(
    path: str | Path,
    random_init: bool = False,
    adjust: Callable[[Config], Config] | None = None,
) -> LoadedRun:
    """Open a run folder or checkpoint file (raises :class:`CheckpointError` with a message
    for the user). ``random_init=True`` keeps the run's architecture with its initial,
    untrained weights: the floor every method must beat. ``adjust`` maps the run's config to
    the one the method is rebuilt from (e.g. without the file training started from)."""
    file = ckpt_io.resolve(path)
    ckpt = ckpt_io.load(file)
    cfg = C.from_dict(ckpt["config"])
    if adjust is not None:
        cfg = adjust(cfg)
    method = build_method(cfg)
    if not random_init:
        try:
            method.load_state_dict(ckpt["method"])
        except RuntimeError as err:
            raise ckpt_io.CheckpointError(
                f"the weights in {str(file)!r} do not fit the {cfg.method.name} model its own "
                f"config describes ({str(err).splitlines()[0]}); was it written by another "
                "selfsup version? Use that version."
            ) from None
    return LoadedRun(cfg, method.eval(), ckpt, file, run_folder(file))
