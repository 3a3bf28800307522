"""Depth folders: colour frames paired with depth maps, in the layouts people have.

Two layouts, found by looking::

    frames/frame-NNNNNN.color.jpg   RGB-D video as 7-Scenes / TUM-style exports ship it:
    frames/frame-NNNNNN.depth.png   ``<stem>.color.<ext>`` beside ``<stem>.depth.<ext>``
    frames/camera-intrinsics.txt    (optional) 3x3 intrinsics; poses in <stem>.pose.txt

    split/images/NAME.{jpg,png,...} a split folder, as for segmentation:
    split/depth/NAME.{png,tif,tiff,npy}

For self-supervised depth from video, depth is optional (``require_depth=False``) and a
folder of plain frames (``frame_0001.jpg`` ...) is a video too; ``<stem>.pose.txt``
(4x4 camera-to-world) gives known poses.

Depth files: 16-bit PNGs hold millimetres (``scale`` 0.001 m per unit, the Kinect /
7-Scenes / NYU-export convention), float TIFF and ``.npy`` hold metres (``scale`` 1); a
different ``scale`` can be given. 0, the 16-bit maximum (65535, 7-Scenes' "no reading"),
negative and non-finite values are invalid and read as 0. Frames are ordered by stem, so a
``frames="0:800"`` slice is a split by time (neighbouring frames of a video must not be
split at random: they leak).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfsup.data.sources import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
DEPTH_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
INTRINSICS_FILE = "camera-intrinsics.txt"


@dataclass
class DepthSample:
    """``image`` uint8 (3, H, W); ``depth`` float32 (H, W) in metres, 0 where invalid."""

    image: torch.Tensor
    depth: torch.Tensor
    stem: str


def parse_frames(spec: str | None, n: int) -> slice:
    """``"0:800"``, ``"800:"``, ``":200"`` (Python slice syntax over frames in order) or None
    (all) -> a slice; a bad spec raises naming it."""
    if spec is None or spec.strip() in ("", ":"):
        return slice(0, n)
    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo = int(parts[0]) if parts[0].strip() else 0
        hi = int(parts[1]) if parts[1].strip() else n
    except ValueError:
        raise DataError(f"frames {spec!r} is not START:END (e.g. 0:800)") from None
    if not 0 <= lo < hi:
        raise DataError(f"frames {spec!r} selects nothing; give START:END with START < END")
    if lo >= n:
        raise DataError(f"frames {spec!r} starts past the {n} frames there are")
    return slice(lo, min(hi, n))


def read_depth(path: Path, scale: float | None = None) -> np.ndarray:
    """A depth file -> float32 (H, W) metres, 0 where invalid. ``scale``: metres per stored
    unit (default: 0.001 for integer PNGs, 1 for float TIFF / NPY)."""
    try:
        if path.suffix.lower() == ".npy":
            raw = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as img:
                raw = np.asarray(img)
    except Exception as err:
        raise DataError(f"cannot read depth map {path}: {err}. Fix or remove it.") from None
    if raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise DataError(
            f"{path} has shape {raw.shape}; a depth map has one channel (H, W). Colourised "
            "depth pictures cannot be read back: export the raw 16-bit PNG, TIFF or NPY."
        )
    integer = np.issubdtype(raw.dtype, np.integer)
    if integer and raw.dtype.itemsize == 1:
        raise DataError(
            f"{path} is 8-bit: too coarse for depth (256 levels), and likely a picture of "
            "depth rather than depth. Export 16-bit PNG in millimetres or float TIFF/NPY."
        )
    if scale is None:
        scale = 0.001 if integer else 1.0
    depth = raw.astype(np.float64)
    invalid = ~np.isfinite(depth) | (depth <= 0)
    if integer:
        invalid |= raw == np.iinfo(raw.dtype).max
    depth = np.where(invalid, 0.0, depth * scale)
    return depth.astype(np.float32)


def read_intrinsics(path: Path) -> torch.Tensor:
    """A 3x3 intrinsics text file (rows of numbers) -> float32 (3, 3); errors name the file."""
    try:
        k = np.loadtxt(path, dtype=np.float64)
    except Exception as err:
        raise DataError(f"cannot read intrinsics {path}: {err}") from None
    if k.shape != (3, 3) or k[2, 2] == 0 or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise DataError(
            f"{path} holds {k.shape} values; intrinsics are a 3x3 matrix "
            "[[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, one row a line."
        )
    return torch.from_numpy(k / k[2, 2]).float()


def _frames_layout(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    images: dict[str, Path] = {}
    depths: dict[str, Path] = {}
    for p in root.iterdir():
        name = p.name.lower()
        for kind, table, suffixes in (("color", images, IMAGE_SUFFIXES),
                                      ("depth", depths, DEPTH_SUFFIXES)):  # fmt: skip
            for suf in suffixes:
                if name.endswith(f".{kind}{suf}"):
                    table[p.name[: -len(f".{kind}{suf}")]] = p
    return images, depths


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes}


class DepthFolder:
    """Colour frames and their depth (see the module docstring). ``load(i)`` gives a
    :class:`DepthSample`; ``frames`` (``"0:800"``) keeps a slice of the frames in order."""

    def __init__(
        self,
        root: str | Path,
        frames: str | None = None,
        scale: float | None = None,
        require_depth: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"depth folder {self.root} does not exist")
        if (self.root / "images").is_dir():
            if not (self.root / "depth").is_dir():
                raise DataError(
                    f"{self.root} has images/ but no depth/; put the depth maps there with "
                    "the images' stems (16-bit PNG in mm, or float TIFF / NPY in metres)."
                )
            images = _by_stem(self.root / "images", IMAGE_SUFFIXES)
            depths = _by_stem(self.root / "depth", DEPTH_SUFFIXES)
            self.layout = "split"
        else:
            images, depths = _frames_layout(self.root)
            self.layout = "frames"
            if not images and not require_depth:  # plain frames: every image, by name
                images, self.layout = _by_stem(self.root, IMAGE_SUFFIXES), "plain"
        if not images:
            raise DataError(
                f"{self.root} holds no frames: expected <stem>.color.jpg beside "
                "<stem>.depth.png, or images/ and depth/ folders with the same stems."
            )
        missing = sorted(s for s in images if s not in depths)
        if missing and require_depth:
            raise DataError(
                f"{len(missing)} image(s) in {self.root} have no depth map, e.g. "
                f"{images[missing[0]]}; add them or remove the images."
            )
        self.images, self.depths = images, depths
        stems = sorted(images)
        self.all_stems = stems
        self.stems = stems[parse_frames(frames, len(stems))]
        self.scale = scale
        self.intrinsics_file = self.root / INTRINSICS_FILE

    def __len__(self) -> int:
        return len(self.stems)

    def has_depth(self, stem: str) -> bool:
        return stem in self.depths

    def pose(self, stem: str) -> torch.Tensor | None:
        """The 4x4 camera-to-world pose in ``<stem>.pose.txt`` beside the frame, or None."""
        path = self.images[stem].parent / f"{stem}.pose.txt"
        if not path.exists():
            return None
        try:
            m = np.loadtxt(path, dtype=np.float64)
        except Exception as err:
            raise DataError(f"cannot read pose {path}: {err}") from None
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise DataError(f"{path} holds {m.shape} values; a pose is a finite 4x4 matrix.")
        return torch.from_numpy(m).float()

    def index_of(self, stem: str) -> int:
        """Position of ``stem`` among all frames (for neighbours in time)."""
        return self.all_stems.index(stem)

    def load_image(self, stem: str) -> torch.Tensor:
        """uint8 (3, H, W) of frame ``stem``."""
        from selfsup.data.decode import open_file, to_tensor

        path = self.images[stem]
        x = to_tensor(open_file(path), 3, str(path))
        if x.dtype != torch.uint8:
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return x

    def load(self, i: int) -> DepthSample:
        stem = self.stems[i]
        image = self.load_image(stem)
        dpath = self.depths[stem]
        depth = read_depth(dpath, self.scale)
        h, w = int(image.shape[1]), int(image.shape[2])
        if depth.shape != (h, w):
            raise DataError(
                f"{dpath} is {depth.shape[1]}x{depth.shape[0]} (WxH) but its image "
                f"{self.images[stem]} is {w}x{h}; register the depth to the colour image "
                "at its size first."
            )
        return DepthSample(image, torch.from_numpy(depth), stem)

    def subset(self, indices: list[int]) -> DepthFolder:
        out = copy.copy(self)
        out.stems = [self.stems[i] for i in indices]
        return out

    def intrinsics(self) -> torch.Tensor | None:
        """The folder's 3x3 intrinsics (``camera-intrinsics.txt``), or None."""
        return read_intrinsics(self.intrinsics_file) if self.intrinsics_file.exists() else None


def open_depth(
    path: str | Path,
    frames: str | None = None,
    scale: float | None = None,
    require_depth: bool = True,
) -> DepthFolder:
    """Open a depth folder (frames layout or ``images/`` + ``depth/``)."""
    return DepthFolder(path, frames=frames, scale=scale, require_depth=require_depth)
