"""Model-free fingerprints of one decoded image: perceptual hashes of the whole image and of
nine 90% crops (the sign of the 63 lowest DCT frequencies of a 32x32 grey thumbnail, as in
pHash; Zauner, 2010) and pixel statistics that expose noise, blank and grey images."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

# Perceptual hash: 8x8 lowest DCT frequencies of a 32x32 grey thumbnail, DC left out.
THUMB = 32
HASH_SIDE = 8
HASH_BITS = HASH_SIDE * HASH_SIDE - 1
# Alignments tried against the other image: the whole image and nine 90% crops (offsets 0,
# 1/2, 1 of the slack), so a copy cropped by up to ~10% matches one of them closely.
CROP_SCALE = 0.9
CROPS: tuple[tuple[float, float] | None, ...] = (
    None, *((fx, fy) for fy in (0.0, 0.5, 1.0) for fx in (0.0, 0.5, 1.0))
)  # fmt: skip


@functools.lru_cache(maxsize=2)
def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``(n, n)``: ``D @ x @ D.T`` is the 2-D DCT of ``x``."""
    k = torch.arange(n, dtype=torch.float32)[:, None]
    x = torch.arange(n, dtype=torch.float32)[None]
    m = torch.cos(math.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


@functools.lru_cache(maxsize=1)
def _high_frequencies() -> torch.Tensor:
    """(32, 32) mask of the DCT frequencies at radius >= 16: noise, not image content."""
    fy, fx = torch.meshgrid(torch.arange(THUMB), torch.arange(THUMB), indexing="ij")
    return (fx.float().pow(2) + fy.float().pow(2)).sqrt() >= THUMB / 2


def _grey(raw: torch.Tensor) -> torch.Tensor:
    """(C, H, W) uint8 or float in [0, 1] -> (H, W) float luminance in [0, 1]."""
    t = raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()
    if t.shape[0] >= 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (t[:3] * w).sum(0)
    return t.mean(0)


def _thumb(grey: torch.Tensor, size: int) -> torch.Tensor:
    """(..., H, W) -> (..., size, size), antialiased."""
    lead = grey.shape[:-2]
    out = F.interpolate(grey.reshape(-1, 1, *grey.shape[-2:]), size=(size, size),
                        mode="bilinear", antialias=True, align_corners=False)  # fmt: skip
    return out.reshape(*lead, size, size)


def _hash_bits(thumbs: torch.Tensor) -> np.ndarray:
    """(V, 32, 32) thumbnails -> (V, 8) packed bits: each of the 63 lowest DCT frequencies
    (DC left out) above its thumbnail's median."""
    d = _dct_matrix(THUMB)[:HASH_SIDE]
    low = (d @ thumbs @ d.T).flatten(1)[:, 1:]
    bits: np.ndarray = np.packbits((low > low.median(dim=1, keepdim=True).values).numpy(), axis=1)
    return bits


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run tiny per-image tensor work on one thread, as DataLoader workers do: in the main
    process (workers=0) a busy machine makes each op wait for a second thread."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fingerprint(raw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model-free description of one decoded image ``(C, H, W)``.

    ``phash`` (len(CROPS), 8) uint8: packed perceptual hashes of the whole image and its 90%
    crops; ``hf``: share of the grey image's DCT energy at high frequencies (radius >= 16 of
    32; white noise ~0.75, natural photos ~0.05); ``entropy``: bits of the 64-bin grey-level
    histogram (blank: 0); ``contrast``: grey-level standard deviation; ``colour``: mean of
    each of the first three channels; ``chroma``: mean over pixels of the spread (max - min)
    of the first three channels (0 for grey images).
    """
    with _one_thread():
        return _fingerprint(raw)


def _fingerprint(raw: torch.Tensor) -> dict[str, torch.Tensor]:
    t = raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()
    grey = _grey(raw)
    h, w = grey.shape
    scale = min(1.0, 4 * THUMB / min(h, w))  # crops are cut from a 128 px copy: cheap
    if scale < 1.0:
        grey = F.interpolate(grey[None, None], scale_factor=scale, mode="bilinear",
                             antialias=True, align_corners=False)[0, 0]  # fmt: skip
    gh, gw = grey.shape
    ch, cw = max(1, round(gh * CROP_SCALE)), max(1, round(gw * CROP_SCALE))
    crops = []
    for crop in CROPS[1:]:
        assert crop is not None
        y0, x0 = round((gh - ch) * crop[1]), round((gw - cw) * crop[0])
        crops.append(grey[y0 : y0 + ch, x0 : x0 + cw])
    thumbs = torch.cat([_thumb(grey, THUMB)[None], _thumb(torch.stack(crops), THUMB)])
    hashes = _hash_bits(thumbs)
    small = thumbs[0]
    d = _dct_matrix(THUMB)
    energy = (d @ small @ d.T).pow(2)
    energy[0, 0] = 0
    hf = energy[_high_frequencies()].sum() / energy.sum().clamp_min(1e-12)
    hist = torch.histc(small, bins=64, min=0.0, max=1.0)
    p = hist[hist > 0] / hist.sum()
    colour = t.reshape(t.shape[0], -1).mean(1)
    colour = torch.cat([colour, colour.new_zeros(3)])[:3] if colour.numel() < 3 else colour[:3]
    rgb = t[:3]
    chroma = (rgb.amax(0) - rgb.amin(0)).mean() if t.shape[0] >= 3 else t.new_zeros(())
    return {
        "phash": torch.from_numpy(hashes),
        "hf": hf.reshape(()),
        "entropy": -(p * p.log2()).sum(),
        "contrast": small.std(),
        "colour": colour,
        "chroma": chroma.reshape(()),
        "pixels": torch.tensor(h * w, dtype=torch.int64),
    }


def empty_fingerprint() -> dict[str, torch.Tensor]:
    """The fingerprint of an unreadable image (with the ``sha1`` and ``bytes`` of a read file):
    never a duplicate of anything, never colourless."""
    return {
        "phash": torch.zeros(len(CROPS), 8, dtype=torch.uint8), "hf": torch.tensor(0.0),
        "entropy": torch.tensor(0.0), "contrast": torch.tensor(0.0), "colour": torch.zeros(3),
        "chroma": torch.tensor(1.0),
        "pixels": torch.tensor(0), "sha1": torch.zeros(20, dtype=torch.uint8),
        "bytes": torch.tensor(0),
    }  # fmt: skip
