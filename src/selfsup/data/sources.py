"""Image sources: a folder of images at any depth, or a named public data set.

A source is an indexable list of images with optional labels. It decodes one image on
demand (``load(i)``) and knows a human-readable name for each item (``describe(i)``) so that
errors can name the file. A folder whose files hold several images each (multi-frame DICOM,
NIfTI volumes) is a :class:`FrameFolderSource`: one item per frame or slice.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)

# Medical formats (read by selfsup.data.medical; pydicom / nibabel are optional). DICOM files
# without an extension are found by their preamble when their name has no suffix or a
# numeric one (IM0001, 1.2.840.1.2).
DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")

NAMED_SETS = ("cifar10", "cifar100", "stl10")


class DataError(ValueError):
    """A data problem, explained for the user (which path, what to do)."""


class ImageSource(Protocol):
    """What the loaders need from a data set."""

    @property
    def labels(self) -> list[int] | None: ...  # -1 marks an unlabelled item

    @property
    def classes(self) -> list[str]: ...

    @property
    def name(self) -> str: ...

    def __len__(self) -> int: ...

    def load(self, i: int) -> Image.Image | np.ndarray: ...

    def describe(self, i: int) -> str: ...


@dataclass
class FolderSource:
    """Image files under a folder, at any depth.

    When every image sits below a first-level sub-folder, that sub-folder's name is the
    label (the ImageFolder convention, extended to any depth below it); otherwise the images
    are unlabelled. Labels are never used for pretraining.
    """

    root: Path
    files: list[str]
    labels: list[int] | None
    classes: list[str] = field(default_factory=list)
    max_pixels: int = 178_956_970

    @property
    def name(self) -> str:
        return str(self.root)

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.root / self.files[i]

    def load(self, i: int) -> Image.Image | np.ndarray:
        from selfsup.data.decode import open_file

        return open_file(self.path(i), self.max_pixels)

    def describe(self, i: int) -> str:
        return str(self.path(i))


@dataclass
class FrameFolderSource:
    """A folder where some files hold several 2-D images: one item per (file, frame).

    ``items[i] = (file, k)``: sample ``k`` (frame of a multi-frame DICOM, slice of a NIfTI
    volume, from 0) of ``folder.files[file]``; ``dims[file]`` are the axes that index the
    file's samples (``()`` for a file of one image). Labels come from the files' folders.
    Items are not files, so tools that move or hash files see them as a named set would be.
    """

    folder: FolderSource
    items: list[tuple[int, int]]
    dims: list[tuple[int, ...]]
    kinds: list[str | None]

    def __post_init__(self) -> None:
        lab = self.folder.labels
        self._labels = None if lab is None else [lab[f] for f, _ in self.items]

    @property
    def labels(self) -> list[int] | None:
        return self._labels

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    @property
    def name(self) -> str:
        return self.folder.name

    def __len__(self) -> int:
        return len(self.items)

    def path(self, i: int) -> Path:
        return self.folder.path(self.items[i][0])

    def load(self, i: int) -> Image.Image | np.ndarray:
        from selfsup.data.decode import open_file

        f, k = self.items[i]
        return open_file(self.folder.path(f), self.folder.max_pixels, index=k)

    def describe(self, i: int) -> str:
        from selfsup.data.medical import sample_name

        f, k = self.items[i]
        kind, dims = self.kinds[f], self.dims[f]
        if kind is None or not dims:
            return str(self.folder.path(f))
        return f"{self.folder.path(f)}[{sample_name(kind, dims, k)}]"


def _wanted(base: Path, rel: str, name: str) -> bool:
    low = name.lower()
    if name.startswith("."):
        return False
    if low.endswith(IMAGE_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS):
        return True
    from selfsup.data.medical import dicom_candidate, has_dicm_preamble

    return dicom_candidate(name) and has_dicm_preamble(base / rel / name)


def scan_folder(root: str | Path, max_pixels: int | None = None) -> FolderSource:
    """Index every image file under ``root`` (sorted, so the order is reproducible)."""
    base = Path(root).expanduser()
    if not base.exists():
        raise DataError(
            f"data path {str(base)!r} does not exist. Give a folder of images or a named set "
            f"({', '.join(NAMED_SETS)})."
        )
    if base.is_file():
        raise DataError(
            f"data path {str(base)!r} is a file; give the folder that holds the images."
        )
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, base)
        for f in sorted(filenames):
            if _wanted(base, rel, f):
                files.append(f if rel == "." else os.path.join(rel, f))
    if not files:
        exts = IMAGE_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS
        raise DataError(
            f"no images found under {str(base)!r} (looked for {', '.join(exts)} and "
            "DICOM files without an extension, at any depth). Check the path."
        )
    top = [f.split(os.sep, 1)[0] for f in files]
    labelled = all(os.sep in f for f in files)
    if labelled:
        classes = sorted(set(top))
        index = {c: i for i, c in enumerate(classes)}
        src = FolderSource(base, files, [index[t] for t in top], classes)
    else:
        src = FolderSource(base, files, None, [])
    if max_pixels is not None:
        src.max_pixels = max_pixels
    return src


def open_folder(root: str | Path, max_pixels: int | None = None) -> ImageSource:
    """:func:`scan_folder`, then one item per frame or slice of medical files (counted from
    their headers, no pixel data read); DICOM objects that hold no image (reports,
    presentation states) are left out. A folder of one image a file stays a FolderSource."""
    from selfsup.data.medical import MissingPackageError, kind_of, sample_dims

    src = scan_folder(root, max_pixels)
    kinds = [kind_of(src.path(i)) for i in range(len(src))]
    if not any(kinds):
        return src
    dims: list[tuple[int, ...] | None] = []
    for i, kind in enumerate(kinds):
        try:
            dims.append(sample_dims(src.path(i), kind) if kind else ())
        except MissingPackageError:
            raise  # a setup problem: say it now, not once per file
        except Exception:
            dims.append(())  # unreadable header: one item, reported when it is loaded
    keep = [i for i, d in enumerate(dims) if d is not None]
    if not keep:
        raise DataError(
            f"the DICOM files under {src.name!r} hold no images (reports or presentation "
            "states only). Run selfsup data check on the folder to see what is there."
        )
    if len(keep) < len(src):
        labels = None if src.labels is None else [src.labels[i] for i in keep]
        src = FolderSource(src.root, [src.files[i] for i in keep], labels, src.classes,
                           src.max_pixels)  # fmt: skip
        kinds, dims = [kinds[i] for i in keep], [dims[i] for i in keep]
    shapes = [d or () for d in dims]
    if all(not d for d in shapes):
        return src
    items = [(f, k) for f, d in enumerate(shapes) for k in range(math.prod(d))]
    return FrameFolderSource(src, items, shapes, kinds)


class TorchvisionSource:
    """A torchvision data set (CIFAR-10/100, STL-10) seen as an :class:`ImageSource`."""

    def __init__(self, name: str, split: str, root: Path, download: bool) -> None:
        import torchvision.datasets as tvd

        self.name = f"{name}:{split}"
        self.labels: list[int] | None = None
        self.classes: list[str] = []
        try:
            if name in ("cifar10", "cifar100"):
                cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
                ds = cls(str(root), train=(split == "train"), download=download)
                self._images = ds.data  # (N, 32, 32, 3) uint8
                self.labels = [int(t) for t in ds.targets]
                self.classes = list(ds.classes)
            elif name == "stl10":
                # Pretraining uses the 100k unlabelled images plus the labelled train split.
                tv_split = {"train": "train+unlabeled", "test": "test"}.get(split, split)
                ds10 = tvd.STL10(str(root), split=tv_split, download=download)
                self._images = ds10.data.transpose(0, 2, 3, 1)  # (N, 96, 96, 3)
                self.labels = [int(t) for t in ds10.labels]
                self.classes = list(ds10.classes)
            else:  # pragma: no cover - guarded by open_source
                raise DataError(f"unknown named set {name!r}")
        except (RuntimeError, OSError) as err:
            raise DataError(
                f"could not load the named set {name!r} from {str(root)!r}: {err}. Without "
                "network access, download it elsewhere and pass its folder with --data-root, "
                "or give a folder of images with --data."
            ) from None
        if self.labels is not None and all(t < 0 for t in self.labels):
            self.labels = None

    def __len__(self) -> int:
        return len(self._images)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self._images[i])

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


def default_data_root() -> Path:
    return Path(os.environ.get("SELFSUP_DATA", "~/.cache/selfsup/data")).expanduser()


def open_source(
    spec: str,
    split: str = "train",
    root: str | None = None,
    download: bool = True,
    max_pixels: int | None = None,
    video_gap: int = 8,
) -> ImageSource:
    """Open ``spec``: a folder path, or a named set (its ``split``) under ``root``. A folder
    holding video files is a :class:`~selfsup.data.video.VideoSource` (one item a video; its
    views drawn from frames up to ``video_gap`` apart).

    For a named set, ``root`` may also be an ImageFolder layout with ``<split>/<class>/``
    sub-folders (as in ``shared/datasets/cifar10``), which is then read directly.
    """
    key = spec.lower()
    if key in NAMED_SETS and not Path(spec).exists():
        base = Path(root).expanduser() if root else default_data_root() / key
        if (base / split).is_dir():
            return open_folder(base / split, max_pixels)
        if root and not base.exists():
            raise DataError(f"--data-root {root!r} does not exist.")
        return TorchvisionSource(key, split, base, download)
    from selfsup.data.video import VideoSource, has_video_files, open_videos

    if has_video_files(spec):
        return VideoSource(open_videos(spec), gap=video_gap)
    return open_folder(spec, max_pixels)


class SubsetSource:
    """A view on some items of another source."""

    def __init__(self, base: ImageSource, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = list(indices)
        self.classes = base.classes
        self.name = base.name
        self.labels = [base.labels[i] for i in self.indices] if base.labels is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> Image.Image | np.ndarray:
        return self.base.load(self.indices[i])

    def describe(self, i: int) -> str:
        return self.base.describe(self.indices[i])


def stratified_split(
    labels: Sequence[int] | None, n: int, take: int, seed: int
) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (taken, rest) with ``take`` items, class-balanced when labels
    are given (each class contributes in proportion to its size), reproducibly."""
    rng = random.Random(seed)
    take = max(0, min(take, n))
    if labels is None:
        idx = list(range(n))
        rng.shuffle(idx)
        return sorted(idx[:take]), sorted(idx[take:])
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(labels):
        by_class.setdefault(t, []).append(i)
    taken: list[int] = []
    leftovers: list[int] = []
    for c in sorted(by_class):
        members = by_class[c]
        rng.shuffle(members)
        k = int(len(members) * take / n)
        taken += members[:k]
        leftovers += members[k:]
    rng.shuffle(leftovers)
    taken += leftovers[: take - len(taken)]
    chosen = set(taken)
    return sorted(taken), [i for i in range(n) if i not in chosen]


def subset(source: ImageSource, limit: int | None, seed: int = 0) -> ImageSource:
    """At most ``limit`` items of ``source`` (class-balanced, reproducible)."""
    if limit is None or limit >= len(source):
        return source
    taken, _ = stratified_split(source.labels, len(source), limit, seed)
    return SubsetSource(source, taken)


def sniff_image_size(source: ImageSource, samples: int = 32, seed: int = 0) -> int:
    """Median shorter side of a few images (reads headers only for files)."""
    rng = random.Random(seed)
    idx = rng.sample(range(len(source)), min(samples, len(source)))
    sides = []
    for i in idx:
        try:
            if isinstance(source, FolderSource | FrameFolderSource):
                sides.append(_header_side(source.path(i)))
            else:
                img = source.load(i)
                sides.append(min(img.size) if isinstance(img, Image.Image) else min(img.shape[:2]))
        except Exception:  # unreadable files are reported when they are loaded
            continue
    if not sides:
        raise DataError(f"could not read any image of {source.name} to find the image size.")
    sides.sort()
    return sides[len(sides) // 2]


def _header_side(path: Path) -> int:
    """The shorter side of an image file (of one frame or slice), from its header."""
    from selfsup.data.medical import image_size, kind_of

    kind = kind_of(path)
    if kind is not None:
        return min(image_size(path, kind))
    with Image.open(path) as im:
        return min(im.size)


def auto_image_size(source: ImageSource) -> int:
    """Training resolution: the median size when it is 64 px or less, else 224."""
    side = sniff_image_size(source)
    return side if side <= 64 else 224
