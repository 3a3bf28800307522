"""DICOM and NIfTI files as 2-D images, in the layout :mod:`selfsup.data.decode` gives.

One file may hold several images: each frame of a multi-frame DICOM and each 2-D slice of a
NIfTI volume is one sample (index ``k``, counted from 0). Counting them reads headers only.

Intensities (grey data ends as float32 in [0, 1], shape (H, W, 1)):

* DICOM: stored values -> modality LUT (Rescale Slope/Intercept, or a Modality LUT
  Sequence) -> the first VOI transform when the file has one (Window Center/Width with its
  VOI LUT Function, or a VOI LUT Sequence), mapped from its output range to [0, 1];
  without one, the whole range the bit depth can store (Bits Stored, Pixel Representation)
  passed through the modality LUT maps to [0, 1]. Never per-image min-max: every file of a
  series gets the same mapping, so intensities stay comparable. Enhanced multi-frame files
  take rescale and window from their shared / per-frame functional groups. MONOCHROME1 is
  inverted (high values bright, as in MONOCHROME2). 8-bit unsigned grey data with no
  rescale or window stays uint8, as an 8-bit PNG would; colour (RGB, YBR converted to RGB,
  PALETTE COLOR) stays colour: uint8 for 8-bit, else float32 over the bit depth.
* NIfTI: sliced along the third voxel axis (axial for the usual RAS/LAS-stored volumes);
  each slice is ``np.rot90(volume[:, :, k])``, i.e. shown as ``imshow(slice.T,
  origin="lower")`` (anterior up for RAS volumes). 4-D volumes give slice-major samples
  (``k = t * slices + z``). Values (after the header's scl_slope/inter) map linearly from
  the volume's 0.5-99.5 percentiles to [0, 1], clipped; the percentiles are computed once
  per volume and process, and cached.

pydicom (>= 3) and nibabel are optional: ``pip install "selfsup[medical]"``. Compressed
DICOM (JPEG, JPEG-LS, JPEG 2000) may need decoders pydicom lacks; such files raise a
:class:`CompressedPixelsError` that says what to install.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from selfsup.data.sources import DICOM_EXTENSIONS, NIFTI_EXTENSIONS, DataError

INSTALL_MEDICAL = 'pip install "selfsup[medical]"'
INSTALL_DECODERS = (
    "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or: pip install python-gdcm)"
)
# NIfTI intensities: the volume's robust range.
NIFTI_PERCENTILES = (0.5, 99.5)
# A NIfTI volume read whole is kept (one per process) up to this size, so that reading its
# slices in order (evaluation, data check) decodes it once.
KEEP_VOLUME_BYTES = 512 * 2**20


class MissingPackageError(DataError):
    """pydicom or nibabel is not installed: a setup problem, not a bad file."""


class CompressedPixelsError(DataError):
    """Compressed DICOM pixel data that could not be decoded (no decoder, or it failed)."""

    def __init__(self, message: str, syntax: str, missing: bool) -> None:
        super().__init__(message)
        self.syntax = syntax
        self.missing = missing
        self.fix = INSTALL_DECODERS


# ------------------------------------------------------------------------- which files


def dicom_candidate(name: str) -> bool:
    """A name DICOM exports use without a .dcm extension: none (``IM0001``) or a number
    (UID-like ``1.2.840.113619.2.1``). DICOMDIR indexes images, it is not one."""
    if name.startswith(".") or name.upper() == "DICOMDIR":
        return False
    suffix = os.path.splitext(name)[1]
    return suffix == "" or suffix[1:].isdigit()


def has_dicm_preamble(path: Path) -> bool:
    """True when the file has the DICOM Part 10 preamble: 128 bytes, then ``DICM``."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def kind_of(path: Path) -> str | None:
    """``"dicom"``, ``"nifti"`` or None (not a medical file), from the name and, for names
    without an image extension, the DICOM preamble."""
    name = path.name.lower()
    if name.endswith(DICOM_EXTENSIONS):
        return "dicom"
    if name.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    if dicom_candidate(path.name) and has_dicm_preamble(path):
        return "dicom"
    return None


def _pydicom(path: Path) -> ModuleType:
    try:
        import pydicom
        import pydicom.pixels  # pydicom >= 3
    except ImportError:
        raise MissingPackageError(
            f"{path} is a DICOM file; reading it needs pydicom 3 or newer: {INSTALL_MEDICAL}"
        ) from None
    return pydicom


def _nibabel(path: Path) -> ModuleType:
    try:
        import nibabel
    except ImportError:
        raise MissingPackageError(
            f"{path} is a NIfTI file; reading it needs nibabel: {INSTALL_MEDICAL}"
        ) from None
    return nibabel


# ------------------------------------------------------------------------------ headers


def read_header(path: Path, tags: list[str] | None = None) -> Any:
    """The DICOM data set without its pixel data (only ``tags`` when given: scanning a large
    folder reads just what it counts)."""
    pydicom = _pydicom(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=tags)
    except Exception as err:
        raise DataError(
            f"{path} is not a readable DICOM file ({type(err).__name__}: {err})"
        ) from None


def _load_nifti(path: Path) -> Any:
    nib = _nibabel(path)
    try:
        return nib.load(str(path))  # lazy: the header now, voxels on demand
    except Exception as err:
        raise DataError(
            f"{path} is not a readable NIfTI file ({type(err).__name__}: {err})"
        ) from None


def sample_dims(path: Path, kind: str) -> tuple[int, ...] | None:
    """The axes that index the file's 2-D samples, from the header: ``()`` for one image,
    ``(frames,)`` for multi-frame DICOM, ``(slices[, volumes...])`` for NIfTI; None for a
    DICOM object that holds no image (a report, a presentation state)."""
    if kind == "nifti":
        shape = tuple(int(s) for s in _load_nifti(path).shape)
        dims = shape[2:]
        return () if math.prod(dims) <= 1 else dims
    ds = read_header(path, ["Rows", "Columns", "NumberOfFrames"])
    if "Rows" not in ds or "Columns" not in ds:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return (frames,) if frames > 1 else ()


def sample_name(kind: str, dims: tuple[int, ...], k: int) -> str:
    """How sample ``k`` of a file is named: ``frame 3``, ``slice 12``, ``slice 12, volume 2``."""
    if kind == "dicom":
        return f"frame {k}"
    pos = np.unravel_index(k, dims, order="F")
    names = ["slice", "volume"] + [f"axis {d + 5}" for d in range(len(dims) - 2)]
    return ", ".join(f"{n} {int(p)}" for n, p in zip(names, pos, strict=False))


def image_size(path: Path, kind: str) -> tuple[int, int]:
    """(height, width) of one sample, from the header."""
    if kind == "nifti":
        shape = _load_nifti(path).shape
        return int(shape[1]) if len(shape) > 1 else 1, int(shape[0])
    ds = read_header(path, ["Rows", "Columns"])
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path} holds no image (no Rows / Columns in its header)")
    return int(ds.Rows), int(ds.Columns)


def _guard(h: int, w: int, path: Path, max_pixels: int) -> None:
    if h * w > max_pixels:
        raise DataError(
            f"{path} has {w}x{h} = {h * w:,} pixels a frame, more than the decompression-bomb "
            f"guard allows ({max_pixels:,}). If the image is genuine, raise data.max_pixels."
        )


def read(path: Path, kind: str, index: int, max_pixels: int) -> np.ndarray:
    """Sample ``index`` of a DICOM or NIfTI file as (H, W, C): uint8, or float32 in [0, 1]."""
    if kind == "nifti":
        return _nifti_slice(path, index, max_pixels)
    ds = read_header(path)
    _guard(int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), path, max_pixels)
    return to_unit(_decode(path, ds, index), _frame_view(ds, index), path)


def iter_samples(path: Path, kind: str, max_pixels: int) -> Iterator[np.ndarray]:
    """Every sample of a file, in order, as :func:`read` gives them (headers and volumes
    read once)."""
    if kind == "nifti":
        img = _load_nifti(path)
        vol = _volume(img, path)
        _check_plane(vol.shape, path, max_pixels)
        lo, hi = _robust_range(vol)
        planes = vol.reshape(vol.shape[0], vol.shape[1], -1, order="F")
        for k in range(planes.shape[2]):
            yield _unit_plane(planes[:, :, k], lo, hi)
        return
    ds = read_header(path)
    _guard(int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), path, max_pixels)
    for k in range(int(ds.get("NumberOfFrames", 1) or 1)):
        yield to_unit(_decode(path, ds, k), _frame_view(ds, k), path)


# ------------------------------------------------------------------------------- DICOM


def _transfer_syntax(ds: Any) -> Any:
    from pydicom import uid

    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if ts:
        return uid.UID(ts)
    # A bare data set (no Part 10 header): the encoding pydicom found when reading it.
    implicit, little = ds.original_encoding
    if implicit:
        return uid.ImplicitVRLittleEndian
    return uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian


def _decode(path: Path, ds: Any, index: int) -> np.ndarray:
    """Stored values of frame ``index`` (only that frame is read and decoded)."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.pixels.utils import pixel_array

    ts = _transfer_syntax(ds)
    syntax = f"{ts.name} ({ts})"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= index < frames:
        raise DataError(f"{path} has {frames} frames; frame {index} does not exist")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DataError(
            f"{path} uses the transfer syntax {syntax}, which pydicom cannot decode. "
            "Convert it to an uncompressed syntax (e.g. gdcmconv --raw, or dcmdjpeg)."
        ) from None
    if ts.is_compressed and not decoder.is_available:
        raise CompressedPixelsError(
            f"{path} holds {syntax} compressed pixel data and pydicom has no decoder for it "
            f"installed. Install one: {INSTALL_DECODERS}.",
            syntax,
            missing=True,
        )
    try:
        return np.asarray(pixel_array(path, index=index, transfer_syntax_uid=ts))
    except Exception as err:
        if ts.is_compressed:
            raise CompressedPixelsError(
                f"{path}: its {syntax} pixel data could not be decoded "
                f"({type(err).__name__}: {err}). The file may be corrupt, or the installed "
                f"decoder may not handle it; another one may: {INSTALL_DECODERS}.",
                syntax,
                missing=False,
            ) from None
        raise DataError(
            f"{path}: its pixel data could not be read ({type(err).__name__}: {err}); the "
            "file may be truncated or corrupt."
        ) from None


_IMAGE_KEYWORDS = (
    "PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
)  # fmt: skip
# Enhanced multi-frame files keep rescale and window in functional groups.
_GROUP_ITEMS = (("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
                ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")))  # fmt: skip


def _frame_view(ds: Any, index: int) -> Any:
    """A small data set with what maps frame ``index`` to intensities: the image pixel,
    modality LUT and VOI LUT elements, overlaid by the shared then the per-frame functional
    groups (pydicom's LUT functions read only top-level elements, and modify what they get)."""
    from pydicom.dataset import Dataset

    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # the endianness of OW lookup tables
    for kw in _IMAGE_KEYWORDS:
        if kw in ds:
            setattr(view, kw, ds[kw].value)
    groups = [ds.get("SharedFunctionalGroupsSequence")]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append([per_frame[index]])
    for group in groups:
        if not group:
            continue
        for seq, keywords in _GROUP_ITEMS:
            items = group[0].get(seq)
            for kw in keywords:
                if items and kw in items[0]:
                    setattr(view, kw, items[0][kw].value)
    return view


def _stored_range(view: Any, raw: np.ndarray) -> tuple[float, float]:
    bits = int(view.get("BitsStored", raw.dtype.itemsize * 8))
    if int(view.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _modality_range(view: Any, raw: np.ndarray) -> tuple[float, float]:
    """The output range of the modality LUT over every storable value, in the order pydicom's
    windowing uses (not sorted when the slope is negative)."""
    if view.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(view.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    lo, hi = _stored_range(view, raw)
    if "RescaleSlope" in view and "RescaleIntercept" in view:
        slope, intercept = float(view.RescaleSlope), float(view.RescaleIntercept)
        return lo * slope + intercept, hi * slope + intercept
    return lo, hi


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros(values.shape, np.float32)
    out = (values.astype(np.float64) - lo) / (hi - lo)
    return np.clip(np.nan_to_num(out), 0.0, 1.0).astype(np.float32)


def _plain(view: Any, window: bool) -> bool:
    """No modality or VOI transform: the stored values are the intensities."""
    if window or view.get("VOILUTSequence") or view.get("ModalityLUTSequence"):
        return False
    slope, intercept = view.get("RescaleSlope"), view.get("RescaleIntercept")
    return (slope is None or float(slope) == 1.0) and (intercept is None or float(intercept) == 0)


def to_unit(raw: np.ndarray, view: Any, path: Path) -> np.ndarray:
    """Stored values of one frame -> (H, W, C) as training reads them (see the module doc)."""
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    pi = str(view.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if int(view.get("SamplesPerPixel", 1)) > 1 or pi == "PALETTE COLOR":
        return _colour(raw, view, pi, path)
    if raw.ndim != 2:
        raise DataError(f"{path}: expected one grey frame, got pixel data of shape {raw.shape}")
    window = "WindowCenter" in view and "WindowWidth" in view
    if raw.dtype == np.uint8 and int(view.get("BitsStored", 8)) == 8 and _plain(view, window):
        grey = 255 - raw if pi == "MONOCHROME1" else raw
        return np.ascontiguousarray(grey)[:, :, None]
    if raw.dtype.kind == "f":  # float pixel data has no bit depth: its own range
        values = raw.astype(np.float64)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        unit = _scale(values, lo, hi)
    else:
        try:
            values = apply_modality_lut(raw, view)
            if view.get("VOILUTSequence"):
                if np.array_equal(values, np.round(values)):
                    values = values.astype(np.int64)  # a lookup table takes integers
                out = apply_voi_lut(values, view, index=0)
                lo, hi = 0.0, 2.0 ** int(view.VOILUTSequence[0].LUTDescriptor[2]) - 1
            elif window:
                out = apply_voi_lut(values, view, index=0)
                lo, hi = _modality_range(view, raw)  # the range pydicom's windowing outputs
            else:
                out = values
                lo, hi = sorted(_modality_range(view, raw))
        except Exception as err:
            raise DataError(
                f"{path}: its rescale or window could not be applied "
                f"({type(err).__name__}: {err}); check Rescale Slope/Intercept and "
                "Window Center/Width."
            ) from None
        unit = _scale(np.asarray(out), lo, hi)
    if pi == "MONOCHROME1":
        unit = 1.0 - unit
    return unit[:, :, None]


def _colour(raw: np.ndarray, view: Any, pi: str, path: Path) -> np.ndarray:
    """RGB (pydicom converts YBR to RGB), or PALETTE COLOR through its lookup tables."""
    if pi == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        try:
            raw = np.asarray(apply_color_lut(raw, view))
        except Exception as err:
            raise DataError(
                f"{path}: its palette could not be applied ({type(err).__name__}: {err})"
            ) from None
        bits = 8 if raw.dtype == np.uint8 else 16
    else:
        bits = int(view.get("BitsStored", raw.dtype.itemsize * 8))
    if raw.ndim != 3 or raw.shape[2] != 3:
        raise DataError(f"{path}: expected a colour frame (H, W, 3), got shape {raw.shape}")
    if raw.dtype == np.uint8 and bits == 8:
        return np.ascontiguousarray(raw)
    return _scale(raw, 0.0, 2.0**bits - 1)


def dicom_info(path: Path) -> dict[str, Any]:
    """What ``data check`` reports about a DICOM file, from its header."""
    ds = read_header(path)
    ts = _transfer_syntax(ds)
    return {
        "format": "DICOM",
        "mode": str(ds.get("PhotometricInterpretation", "?")).strip(),
        "bits": str(ds.get("BitsStored", "?")),
        "native_channels": int(ds.get("SamplesPerPixel", 1)),
        "modality": str(ds.get("Modality", "") or "?"),
        "sop_class": str(getattr(ds.get("SOPClassUID"), "name", "") or "a DICOM object"),
        "transfer_syntax": ts.name,
        "compressed": bool(ts.is_compressed),
    }


# ------------------------------------------------------------------------------- NIfTI

_RANGES: dict[tuple[str, int, int], tuple[float, float]] = {}
_LAST: dict[tuple[str, int, int], np.ndarray] = {}  # the last volume read whole


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _volume(img: Any, path: Path) -> np.ndarray:
    try:
        return np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as err:
        raise DataError(
            f"{path}: its voxels could not be read as numbers ({type(err).__name__}: {err}); "
            "only scalar volumes are read (not RGB or complex ones)."
        ) from None


def _robust_range(vol: np.ndarray) -> tuple[float, float]:
    finite = vol[np.isfinite(vol)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, NIFTI_PERCENTILES)
    return float(lo), float(hi)


def _unit_plane(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(_scale(plane, lo, hi)))[:, :, None]


def _check_plane(shape: tuple[int, ...], path: Path, max_pixels: int) -> None:
    if len(shape) < 2:
        raise DataError(f"{path} holds a {len(shape)}-D array {shape}; expected 2-D slices")
    _guard(int(shape[1]), int(shape[0]), path, max_pixels)


def _nifti_slice(path: Path, index: int, max_pixels: int) -> np.ndarray:
    img = _load_nifti(path)
    shape = tuple(int(s) for s in img.shape)
    _check_plane(shape, path, max_pixels)
    n = math.prod(shape[2:])
    if not 0 <= index < n:
        raise DataError(f"{path} has {n} slices; slice {index} does not exist")
    pos = tuple(int(p) for p in np.unravel_index(index, shape[2:], order="F"))
    where: tuple[slice | int, ...] = (slice(None), slice(None), *pos)
    key = _key(path)
    if key in _LAST:
        plane = _LAST[key][where]
    elif key in _RANGES and not path.name.lower().endswith(".gz"):
        # Uncompressed: nibabel reads just this slice (gzip would decompress up to it).
        plane = np.asarray(img.dataobj[where], dtype=np.float32)
    else:
        vol = _volume(img, path)
        _RANGES[key] = _robust_range(vol)
        _LAST.clear()
        if vol.nbytes <= KEEP_VOLUME_BYTES:
            _LAST[key] = vol
        plane = vol[where]
    return _unit_plane(plane, *_RANGES[key])


def nifti_info(path: Path) -> dict[str, Any]:
    """What ``data check`` reports about a NIfTI file, from its header."""
    img = _load_nifti(path)
    dtype = np.dtype(img.get_data_dtype())
    bits = f"{dtype.itemsize * 8}{'f' if dtype.kind == 'f' else ''}"
    return {
        "format": "NIfTI",
        "mode": f"{len(img.shape)}-D {dtype.name}",
        "bits": bits,
        "native_channels": 1,
        "modality": "?",
    }
