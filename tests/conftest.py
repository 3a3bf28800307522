from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def _shared() -> Path:
    """``../shared/datasets`` beside the repository (searched upwards from the tests), or
    ``$SELFSUP_DATASETS`` for a checkout elsewhere."""
    if os.environ.get("SELFSUP_DATASETS"):
        return Path(os.environ["SELFSUP_DATASETS"])
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "shared" / "datasets"
        if cand.is_dir():
            return cand
    return here.parents[2] / "shared" / "datasets"


SHARED = _shared()
CIFAR10 = Path(os.environ.get("SELFSUP_CIFAR10", SHARED / "cifar10"))


@pytest.fixture(scope="session")
def cifar10() -> Path:
    """The shared CIFAR-10 (ImageFolder layout: train/<class>/*.jpg, test/<class>/*.jpg)."""
    if not (CIFAR10 / "train").is_dir():
        pytest.fail(
            f"CIFAR-10 not found at {CIFAR10}; tests read ../shared/datasets/cifar10 "
            "(or set SELFSUP_CIFAR10)."
        )
    return CIFAR10


def make_images(
    root: Path, classes: int = 2, per_class: int = 8, size: int = 20, depth: int = 1, seed: int = 0
) -> Path:
    """A labelled folder of small random PNGs: root/<class>/[sub/]img.png."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        for _ in range(depth - 1):
            d = d / "nested"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            arr[..., c % 3] = 200  # a class-dependent colour
            Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


def make_videos(root: Path, classes: int = 2, per_class: int = 4, frames: int = 12,
                size: int = 32, seed: int = 0) -> Path:  # fmt: skip
    """A labelled folder of small MP4 clips (MPEG-4 part 2, via PyAV): root/<class>/vid.mp4;
    class c is a square moving right (c even) or down (c odd) on noise."""
    import av

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            with av.open(str(d / f"{i:03d}.mp4"), "w") as out:
                stream = out.add_stream("mpeg4", rate=8)
                stream.width = stream.height = size
                stream.pix_fmt = "yuv420p"
                for t in range(frames):
                    arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                    k = (i + t * 2) % (size - 8)
                    y, x = (8, k) if c % 2 == 0 else (k, 8)
                    arr[y : y + 8, x : x + 8] = 230
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
                out.mux(stream.encode())
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_images(tmp_path / "images")


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
