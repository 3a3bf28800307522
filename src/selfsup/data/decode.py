"""Decode any image file into the tensor layout training uses.

Every supported kind ends as a (channels, H, W) tensor: ``uint8`` for 8-bit data, and
``float32`` in [0, 1] for deeper data (16-bit PNG/TIFF, 32-bit integer images), so that
medical and scientific images keep their precision. Floating-point images are used as
stored (normalise them with ``data.normalize=auto``).

Handled: RGB, grayscale, RGBA/LA (alpha dropped), palette, CMYK, YCbCr, 1-bit, 16-bit and
32-bit grayscale, EXIF-rotated JPEG/TIFF/WebP, multi-channel TIFF (any number of bands,
through ``tifffile``), DICOM frames and NIfTI slices (through :mod:`selfsup.data.medical`,
which documents how their intensities map to [0, 1]), and a decompression-bomb guard.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from selfsup.data import medical
from selfsup.data.sources import DataError

# PIL's own guard (89 megapixels) warns; we refuse above this many pixels per image.
DEFAULT_MAX_PIXELS = 178_956_970
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
TIFF_SUFFIXES = (".tif", ".tiff")


def _guard(width: int, height: int, where: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise DataError(
            f"{where} has {width}x{height} = {width * height:,} pixels, more than the "
            f"decompression-bomb guard allows ({max_pixels:,}). If the image is genuine, "
            "raise data.max_pixels (or downscale the file)."
        )


def open_file(
    path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, index: int = 0
) -> Image.Image | np.ndarray:
    """Read an image file: a PIL image, or an (H, W, C) array for TIFFs PIL cannot hold and
    for DICOM and NIfTI files (``index``: which frame or slice of them)."""
    where = str(path)
    if path.stat().st_size == 0:
        raise DataError(f"{where} is empty (0 bytes)")
    kind = medical.kind_of(path)
    if kind is not None:
        return medical.read(path, kind, index, max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(
                f"{where} is larger than the decompression-bomb guard allows; if the image "
                "is genuine, raise data.max_pixels."
            ) from None
        except Exception as err:
            if path.suffix.lower() in TIFF_SUFFIXES:
                return _read_tiff(path, max_pixels)
            raise DataError(
                f"{where} is not a readable image ({type(err).__name__}: {err})"
            ) from None
        _guard(img.width, img.height, where, max_pixels)
        if path.suffix.lower() in TIFF_SUFFIXES:
            # Multi-band TIFFs (one page per band, or more than 4 samples per pixel) go to
            # tifffile; PIL would return only the first page or a subset of the bands.
            spp = int(img.tag_v2.get(277, 1)) if hasattr(img, "tag_v2") else 1
            ok_mode = img.mode in ("1", "L", "P", "RGB", "RGBA", "CMYK", *HIGH_DEPTH_MODES)
            if getattr(img, "n_frames", 1) > 1 or spp > 4 or not ok_mode:
                img.close()
                return _read_tiff(path, max_pixels)
        try:
            img.load()
        except Exception as err:
            if path.suffix.lower() in TIFF_SUFFIXES:
                return _read_tiff(path, max_pixels)
            raise DataError(
                f"{where} is truncated or corrupt ({type(err).__name__}: {err})"
            ) from None
    return img


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    try:
        import tifffile
    except ImportError:  # pragma: no cover - a dependency
        raise DataError(f"{path} needs the tifffile package: pip install tifffile") from None
    try:
        arr = np.asarray(tifffile.imread(path))
    except Exception as err:
        raise DataError(f"{path} is not a readable TIFF ({type(err).__name__}: {err})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3 and arr.shape[0] <= 16 and arr.shape[-1] > 16:
        arr = arr.transpose(1, 2, 0)  # planar (C, H, W) -> (H, W, C)
    elif arr.ndim != 3:
        raise DataError(
            f"{path} has {arr.ndim} dimensions {arr.shape}; expected a 2-D image with bands"
        )
    _guard(arr.shape[1], arr.shape[0], str(path), max_pixels)
    return arr


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> (C, H, W): uint8 kept, 16-bit to [0, 1], floats as they are."""
    if arr.dtype == np.uint8:
        t = torch.from_numpy(np.array(arr, copy=True, order="C"))
    elif arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.float32) / 65535.0)
    elif arr.dtype.kind in "iu":
        a = arr.astype(np.float32)
        top = float(a.max()) if a.size else 1.0
        t = torch.from_numpy(a / (65535.0 if top <= 65535 else top))
    elif arr.dtype == bool:
        t = torch.from_numpy(arr.astype(np.uint8) * 255)
    else:
        t = torch.from_numpy(np.nan_to_num(arr.astype(np.float32)))
    return t.permute(2, 0, 1).contiguous()


def _match_channels(t: torch.Tensor, channels: int, where: str) -> torch.Tensor:
    c = t.shape[0]
    if c == channels:
        return t
    if c == 1:
        return t.expand(channels, -1, -1).contiguous()
    if channels == 1 and c in (3, 4):
        w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, 1, 1)
        gray = (t[:3].float() * w).sum(0, keepdim=True)
        return gray.round().to(torch.uint8) if t.dtype == torch.uint8 else gray
    if channels == 3 and c == 4:
        return t[:3].contiguous()  # drop alpha
    raise DataError(
        f"{where} has {c} channels but the model takes {channels}. For multi-band images set "
        f"--channels {c} (backbone.in_chans={c}); for colour use 3."
    )


def to_tensor(
    img: Image.Image | np.ndarray, channels: int = 3, where: str = "image"
) -> torch.Tensor:
    """A decoded image -> (channels, H, W) tensor (uint8, or float32 in [0, 1] when deeper)."""
    if isinstance(img, np.ndarray):
        return _match_channels(
            _array_to_tensor(img if img.ndim == 3 else img[:, :, None]), channels, where
        )
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in HIGH_DEPTH_MODES:
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return _match_channels(_array_to_tensor(arr[:, :, None]), channels, where)
    if channels == 1:
        target = "L"
    elif channels == 4 and mode in ("RGBA", "PA", "LA", "P"):
        target = "RGBA"
    else:
        target = "RGB"
    if mode != target:
        if mode in ("P", "PA") and target != "RGBA":
            img = img.convert("RGBA")
        img = img.convert(target)
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return _match_channels(_array_to_tensor(arr), channels, where)
