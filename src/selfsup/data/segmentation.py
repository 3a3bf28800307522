"""Semantic segmentation folders: ``images/`` and ``masks/`` with the same file stem.

One layout covers every set we read (CamVid, DRIVE, CHASE_DB1, a user's own)::

    split/images/NAME.{jpg,jpeg,png,tif,tiff,bmp}
    split/masks/NAME.png        class indices (8-bit), or 0/255 for two classes
    split/fov/NAME.png          optional field of view: nonzero = scored
    split/classes.json          optional; also looked up in the parent (camvid/classes.json)

``classes.json`` is ``{"classes": [...], "ignore_index": N}``. Without one, masks whose
values are 0 or 255 (in most of the first few files) are binary and map to 0/1 with classes
``["background", "foreground"]``; other masks are class indices and the classes are the
values seen. Pixels outside the field of view and ignored pixels read as ``ignore_index``
(255 unless the classes file says otherwise).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfsup.data.sources import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")  # lossless only
CLASSES_FILE = "classes.json"
DEFAULT_IGNORE = 255
SNIFF_MASKS = 4  # masks read up front to tell binary from class-index masks


@dataclass
class SegSample:
    """One item: ``image`` uint8 (C, H, W) (float32 in [0, 1] for 16-bit files), ``mask``
    int64 (H, W) class indices with ``ignore_index`` where not scored, ``fov`` bool (H, W)
    or None, and the file ``stem``."""

    image: torch.Tensor
    mask: torch.Tensor
    fov: torch.Tensor | None
    stem: str


@dataclass
class Pairing:
    """Files of a split folder by stem (``fov`` is empty when there is no ``fov/``)."""

    root: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    fov: dict[str, Path] = field(default_factory=dict)
    has_fov: bool = False

    @property
    def paired(self) -> list[str]:
        return sorted(s for s in self.images if s in self.masks)

    @property
    def missing_masks(self) -> list[str]:
        return sorted(s for s in self.images if s not in self.masks)

    @property
    def missing_fov(self) -> list[str]:
        return [s for s in self.paired if s not in self.fov] if self.has_fov else []


@dataclass
class ClassSpec:
    """What mask values mean: ``classes`` (index = value), ``ignore_index``, ``binary``
    (0/255 masks read as 0/1) and the classes file it came from, if any."""

    classes: list[str]
    ignore_index: int
    binary: bool
    file: Path | None = None


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            if p.stem in out:
                raise DataError(
                    f"{out[p.stem]} and {p} have the same stem {p.stem!r}; keep one file "
                    "per stem so each image pairs with exactly one mask."
                )
            out[p.stem] = p
    return out


def pair_files(root: str | Path, masks: str = "masks") -> Pairing:
    """Index ``images/``, ``masks`` (and ``fov/``) of a split folder by file stem.

    Raises :class:`DataError` only for a missing folder; unpaired files are reported by the
    returned :class:`Pairing` (the reader refuses them, ``data check`` lists them)."""
    base = Path(root).expanduser()
    for sub in ("images", masks):
        if not (base / sub).is_dir():
            raise DataError(
                f"{base / sub} is not a folder. A segmentation split holds images/ and "
                f"{masks}/ with the same file stems (images/a.jpg <-> {masks}/a.png)."
            )
    pairing = Pairing(base, _by_stem(base / "images", IMAGE_SUFFIXES),
                      _by_stem(base / masks, MASK_SUFFIXES))  # fmt: skip
    if (base / "fov").is_dir():
        pairing.has_fov = True
        pairing.fov = _by_stem(base / "fov", MASK_SUFFIXES)
    return pairing


def _names(stems: list[str], files: dict[str, Path]) -> str:
    shown = ", ".join(files[s].name for s in stems[:5])
    return shown + (f" (and {len(stems) - 5} more)" if len(stems) > 5 else "")


def check_pairing(p: Pairing, masks: str = "masks") -> None:
    """Raise a :class:`DataError` naming the files when the split cannot be read as a whole."""
    if not p.images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {p.root / 'images'}.")
    miss = p.missing_masks
    if miss:
        raise DataError(
            f"{len(miss)} image(s) in {p.root / 'images'} have no mask in {p.root / masks}: "
            f"{_names(miss, p.images)}. Add {masks}/<stem>.png for each (lossless PNG), "
            "or move the unlabelled images out of the split."
        )
    nofov = p.missing_fov
    if nofov:
        raise DataError(
            f"{len(nofov)} image(s) have no field-of-view mask in {p.root / 'fov'}: "
            f"{_names(nofov, p.images)}. Add fov/<stem>.png for each, or remove fov/."
        )


def find_classes_file(root: Path) -> Path | None:
    """``classes.json`` in the split folder, else in its parent (``camvid/classes.json``)."""
    for cand in (root / CLASSES_FILE, root.parent / CLASSES_FILE):
        if cand.is_file():
            return cand
    return None


def read_classes_file(path: Path) -> tuple[list[str], int]:
    """``(classes, ignore_index)`` from a ``classes.json``."""
    try:
        data = json.loads(Path(path).read_text())
        classes = [str(c) for c in data["classes"]]
        ignore = int(data.get("ignore_index", DEFAULT_IGNORE))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{path} is not a readable classes file ({type(err).__name__}: {err}). Expected "
            '{"classes": ["sky", "road", ...], "ignore_index": 255}.'
        ) from None
    if not classes:
        raise DataError(f"{path} lists no classes; give at least two class names.")
    return classes, ignore


def read_mask_array(path: Path, grey: bool = False) -> np.ndarray:
    """The raw values of a mask file as an (H, W) integer array (``grey``: colour files are
    converted to grey first, for field-of-view masks whose values only say inside/outside)."""
    try:
        with Image.open(path) as file:
            img: Image.Image = file
            if img.mode == "1" or (grey and img.mode in ("RGB", "RGBA", "LA")):
                img = img.convert("L")
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DataError(
                    f"{path} is a {img.mode} image; masks must be single-channel (8-bit L or "
                    "palette PNG) whose pixel value is the class index. Convert colour-coded "
                    "masks to class indices first."
                )
            return np.asarray(img).astype(np.int64)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path} is not a readable mask ({type(err).__name__}: {err})") from None


def resolve_classes(
    pairing: Pairing, classes_file: str | Path | None = None, sniff: int = SNIFF_MASKS
) -> ClassSpec:
    """What the masks of ``pairing`` mean: from a classes file, else from a few masks."""
    file = Path(classes_file) if classes_file is not None else find_classes_file(pairing.root)
    if file is not None and not file.is_file():
        raise DataError(f"classes file {file} does not exist.")
    stems = pairing.paired[:sniff]
    values: set[int] = set()
    zero_255_files = 0
    for s in stems:
        seen = set(np.unique(read_mask_array(pairing.masks[s])).tolist())
        zero_255_files += seen <= {0, 255}
        values |= seen
    # Most sniffed masks are 0/255: binary (one broken mask does not change the meaning).
    zero_255 = 2 * zero_255_files > len(stems)
    if file is not None:
        classes, ignore = read_classes_file(file)
        # A two-class file with 0/255 masks and another ignore value: 255 is the foreground.
        binary = zero_255 and len(classes) == 2 and ignore != 255
        return ClassSpec(classes, ignore, binary, file)
    if zero_255:
        return ClassSpec(["background", "foreground"], DEFAULT_IGNORE, True)
    values -= {DEFAULT_IGNORE}
    top = max(values, default=1)
    names = ["background", "foreground"] if top <= 1 else [f"class_{i}" for i in range(top + 1)]
    return ClassSpec(names, DEFAULT_IGNORE, False)


def to_labels(raw: np.ndarray, spec: ClassSpec, where: Path) -> torch.Tensor:
    """Raw mask values (H, W) -> int64 class indices (H, W); bad values raise naming ``where``."""
    t = torch.from_numpy(raw)
    if spec.binary:
        bad = ~((t == 0) | (t == 255) | (t == spec.ignore_index))
        if bool(bad.any()):
            vals = torch.unique(t[bad])[:10].tolist()
            raise DataError(
                f"{where} has values {vals} in a binary (0/255) mask. Threshold it to 0/255, "
                "or add a classes.json if the values are class indices."
            )
        return torch.where(t == 255, 1, t)
    bad = (t >= len(spec.classes)) & (t != spec.ignore_index)
    if bool(bad.any()) or bool((t < 0).any()):
        vals = torch.unique(t[bad | (t < 0)])[:10].tolist()
        hint = f"list them in {spec.file}" if spec.file else "add a classes.json naming them"
        raise DataError(
            f"{where} has values {vals} but there are {len(spec.classes)} classes (0.."
            f"{len(spec.classes) - 1}) and ignore_index {spec.ignore_index}: {hint}, or set "
            "ignore_index to the value that marks unlabelled pixels."
        )
    return t


class SegmentationFolder:
    """A segmentation split folder (see the module docstring): ``load(i)`` gives a
    :class:`SegSample`. Pairing is checked when the folder is opened; sizes and mask values
    when an item is loaded. ``masks="masks_2nd"`` reads another observer's masks."""

    def __init__(
        self,
        root: str | Path,
        classes_file: str | Path | None = None,
        masks: str = "masks",
    ) -> None:
        self.pairing = pair_files(root, masks)
        check_pairing(self.pairing, masks)
        self.root = self.pairing.root
        self.masks_dir = masks
        self.spec = resolve_classes(self.pairing, classes_file)
        self.stems: list[str] = self.pairing.paired
        suffix = "" if masks == "masks" else f" ({masks})"
        self.name = f"{self.root}{suffix}"

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)

    @property
    def ignore_index(self) -> int:
        return self.spec.ignore_index

    @property
    def binary(self) -> bool:
        return self.spec.binary

    @property
    def has_fov(self) -> bool:
        return self.pairing.has_fov

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, i: int) -> SegSample:
        return self.load(i)

    def image_path(self, i: int) -> Path:
        return self.pairing.images[self.stems[i]]

    def mask_path(self, i: int) -> Path:
        return self.pairing.masks[self.stems[i]]

    def load(self, i: int) -> SegSample:
        """Decode item ``i``: image (C, H, W), mask (H, W) int64, fov (H, W) bool or None."""
        from selfsup.data.decode import open_file, to_tensor

        stem = self.stems[i]
        ipath, mpath = self.pairing.images[stem], self.pairing.masks[stem]
        image = to_tensor(open_file(ipath), 3, str(ipath))
        h, w = int(image.shape[1]), int(image.shape[2])
        mask = to_labels(_sized(read_mask_array(mpath), mpath, ipath, h, w), self.spec, mpath)
        fov = None
        if self.has_fov:
            fpath = self.pairing.fov[stem]
            fov = torch.from_numpy(
                _sized(read_mask_array(fpath, grey=True), fpath, ipath, h, w) != 0
            )
            mask = mask.masked_fill(~fov, self.ignore_index)
        return SegSample(image, mask, fov, stem)

    def subset(self, indices: list[int] | torch.Tensor) -> SegmentationFolder:
        """The same folder restricted to ``indices`` (in that order)."""
        out = copy.copy(self)
        out.stems = [self.stems[int(i)] for i in indices]
        return out

    def sample(
        self, fraction: float | None = None, shots: int | None = None, seed: int = 0
    ) -> SegmentationFolder:
        """A labelled subset: ``fraction`` of the images or ``shots`` images (at least 1),
        drawn with a generator seeded by ``seed``, in folder order."""
        return self.subset(sample_indices(len(self), fraction, shots, seed))


def _sized(arr: np.ndarray, path: Path, image: Path, h: int, w: int) -> np.ndarray:
    if arr.shape != (h, w):
        raise DataError(
            f"{path} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image {image} is {w}x{h}; "
            "a mask must have its image's size. Re-export the mask at the image's size."
        )
    return arr


def sample_indices(n: int, fraction: float | None, shots: int | None, seed: int) -> list[int]:
    """Sorted indices of a seeded draw of ``fraction * n`` or ``shots`` items (at least 1)."""
    if (fraction is None) == (shots is None):
        raise ValueError("sample: give exactly one of fraction or shots")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"sample: fraction must be in (0, 1], got {fraction}")
    k = round(n * fraction) if fraction is not None else int(shots or 0)
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:k].tolist())


def open_segmentation(
    path: str | Path, classes_file: str | Path | None = None, masks: str = "masks"
) -> SegmentationFolder:
    """Open a segmentation split folder (``images/`` + ``masks/``)."""
    return SegmentationFolder(path, classes_file=classes_file, masks=masks)
