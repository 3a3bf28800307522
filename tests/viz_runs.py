"""Real images and tiny runs for the figure and report tests (not a test module).

The images are a small class-balanced subset of the shared CIFAR-10, linked (not copied)
into a temporary ImageFolder; the runs train for a few steps on them, so every figure is
drawn from a real checkpoint of each backbone family.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import selfsup

TINY_VIT = "backbone.kwargs={patch_size: 4, depth: 2, num_heads: 3}"
IMAGE_SIZE = 32
# Runs train in fp32: bf16 autocast made these tiny CPU steps 2.5x slower.


_MADE: dict[str, Path] = {}


def shared(name: str, factory: pytest.TempPathFactory, make: Callable[[Path], Path]) -> Path:
    """``make(folder)`` once per test session, for every module that asks for ``name``: the
    figure and report tests draw from the same tiny runs (and feature caches)."""
    if name not in _MADE:
        _MADE[name] = make(factory.mktemp(name) / name)
    return _MADE[name]


def cifar_subset(cifar10: Path, dest: Path, classes: int = 5, per_class: int = 12,
                 split: str = "test", offset: int = 0) -> Path:  # fmt: skip
    """``dest/<class>/<file>`` with ``per_class`` images of the first ``classes`` classes,
    as symbolic links (copies where links are not allowed)."""
    for c in sorted(p for p in (cifar10 / split).iterdir() if p.is_dir())[:classes]:
        (dest / c.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(c.iterdir())[offset : offset + per_class]:
            try:
                os.symlink(f, dest / c.name / f.name)
            except OSError:
                shutil.copy(f, dest / c.name / f.name)
    return dest


def planted_squares(cifar10: Path, dest: Path, photos: int = 32, side: int = 12,
                    seed: int = 0) -> dict[str, tuple[int, int]]:  # fmt: skip
    """Two classes made of the same ``photos`` CIFAR-10 test photos: ``plain/`` holds them as
    they are, ``square/`` with a white ``side`` px square planted at a random place, so the
    square is the only difference between the classes. Returns {file name: (top, left)}."""
    rng = np.random.default_rng(seed)
    files = sorted((cifar10 / "test").rglob("*.jpg"))
    where: dict[str, tuple[int, int]] = {}
    for cls in ("plain", "square"):
        (dest / cls).mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(rng.choice(len(files), photos, replace=False)):
        img = np.array(Image.open(files[i]).convert("RGB"))
        name = f"{n:03d}.png"
        Image.fromarray(img).save(dest / "plain" / name)
        top, left = (int(v) for v in rng.integers(0, img.shape[0] - side + 1, 2))
        img[top : top + side, left : left + side] = 255
        Image.fromarray(img).save(dest / "square" / name)
        where[name] = (top, left)
    return where


def tiny_simclr(data: Path, out: Path) -> Path:
    """SimCLR with a ResNet-18 (small stem) for a few steps."""
    selfsup.pretrain("simclr", data=str(data), out=out, steps=2, batch_size=8,
                     image_size=IMAGE_SIZE, workers=0, progress=False, precision="fp32",
                     overrides=["monitor.knn=false", "train.log_every=1",
                                "method.proj_hidden_dim=64"])  # fmt: skip
    return out


def tiny_mae(data: Path, out: Path) -> Path:
    """MAE with a 2-block, 3-head ViT on 4 px patches for a few steps."""
    selfsup.pretrain("mae", data=str(data), out=out, steps=2, batch_size=8,
                     image_size=IMAGE_SIZE, workers=0, progress=False, precision="fp32",
                     backbone="timm:vit_tiny_patch16_224",
                     overrides=["monitor.knn=false", "train.log_every=1", TINY_VIT])  # fmt: skip
    return out
