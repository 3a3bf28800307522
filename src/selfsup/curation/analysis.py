"""From a scan to findings: duplicate groups (exact content hash, or embedding rank plus
perceptual hash) and every image ranked by how much of an outlier it is (see the package
docstring for the method)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.curation.report import DuplicateGroup, Member, Outlier
from selfsup.curation.scan import Scan

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
    images and for data sets that are not mostly colour (see the package docstring)."""
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
    """Disjoint sets of ``0..n-1`` (path halving); each set's root is its smallest member."""

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


def _near_pairs(
    scan: Scan, reps: np.ndarray, nn_idx: torch.Tensor, neighbors: int, hash_bits: int
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


def _pair_bits(scan: Scan, a: int, b: int) -> int | None:
    contrast = scan.fp["contrast"]
    if contrast[a] < LOW_CONTRAST or contrast[b] < LOW_CONTRAST:
        return None
    return int(hash_distance(scan.fp["phash"].numpy(), np.array([[a, b]]))[0])


def _duplicate_groups(
    scan: Scan, uf: UnionFind, digests: list[bytes], feats: torch.Tensor
) -> tuple[list[DuplicateGroup], np.ndarray]:
    """The sets of ``uf`` with two or more images as groups (near groups, bigger groups and
    closer copies first; ids from 1), and each image's group root (itself when alone).
    ``feats`` (N, D) are the normalised embeddings."""
    n = len(scan.paths)
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
        # Keep the largest image, then the largest file, then the first path.
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
    return groups, group_of


@dataclass
class _Scores:
    """Outlier evidence per representative (R, the rows of the kNN) or per image (N)."""

    knn_dist: torch.Tensor  # (R,) mean cosine distance to the k nearest non-duplicates
    z_embedding: torch.Tensor  # (R,) robust z-score of knn_dist
    colourless: torch.Tensor  # (R,) bool
    p_group: torch.Tensor  # (R,) chance of at least as many colourless neighbours
    s_group: torch.Tensor  # (R,) colourless-group severity
    n_grey: torch.Tensor  # (R,) colourless images among the k neighbours
    z_hf: torch.Tensor  # (N,) robust z-score of the high-frequency energy
    z_ent: torch.Tensor  # (N,) robust z-score of the grey-level entropy
    z_pixels: torch.Tensor  # (N,) the larger of z_hf and -z_ent


def _outlier_scores(
    scan: Scan,
    reps: np.ndarray,
    group_of: np.ndarray,
    sims: torch.Tensor,
    nn_idx: torch.Tensor,
    outlier_k: int,
) -> _Scores:
    """Outliers, on the representatives: mean distance to the k nearest images that are not
    the image's own duplicates; colourless neighbours; and the model-free pixel scores."""
    same = torch.from_numpy(group_of[reps][nn_idx.numpy()] == group_of[reps][:, None])
    dist = (1 - sims).masked_fill(same, math.nan)
    order = torch.argsort(same.to(torch.int8), dim=1, stable=True)[:, :outlier_k]
    knn_dist = torch.nanmean(torch.gather(dist, 1, order), dim=1).nan_to_num(0.0)
    colourless = scan.fp["chroma"][torch.from_numpy(reps)] <= COLOURLESS_CHROMA
    p_group = colour_group_p(colourless, torch.gather(nn_idx, 1, order))
    z_hf = robust_z(scan.fp["hf"].float())
    z_ent = robust_z(scan.fp["entropy"].float())
    return _Scores(
        knn_dist=knn_dist,
        z_embedding=robust_z(knn_dist),
        colourless=colourless,
        p_group=p_group,
        s_group=torch.log10(1.0 / p_group.clamp_min(1e-300)) / math.log10(1.0 / COLOUR_GROUP_P),
        n_grey=torch.gather(colourless[nn_idx], 1, order).sum(1),
        z_hf=z_hf,
        z_ent=z_ent,
        z_pixels=torch.maximum(z_hf, -z_ent),
    )


def _reason(
    s: _Scores, i: int, r: int, outlier_k: int, outlier_z: float, degenerate_z: float
) -> str:
    """Why image ``i`` (representative row ``r``) ranks where it does: its largest score."""
    ze, zp, sg = float(s.z_embedding[r]), float(s.z_pixels[i]), float(s.s_group[r])
    if sg > 0 and sg >= max(ze / outlier_z, zp / degenerate_z):
        return (
            f"colourless, like {int(s.n_grey[r])} of its {outlier_k} nearest neighbours, in "
            f"a colour data set ({float(s.colourless.float().mean()):.1%} colourless): a "
            f"group from another source? (chance p {float(s.p_group[r]):.1g})"
        )
    if ze / outlier_z >= zp / degenerate_z:
        return f"far from its {outlier_k} nearest neighbours (z {ze:.1f})"
    if float(s.z_hf[i]) >= float(-s.z_ent[i]):
        return f"noise-like: high-frequency energy (z {float(s.z_hf[i]):.1f})"
    return f"blank or nearly: few grey levels (entropy z {float(s.z_ent[i]):.1f})"


def _rank_outliers(
    scan: Scan,
    s: _Scores,
    rep_rows: list[int],
    dup_flagged: set[str],
    *,
    outlier_k: int,
    outlier_z: float,
    degenerate_z: float,
    outliers_top: int | None,
) -> list[Outlier]:
    """Every image, most severe first (flagged duplicates last, never flagged as outliers);
    ``rep_rows[i]`` is the kNN row of image ``i``'s representative."""
    rows = []
    for i, r in enumerate(rep_rows):
        ze, zp, sg = float(s.z_embedding[r]), float(s.z_pixels[i]), float(s.s_group[r])
        sev = max(ze / outlier_z, zp / degenerate_z, sg)
        why = _reason(s, i, r, outlier_k, outlier_z, degenerate_z)
        rows.append(Outlier(scan.paths[i], 0, round(sev, 4), round(ze, 3), round(zp, 3),
                            round(float(s.knn_dist[r]), 5), why, False))  # fmt: skip
    rows.sort(key=lambda o: (o.path in dup_flagged, -o.severity, o.path))
    for rank, o in enumerate(rows, 1):
        o.rank = rank
        if o.path in dup_flagged:
            continue
        o.flagged = rank <= outliers_top if outliers_top is not None else o.severity >= 1.0
    return rows


def analyse(
    scan: Scan,
    *,
    hash_bits: int,
    dup_neighbors: int,
    outlier_k: int,
    outlier_z: float,
    degenerate_z: float,
    outliers_top: int | None,
    device: torch.device,
) -> tuple[list[DuplicateGroup], list[Outlier]]:
    """Duplicate groups and ranked outliers of a scan (see the package docstring)."""
    uf = UnionFind(len(scan.paths))
    digests = [bytes(d) for d in scan.fp["sha1"].numpy()]
    first: dict[bytes, int] = {}  # content hash -> its first image, the representative
    for i, digest in enumerate(digests):
        if digest in first:
            uf.union(first[digest], i)
        else:
            first[digest] = i
    reps = np.array(sorted(first.values()), dtype=np.int64)
    feats = F.normalize(scan.features.float(), dim=1)
    kmax = max(dup_neighbors, outlier_k + EXTRA_NEIGHBOURS)
    sims, nn_idx = cosine_knn(feats[torch.from_numpy(reps)], kmax, device)
    for a, b, _ in _near_pairs(scan, reps, nn_idx, dup_neighbors, hash_bits):
        uf.union(a, b)
    groups, group_of = _duplicate_groups(scan, uf, digests, feats)
    scores = _outlier_scores(scan, reps, group_of, sims, nn_idx, outlier_k)
    row_of = {int(r): p for p, r in enumerate(reps.tolist())}
    rows = _rank_outliers(
        scan, scores, [row_of[first[d]] for d in digests],
        {m.path for g in groups for m in g.members}, outlier_k=outlier_k,
        outlier_z=outlier_z, degenerate_z=degenerate_z, outliers_top=outliers_top,
    )  # fmt: skip
    return groups, rows
