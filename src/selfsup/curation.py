"""``selfsup curate``: find exact duplicates, near duplicates and outliers in an image folder.

One pass over the data computes, per image, the SSL embedding (the run's evaluation
transform) and a cheap fingerprint of the decoded pixels: a content hash, a perceptual hash
(the sign of the 63 lowest DCT frequencies of a 32x32 grey thumbnail, as in pHash; Zauner,
2010) of the whole image and of nine 90% crops, and two pixel statistics. Then:

* **exact duplicates**: identical content hash (file bytes; decoded pixels for named sets).
* **near duplicates** (resized, re-encoded, slightly cropped copies): a pair must pass both
  checks: one image is among the other's ``dup_neighbors`` nearest neighbours in embedding
  space (cosine), *and* their perceptual hashes differ in at most ``hash_bits`` of 63 bits,
  taking the best alignment of one image's 90% crops against the other whole image. The
  rank test is independent of how well the model is trained (a random-init network still
  ranks a resized copy first); the hash rejects neighbours that merely look alike. Blank
  images (no contrast) have no meaningful hash and pair only with blanks of the same colour.
  Groups are the connected pairs (union-find); each keeps its largest image (then the largest
  file, then the first path).
* **outliers**: the mean cosine distance to the ``outlier_k`` nearest neighbours (leaving out
  the image's own duplicates) as a robust z-score (median / MAD) over the data set: images
  far from everything else (out-of-domain). A second, model-free z-score catches images
  that look corrupted whatever the model says: pure noise (share of high-frequency DCT
  energy) and blank or nearly blank images (entropy of the grey-level histogram). An image
  is flagged when either z-score passes its threshold; they rank by the larger of
  ``z_embedding / outlier_z`` and ``z_pixels / degenerate_z``.
* **a colourless group among colour images**: in a data set of mostly colour images, a
  grey image whose nearest neighbours are grey far more often than chance (binomial tail
  probability at most ``COLOUR_GROUP_P``; ordinary grey photos have colour neighbours)
  belongs to a group from another source (scans, X-rays, a stray grayscale data set). Such
  a group hides from the kNN score (its members are each other's neighbours) and from the
  pixel check (they look like photos), but not from this one. Its severity is
  ``log10(1 / p) / log10(1 / COLOUR_GROUP_P)``.

Outputs in ``out``: ``curation.json`` (settings, groups, ranked outliers), ``curation.csv``
(one row per image, flagged first), ``duplicates.png`` and ``outliers.png`` (image grids).
``move_to`` moves flagged files into a quarantine folder, keeping their relative paths, and
records every move in ``curation_manifest.json`` there; :func:`restore_quarantine` undoes it.
Nothing is ever deleted.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from selfsup.config import ConfigError
from selfsup.data import ImageSource, subset
from selfsup.data.decode import to_tensor
from selfsup.data.sources import DataError, FolderSource, SubsetSource
from selfsup.embeddings import FeatureModel, check_device_precision, feature_model, open_data
from selfsup.eval.features import stream_features
from selfsup.methods.base import Method
from selfsup.transforms import eval_transform

REPORT_VERSION = 1
MANIFEST = "curation_manifest.json"

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
# Grey-level standard deviation (0-1) below which an image counts as blank.
LOW_CONTRAST = 0.01
# Colour difference (0-1, any channel) below which two blank images are the same.
BLANK_COLOUR_TOL = 0.02
# Mean over pixels of (max - min) of the three channels (0-1) at or below which an image is
# colourless (grey stored as RGB); a colour data set has at most MINORITY_SHARE of them.
COLOURLESS_CHROMA = 1.0 / 255
MINORITY_SHARE = 0.2
# Binomial tail probability of a colourless image's colourless neighbours at which it is
# flagged as one of a colourless group (severity 1).
COLOUR_GROUP_P = 1e-3
# Extra neighbours fetched so an image's own duplicates can be left out of its outlier score.
EXTRA_NEIGHBOURS = 8
# Bytes -> number of set bits.
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# ----------------------------------------------------------------------------- fingerprints


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


def _file_of(source: ImageSource, i: int) -> tuple[Path | None, str]:
    """(file path or None, path shown in reports: relative to the folder when there is one)."""
    if isinstance(source, FolderSource):
        return source.path(i), source.files[i]
    if isinstance(source, SubsetSource):
        return _file_of(source.base, source.indices[i])
    return None, source.describe(i)


def _root_of(source: ImageSource) -> Path | None:
    if isinstance(source, FolderSource):
        return source.root
    if isinstance(source, SubsetSource):
        return _root_of(source.base)
    return None


class CurationDataset(Dataset[tuple[torch.Tensor, int, bool, dict[str, torch.Tensor]]]):
    """``(model input, label, ok, fingerprint)`` per image, decoding each file once."""

    def __init__(self, source: ImageSource, image_size: int, mean: Sequence[float],
                 std: Sequence[float], channels: int) -> None:  # fmt: skip
        self.source = source
        self.transform = eval_transform(image_size, mean, std)
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool, dict[str, torch.Tensor]]:
        labels = self.source.labels
        label = labels[i] if labels is not None else -1
        path, _ = _file_of(self.source, i)
        try:
            raw = to_tensor(self.source.load(i), self.channels, self.source.describe(i))
            x = self.transform(raw)
            fp = fingerprint(raw)
            data = path.read_bytes() if path is not None else raw.numpy().tobytes()
            fp["sha1"] = torch.frombuffer(bytearray(hashlib.sha1(data).digest()), dtype=torch.uint8)
            fp["bytes"] = torch.tensor(len(data), dtype=torch.int64)
            return x, label, True, fp
        except Exception:  # unreadable: listed in the report, never flagged or moved
            blank = torch.zeros(self.channels, self.image_size, self.image_size)
            return blank, label, False, _empty_fingerprint()


def _empty_fingerprint() -> dict[str, torch.Tensor]:
    return {
        "phash": torch.zeros(len(CROPS), 8, dtype=torch.uint8), "hf": torch.tensor(0.0),
        "entropy": torch.tensor(0.0), "contrast": torch.tensor(0.0), "colour": torch.zeros(3),
        "chroma": torch.tensor(1.0),
        "pixels": torch.tensor(0), "sha1": torch.zeros(20, dtype=torch.uint8),
        "bytes": torch.tensor(0),
    }  # fmt: skip


# ----------------------------------------------------------------------------- analysis


def cosine_knn(
    x: torch.Tensor, k: int, device: torch.device | str = "cpu", chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest neighbours of every row of ``x`` (N, D) by cosine similarity, the
    row itself left out: ``(similarities (N, k), indices (N, k))``, best first. Exact, in
    row chunks (all pairs: O(N^2 D); a GPU helps from ~100k images)."""
    n = x.shape[0]
    k = min(k, n - 1)
    xn = F.normalize(x.float(), dim=1).to(device)
    chunk = chunk or max(1, min(4096, 2**26 // max(n, 1)))
    sims, idx = [], []
    for s in range(0, n, chunk):
        block = xn[s : s + chunk] @ xn.T
        rows = torch.arange(block.shape[0], device=block.device)
        block[rows, rows + s] = -math.inf
        v, i = block.topk(k, dim=1)
        sims.append(v.cpu())
        idx.append(i.cpu())
    return torch.cat(sims), torch.cat(idx)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return float(
        min(1.0, sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)))
    )


def colour_group_p(colourless: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """For each image: the probability that at least as many of its ``neighbours`` (N, k)
    indices are colourless as are, were they drawn at random from the data set; 1 for colour
    images and for data sets that are not mostly colour (see the module docstring)."""
    n, k = neighbours.shape
    out = torch.ones(n, dtype=torch.float64)
    share = float(colourless.float().mean()) if n else 0.0
    if not 0.0 < share <= MINORITY_SHARE:
        return out
    counts = colourless[neighbours].sum(1)
    for i in torch.nonzero(colourless).flatten().tolist():
        out[i] = binomial_tail(int(counts[i]), k, share)
    return out


def robust_z(x: torch.Tensor) -> torch.Tensor:
    """(x - median) / (1.4826 MAD); falls back to the standard deviation when MAD is 0."""
    med = x.median()
    scale = 1.4826 * (x - med).abs().median()
    if scale <= 0:
        scale = x.std() if x.numel() > 1 else torch.tensor(0.0)
    return (x - med) / (scale if scale > 0 else 1.0)


def hash_distance(phash: np.ndarray, pairs: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """Differing bits of each pair ``(M, 2)`` at its best alignment: the smaller of (crops or
    whole of one image vs. the whole other image), both ways. ``phash`` (N, V, 8) uint8."""
    out = np.empty(len(pairs), dtype=np.int64)
    for s in range(0, len(pairs), chunk):
        i, j = pairs[s : s + chunk, 0], pairs[s : s + chunk, 1]
        a = POPCOUNT[phash[i] ^ phash[j][:, :1]].sum(-1, dtype=np.int64).min(1)
        b = POPCOUNT[phash[j] ^ phash[i][:, :1]].sum(-1, dtype=np.int64).min(1)
        out[s : s + chunk] = np.minimum(a, b)
    return out


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Member:
    """A non-kept member of a duplicate group: ``kind`` exact or near; ``similarity``
    (cosine of the embeddings) and ``hash_bits`` (perceptual distance, None for blank
    images) are measured against the kept image."""

    path: str
    kind: str
    similarity: float
    hash_bits: int | None


@dataclass
class DuplicateGroup:
    id: int
    keep: str
    members: list[Member]

    @property
    def kind(self) -> str:
        return "near" if any(m.kind == "near" for m in self.members) else "exact"


@dataclass
class Outlier:
    path: str
    rank: int
    severity: float
    z_embedding: float
    z_pixels: float
    knn_distance: float
    reason: str
    flagged: bool


@dataclass
class CurationReport:
    """Everything ``curate`` found; ``files`` are the outputs written, ``moved`` the files
    moved to quarantine (relative paths)."""

    data: str
    model: str
    images: int
    settings: dict[str, Any]
    groups: list[DuplicateGroup]
    outliers: list[Outlier]  # every readable image, ranked: most severe first
    unreadable: list[str]
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    moved: list[str] = field(default_factory=list)

    @property
    def flagged_duplicates(self) -> list[str]:
        return [m.path for g in self.groups for m in g.members]

    @property
    def flagged_outliers(self) -> list[str]:
        dups = set(self.flagged_duplicates)
        return [o.path for o in self.outliers if o.flagged and o.path not in dups]

    def summary(self) -> dict[str, Any]:
        exact = [m for g in self.groups for m in g.members if m.kind == "exact"]
        near = [m for g in self.groups for m in g.members if m.kind == "near"]
        return {
            "images": self.images,
            "unreadable": len(self.unreadable),
            "exact_duplicates": len(exact),
            "exact_groups": sum(1 for g in self.groups if g.kind == "exact"),
            "near_duplicates": len(near),
            "near_groups": sum(1 for g in self.groups if g.kind == "near"),
            "outliers": len(self.flagged_outliers),
            "moved": len(self.moved),
            "seconds": round(self.seconds, 2),
        }

    def as_dict(self, ranking: int = 100) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "data": self.data,
            "model": self.model,
            "settings": self.settings,
            "summary": self.summary(),
            "duplicate_groups": [
                {
                    "id": g.id,
                    "kind": g.kind,
                    "keep": g.keep,
                    "members": [m.__dict__ for m in g.members],
                }
                for g in self.groups
            ],
            "outliers": {
                "flagged": self.flagged_outliers,
                "ranking": [o.__dict__ for o in self.outliers[: max(ranking, 1)]],
            },
            "unreadable": self.unreadable,
            "files": self.files,
            "moved": self.moved,
        }


@dataclass
class _Scan:
    """Per readable image: where it is, its embedding and its fingerprint."""

    index: list[int]  # positions in the source
    paths: list[str]
    labels: list[int]
    features: torch.Tensor  # (N, D)
    fp: dict[str, torch.Tensor]  # stacked fingerprints


def _scan(source: ImageSource, fm: FeatureModel, device: torch.device, precision: str,
          batch_size: int, workers: int, progress: bool) -> _Scan:  # fmt: skip
    ds = CurationDataset(source, fm.image_size, fm.mean, fm.std, fm.channels)
    index: list[int] = []
    feats: list[torch.Tensor] = []
    labels: list[int] = []
    fps: dict[str, list[torch.Tensor]] = {}
    for b in stream_features(fm.net.to(device), ds, batch_size, device, precision,
                             num_workers=workers, progress=progress,
                             desc=f"curate {source.name}"):  # fmt: skip
        index += b.index.tolist()
        feats.append(b.features)
        labels += b.labels.tolist()
        for key, v in b.extra.items():
            fps.setdefault(key, []).append(v)
    if not index:
        raise DataError(
            f"none of the {len(source)} images of {source.name} could be read; check the "
            "folder with `selfsup data check`."
        )
    paths = [_file_of(source, i)[1] for i in index]
    return _Scan(index, paths, labels, torch.cat(feats),
                 {k: torch.cat(v) for k, v in fps.items()})  # fmt: skip


def _near_pairs(
    scan: _Scan, reps: np.ndarray, nn_idx: torch.Tensor, neighbors: int, hash_bits: int
) -> list[tuple[int, int, int | None]]:
    """Near-duplicate pairs among the representatives ``reps`` (indices into the scan):
    ``(a, b, differing bits or None for blank images)``, with a < b, scan indices."""
    cand = {
        (min(a, b), max(a, b)) for a, row in enumerate(nn_idx[:, :neighbors].tolist()) for b in row
    }
    if not cand:
        return []
    pairs = np.array(sorted(cand), dtype=np.int64)
    gi, gj = reps[pairs[:, 0]], reps[pairs[:, 1]]
    bits = hash_distance(scan.fp["phash"].numpy(), np.stack([gi, gj], 1))
    contrast = scan.fp["contrast"].numpy()
    colour = scan.fp["colour"].numpy()
    out: list[tuple[int, int, int | None]] = []
    for a, b, d in zip(gi.tolist(), gj.tolist(), bits.tolist(), strict=True):
        blank_a, blank_b = contrast[a] < LOW_CONTRAST, contrast[b] < LOW_CONTRAST
        if blank_a or blank_b:
            same = np.abs(colour[a] - colour[b]).max() <= BLANK_COLOUR_TOL
            if blank_a and blank_b and same:
                out.append((a, b, None))
        elif d <= hash_bits:
            out.append((a, b, int(d)))
    return out


def analyse(
    scan: _Scan,
    *,
    hash_bits: int,
    dup_neighbors: int,
    outlier_k: int,
    outlier_z: float,
    degenerate_z: float,
    outliers_top: int | None,
    device: torch.device,
) -> tuple[list[DuplicateGroup], list[Outlier]]:
    """Duplicate groups and ranked outliers of a scan (see the module docstring)."""
    n = len(scan.paths)
    uf = UnionFind(n)
    digests = [bytes(d) for d in scan.fp["sha1"].numpy()]
    first: dict[bytes, int] = {}
    for i, digest in enumerate(digests):
        if digest in first:
            uf.union(first[digest], i)
        else:
            first[digest] = i
    reps = np.array(sorted(first.values()), dtype=np.int64)
    feats = F.normalize(scan.features.float(), dim=1)
    kmax = max(dup_neighbors, outlier_k + EXTRA_NEIGHBOURS)
    sims, nn_idx = cosine_knn(feats[torch.from_numpy(reps)], kmax, device)
    bits_of: dict[tuple[int, int], int | None] = {}
    for a, b, d in _near_pairs(scan, reps, nn_idx, dup_neighbors, hash_bits):
        uf.union(a, b)
        bits_of[(a, b)] = d
    # Groups: keep the largest image, then the largest file, then the first path.
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(uf.find(i), []).append(i)
    pixels, nbytes = scan.fp["pixels"].tolist(), scan.fp["bytes"].tolist()
    groups: list[DuplicateGroup] = []
    group_of = np.arange(n)
    for root, idx in members.items():
        group_of[idx] = root
        if len(idx) < 2:
            continue
        keep = min(idx, key=lambda i: (-pixels[i], -nbytes[i], scan.paths[i]))
        rest = []
        for i in sorted(idx, key=lambda i: scan.paths[i]):
            if i == keep:
                continue
            exact = digests[i] == digests[keep]
            sim = 1.0 if exact else float(feats[i] @ feats[keep])
            bits = 0 if exact else _pair_bits(scan, i, keep)
            rest.append(Member(scan.paths[i], "exact" if exact else "near", round(sim, 4), bits))
        groups.append(DuplicateGroup(0, scan.paths[keep], rest))
    groups.sort(key=lambda g: (g.kind != "near", -len(g.members),
                               -min(m.similarity for m in g.members), g.keep))  # fmt: skip
    for gid, g in enumerate(groups, 1):
        g.id = gid
    # Outliers, on the representatives: mean distance to the k nearest images that are not
    # the image's own duplicates.
    same = torch.from_numpy(group_of[reps][nn_idx.numpy()] == group_of[reps][:, None])
    dist = (1 - sims).masked_fill(same, math.nan)
    order = torch.argsort(same.to(torch.int8), dim=1, stable=True)[:, :outlier_k]
    knn_dist = torch.nanmean(torch.gather(dist, 1, order), dim=1).nan_to_num(0.0)
    z_emb_r = robust_z(knn_dist)
    colourless = scan.fp["chroma"][torch.from_numpy(reps)] <= COLOURLESS_CHROMA
    p_group = colour_group_p(colourless, torch.gather(nn_idx, 1, order))
    s_group = torch.log10(1.0 / p_group.clamp_min(1e-300)) / math.log10(1.0 / COLOUR_GROUP_P)
    n_grey = torch.gather(colourless[nn_idx], 1, order).sum(1)
    z_hf = robust_z(scan.fp["hf"].float())
    z_ent = robust_z(scan.fp["entropy"].float())
    z_pix = torch.maximum(z_hf, -z_ent)
    rep_of = {int(r): p for p, r in enumerate(reps.tolist())}
    dup_flagged = {m.path for g in groups for m in g.members}
    rows = []
    for i in range(n):
        r = rep_of[first[digests[i]]]
        ze, zp, sg = float(z_emb_r[r]), float(z_pix[i]), float(s_group[r])
        sev = max(ze / outlier_z, zp / degenerate_z, sg)
        if sg > 0 and sg >= max(ze / outlier_z, zp / degenerate_z):
            why = (
                f"colourless, like {int(n_grey[r])} of its {outlier_k} nearest neighbours, in "
                f"a colour data set ({float(colourless.float().mean()):.1%} colourless): a "
                f"group from another source? (chance p {float(p_group[r]):.1g})"
            )
        elif ze / outlier_z >= zp / degenerate_z:
            why = f"far from its {outlier_k} nearest neighbours (z {ze:.1f})"
        elif float(z_hf[i]) >= float(-z_ent[i]):
            why = f"noise-like: high-frequency energy (z {float(z_hf[i]):.1f})"
        else:
            why = f"blank or nearly: few grey levels (entropy z {float(z_ent[i]):.1f})"
        rows.append(Outlier(scan.paths[i], 0, round(sev, 4), round(ze, 3), round(zp, 3),
                            round(float(knn_dist[r]), 5), why, False))  # fmt: skip
    rows.sort(key=lambda o: (o.path in dup_flagged, -o.severity, o.path))
    for rank, o in enumerate(rows, 1):
        o.rank = rank
        if o.path in dup_flagged:
            continue
        o.flagged = rank <= outliers_top if outliers_top is not None else o.severity >= 1.0
    return groups, rows


def _pair_bits(scan: _Scan, a: int, b: int) -> int | None:
    contrast = scan.fp["contrast"]
    if contrast[a] < LOW_CONTRAST or contrast[b] < LOW_CONTRAST:
        return None
    return int(hash_distance(scan.fp["phash"].numpy(), np.array([[a, b]]))[0])


# ----------------------------------------------------------------------------- outputs


def _write_csv(report: CurationReport, scan: _Scan, classes: list[str], path: Path) -> None:
    group_of: dict[str, tuple[DuplicateGroup, Member | None]] = {}
    for grp in report.groups:
        group_of[grp.keep] = (grp, None)
        for mem in grp.members:
            group_of[mem.path] = (grp, mem)
    label_of = dict(zip(scan.paths, scan.labels, strict=True))
    flagged = set(report.flagged_outliers)
    dup_rows: list[dict[str, Any]] = []
    out_rows: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for o in report.outliers:
        g: DuplicateGroup | None = None
        m: Member | None = None
        if o.path in group_of:
            g, m = group_of[o.path]
        status = "ok"
        if m is not None:
            status = f"{m.kind}_duplicate"
        elif o.path in flagged:
            status = "outlier"
        elif g is not None:
            status = "keep"
        t = label_of.get(o.path, -1)
        row = {
            "path": o.path, "label": t if t >= 0 else "", "class": classes[t] if 0 <= t < len(classes) else "",
            "status": status, "group": g.id if g else "", "keep": g.keep if g else "",
            "similarity": m.similarity if m else "",
            "hash_bits": "" if m is None or m.hash_bits is None else m.hash_bits,
            "outlier_rank": o.rank, "severity": o.severity, "z_embedding": o.z_embedding,
            "z_pixels": o.z_pixels, "knn_distance": o.knn_distance,
            "reason": o.reason if status == "outlier" else "",
        }  # fmt: skip
        (dup_rows if m else out_rows if status == "outlier" else rest).append(row)
    dup_rows.sort(key=lambda r: (r["group"], r["path"]))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list((dup_rows + out_rows + rest)[0]))
        w.writeheader()
        w.writerows(dup_rows + out_rows + rest)


def _tile(source: ImageSource, i: int, size: int) -> np.ndarray:
    from PIL import Image

    raw = to_tensor(source.load(i), 3)
    if raw.dtype != torch.uint8:
        raw = (raw.clamp(0, 1) * 255).round().to(torch.uint8)
    img = Image.fromarray(raw.permute(1, 2, 0).numpy())
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    if max(img.size) < size:  # small images: blow up with visible pixels
        f = size / max(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))),
                         Image.Resampling.NEAREST)  # fmt: skip
    return np.asarray(img)


Cell = tuple[int, str, bool] | None
GRID_COLUMNS = 9


def save_grid(
    rows: list[list[Cell]], source: ImageSource, title: str, path: Path, tile: int = 64,
    dpi: int = 100, columns: int = GRID_COLUMNS,
) -> Path:  # fmt: skip
    """A PNG of image rows, ``tile`` px a cell, at least ``columns`` wide; each cell
    ``(source index, caption, highlight)`` or None (a gap). One mosaic drawn on a single
    axis: fast, and small whatever the count."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pad, caption, top = 4, 14, 22
    cols = max(columns, *(len(r) for r in rows))
    width, height = cols * (tile + pad) + pad, top + len(rows) * (tile + caption + pad)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    texts: list[tuple[float, float, str, bool]] = []
    for r, row in enumerate(rows):
        y = top + r * (tile + caption + pad)
        for c, cell in enumerate(row):
            if cell is None:
                continue
            i, text, hot = cell
            x = pad + c * (tile + pad)
            img = _tile(source, i, tile)
            dy, dx = (tile - img.shape[0]) // 2, (tile - img.shape[1]) // 2
            canvas[y + dy : y + dy + img.shape[0], x + dx : x + dx + img.shape[1]] = img[..., :3]
            texts.append((x + tile / 2, y + tile + caption / 2, text, hot))
    ax.imshow(canvas, interpolation="nearest")
    for tx, ty, text, hot in texts:
        ax.text(tx, ty, text, ha="center", va="center", fontsize=6.5,
                color="#c0392b" if hot else "#222222")  # fmt: skip
    ax.text(pad, top / 2, title, ha="left", va="center", fontsize=7.5)
    fig.savefig(path, dpi=dpi)
    return path


def _grids(report: CurationReport, scan: _Scan, source: ImageSource, out: Path,
           top_outliers: int, top_groups: int) -> dict[str, str]:  # fmt: skip
    """outliers.png (most outlying first) and duplicates.png (groups side by side, each
    its kept image then up to five flagged copies)."""
    pos = {p: scan.index[k] for k, p in enumerate(scan.paths)}
    files = {}
    dups = set(report.flagged_duplicates)
    ranked = [o for o in report.outliers if o.path not in dups][:top_outliers]
    if ranked:
        cells: list[Cell] = [(pos[o.path], f"#{o.rank} {o.severity:.2f}", o.flagged)
                             for o in ranked]  # fmt: skip
        rows = [cells[s : s + GRID_COLUMNS] for s in range(0, len(cells), GRID_COLUMNS)]
        title = f"most outlying of {report.images} images: rank, severity (>= 1: flagged, red)"
        files["outliers_png"] = str(save_grid(rows, source, title, out / "outliers.png"))
    if report.groups:
        rows, row = [], list[Cell]()
        for g in report.groups[:top_groups]:
            group: list[Cell] = [(pos[g.keep], "keep", False)]
            for m in g.members[:5]:
                cap = "exact" if m.kind == "exact" else (
                    f"{m.similarity:.3f} / {m.hash_bits}b" if m.hash_bits is not None
                    else f"{m.similarity:.3f} blank")  # fmt: skip
                group.append((pos[m.path], cap, True))
            if row and len(row) + 1 + len(group) > GRID_COLUMNS:
                rows.append(row)
                row = []
            row += ([None] if row else []) + group
        rows.append(row)
        title = "duplicate groups: kept image, then its flagged copies (cosine / hash bits)"
        files["duplicates_png"] = str(save_grid(rows, source, title, out / "duplicates.png"))
    return files


# ----------------------------------------------------------------------------- moving


def _move_flagged(report: CurationReport, root: Path, quarantine: Path) -> list[str]:
    """Move flagged files under ``quarantine`` (same relative paths); return them."""
    reasons: dict[str, str] = {}
    for g in report.groups:
        for m in g.members:
            reasons[m.path] = f"{m.kind} duplicate of {g.keep}"
    for o in report.outliers:
        if o.flagged and o.path not in reasons:
            reasons[o.path] = f"outlier: {o.reason}"
    clash = [p for p in reasons if (quarantine / p).exists()]
    if clash:
        raise ConfigError(
            f"{len(clash)} flagged files already exist in --move-to {str(quarantine)!r} (e.g. "
            f"{clash[0]}); nothing was moved. Restore them first (selfsup curate --undo "
            f"{quarantine}) or choose another folder."
        )
    manifest = quarantine / MANIFEST
    record: dict[str, Any] = {"version": REPORT_VERSION, "moves": [], "restored": []}
    if manifest.is_file():
        record = json.loads(manifest.read_text())
    quarantine.mkdir(parents=True, exist_ok=True)
    moved: list[str] = []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        for rel, why in reasons.items():
            src, dst = root / rel, quarantine / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
            record["moves"].append({"from": str(src.resolve()), "to": str(dst.resolve()),
                                    "reason": why, "time": now})  # fmt: skip
            moved.append(rel)
    finally:
        manifest.write_text(json.dumps(record, indent=1))
    return moved


def restore_quarantine(path: str | Path) -> dict[str, int]:
    """Undo ``curate(move_to=...)``: move every file of the quarantine's manifest back to
    where it was. ``path`` is the quarantine folder or its ``curation_manifest.json``.
    Files whose original place is taken again are left where they are (and stay listed)."""
    p = Path(path).expanduser()
    manifest = p / MANIFEST if p.is_dir() else p
    if not manifest.is_file():
        raise DataError(
            f"no {MANIFEST} in {str(p)!r}: give the --move-to folder of an earlier curate run."
        )
    record = json.loads(manifest.read_text())
    keep, restored, missing = [], 0, 0
    for m in record.get("moves", []):
        src, dst = Path(m["from"]), Path(m["to"])
        if dst.exists() and not src.exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(dst), str(src))
            record.setdefault("restored", []).append(m)
            restored += 1
        else:
            missing += not dst.exists()
            keep.append(m)
    record["moves"] = keep
    manifest.write_text(json.dumps(record, indent=1))
    return {"restored": restored, "left": len(keep), "missing": missing}


# ----------------------------------------------------------------------------- curate


def curate(
    model: str | Path | Method | nn.Module,
    data: str | Path | ImageSource,
    out: str | Path | None = "curation",
    *,
    move_to: str | Path | None = None,
    hash_bits: int = 8,
    dup_neighbors: int = 5,
    outlier_k: int = 20,
    outlier_z: float = 5.0,
    degenerate_z: float = 12.0,
    outliers_top: int | None = None,
    split: str = "train",
    data_root: str | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    limit: int | None = None,
    workers: int = -1,
    random_init: bool = False,
    grid_outliers: int = 32,
    grid_groups: int = 12,
    progress: bool = False,
) -> CurationReport:
    """Find exact duplicates, near duplicates and outliers in ``data`` with the embedding of
    ``model`` (a run folder, checkpoint, Method or feature ``nn.Module``) plus model-free
    image fingerprints; write the report to ``out`` (None: write nothing) and, with
    ``move_to``, move the flagged files there (see the module docstring for the method and
    the meaning of every threshold)."""
    t0 = time.perf_counter()
    if not 0 <= hash_bits <= HASH_BITS:
        raise ConfigError(f"--hash-bits must be between 0 and {HASH_BITS}, got {hash_bits}.")
    if dup_neighbors < 1 or outlier_k < 1:
        raise ConfigError("--dup-neighbors and --outlier-k must be at least 1.")
    if outlier_z <= 0 or degenerate_z <= 0:
        raise ConfigError("--outlier-z and --degenerate-z must be positive.")
    if outliers_top is not None and outliers_top < 0:
        raise ConfigError(f"--outliers-top must be 0 or more, got {outliers_top}.")
    dev, prec = check_device_precision(device, precision)
    source = subset(open_data(data, split, data_root), limit, seed=0)
    root = _root_of(source)
    quarantine = Path(move_to).expanduser().resolve() if move_to is not None else None
    if quarantine is not None:
        if root is None:
            raise ConfigError("--move-to needs a folder of images as --data, not a named set.")
        if quarantine == root.resolve() or root.resolve() in quarantine.parents:
            raise ConfigError(
                f"--move-to {str(quarantine)!r} is inside --data {str(root)!r}: quarantined "
                "files would be scanned again. Choose a folder outside it."
            )
    if len(source) < 3:
        raise DataError(f"{source.name} has {len(source)} images; curation needs at least 3.")
    fm = feature_model(model, source, image_size, random_init)
    scan = _scan(source, fm, dev, prec, batch_size, workers, progress)
    if len(scan.paths) < 3:
        raise DataError(f"only {len(scan.paths)} images of {source.name} are readable.")
    settings = {"hash_bits": hash_bits, "dup_neighbors": dup_neighbors, "outlier_k": outlier_k,
                "outlier_z": outlier_z, "degenerate_z": degenerate_z,
                "outliers_top": outliers_top, "image_size": fm.image_size}  # fmt: skip
    groups, outliers = analyse(
        scan, hash_bits=hash_bits, dup_neighbors=dup_neighbors, outlier_k=outlier_k,
        outlier_z=outlier_z, degenerate_z=degenerate_z, outliers_top=outliers_top, device=dev,
    )  # fmt: skip
    readable = set(scan.index)
    unreadable = [_file_of(source, i)[1] for i in range(len(source)) if i not in readable]
    report = CurationReport(str(root) if root else source.name, fm.name, len(source), settings,
                            groups, outliers, unreadable)  # fmt: skip
    if out is not None:
        folder = Path(out).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        report.files = _grids(report, scan, source, folder, grid_outliers, grid_groups)
        _write_csv(report, scan, list(source.classes), folder / "curation.csv")
        report.files["csv"] = str(folder / "curation.csv")
        report.files["json"] = str(folder / "curation.json")
    if quarantine is not None and root is not None:
        report.moved = _move_flagged(report, root, quarantine)
        report.files["manifest"] = str(quarantine / MANIFEST)
    report.seconds = time.perf_counter() - t0
    if out is not None:
        Path(report.files["json"]).write_text(json.dumps(report.as_dict(), indent=1))
    return report
