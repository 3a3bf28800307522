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

Layers, each depending only on those above it: :mod:`~selfsup.curation.fingerprints`
(pixels to hashes and statistics), :mod:`~selfsup.curation.scan` (the one pass over the
data), :mod:`~selfsup.curation.report` (what was found), :mod:`~selfsup.curation.analysis`
(duplicates and outliers), :mod:`~selfsup.curation.outputs` (CSV and grids),
:mod:`~selfsup.curation.quarantine` (moving files and back), :mod:`~selfsup.curation.command`
(:func:`curate`).
"""

from selfsup.curation.analysis import (
    BLANK_COLOUR_TOL,
    COLOUR_GROUP_P,
    COLOURLESS_CHROMA,
    EXTRA_NEIGHBOURS,
    LOW_CONTRAST,
    MINORITY_SHARE,
    POPCOUNT,
    UnionFind,
    analyse,
    binomial_tail,
    colour_group_p,
    cosine_knn,
    hash_distance,
    robust_z,
)
from selfsup.curation.command import curate
from selfsup.curation.fingerprints import (
    CROP_SCALE,
    CROPS,
    HASH_BITS,
    HASH_SIDE,
    THUMB,
    fingerprint,
)
from selfsup.curation.outputs import GRID_COLUMNS, Cell, save_grid
from selfsup.curation.quarantine import MANIFEST, restore_quarantine
from selfsup.curation.report import (
    REPORT_VERSION,
    CurationReport,
    DuplicateGroup,
    Member,
    Outlier,
)
from selfsup.curation.scan import CurationDataset, Scan

__all__ = [
    "BLANK_COLOUR_TOL",
    "COLOURLESS_CHROMA",
    "COLOUR_GROUP_P",
    "CROPS",
    "CROP_SCALE",
    "EXTRA_NEIGHBOURS",
    "GRID_COLUMNS",
    "HASH_BITS",
    "HASH_SIDE",
    "LOW_CONTRAST",
    "MANIFEST",
    "MINORITY_SHARE",
    "POPCOUNT",
    "REPORT_VERSION",
    "THUMB",
    "Cell",
    "CurationDataset",
    "CurationReport",
    "DuplicateGroup",
    "Member",
    "Outlier",
    "Scan",
    "UnionFind",
    "analyse",
    "binomial_tail",
    "colour_group_p",
    "cosine_knn",
    "curate",
    "fingerprint",
    "hash_distance",
    "restore_quarantine",
    "robust_z",
    "save_grid",
]

_Scan = Scan  # its name before the package split; tests build scans by hand with it
