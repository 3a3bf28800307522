"""``selfsup data check``: scan a folder of images once, in parallel, and report what is there.

The report counts files, formats, colour modes, bit depths, channel counts and sizes; lists
unreadable files and exact duplicates; and computes per-channel mean and standard deviation
of the pixels as training will see them (after conversion to ``channels``), so that
``data.normalize=auto`` can reuse them. DICOM and NIfTI files count every frame or slice
(``samples``), and a ``medical`` section lists their modalities, photometric
interpretations, transfer syntaxes, the compressed files that need a decoder (with the fix)
and DICOM objects that hold no image. ``grey`` says that every image is grey, so that
one input channel would do.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from selfsup.data import medical
from selfsup.data.decode import DEFAULT_MAX_PIXELS, open_file, to_tensor
from selfsup.data.sources import DataError, ImageSource, scan_folder

REPORT_VERSION = 1


def _bits(img: Image.Image | np.ndarray) -> str:
    if isinstance(img, np.ndarray):
        return f"{img.dtype.itemsize * 8}{'f' if img.dtype.kind == 'f' else ''}"
    return {"1": "1", "I;16": "16", "I;16B": "16", "I;16L": "16", "I": "32", "F": "32f"}.get(
        img.mode, "8"
    )


def _add_stats(out: dict[str, Any], tensors: Iterable[torch.Tensor]) -> None:
    """Per-channel sums, sums of squares and pixel count over the samples of one file; the
    size of its first sample; whether it is grey (one native channel, or equal channels)."""
    s = ss = None
    pixels = 0
    equal = out.get("native_channels") != 1  # grey by content: still to be seen
    for raw in tensors:
        if s is None:
            out["height"], out["width"] = int(raw.shape[1]), int(raw.shape[2])
        t = raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()
        flat = t.reshape(t.shape[0], -1).double()
        s = flat.sum(1) if s is None else s + flat.sum(1)
        ss = (flat * flat).sum(1) if ss is None else ss + (flat * flat).sum(1)
        pixels += int(flat.shape[1])
        if equal:
            equal = flat.shape[0] > 1 and bool((flat == flat[:1]).all())
    if s is None or ss is None:
        raise DataError(f"{out['file']} holds no image")
    grey = out.get("native_channels") == 1 or equal
    out.update(sum=s.tolist(), sumsq=ss.tolist(), pixels=pixels, grey=grey)


def _inspect_medical(p: Path, kind: str, channels: int, max_pixels: int,
                     out: dict[str, Any]) -> None:  # fmt: skip
    out["kind"] = kind
    out.update(medical.dicom_info(p) if kind == "dicom" else medical.nifti_info(p))
    dims = medical.sample_dims(p, kind)
    if dims is None:
        out["samples"] = 0
        out["not_image"] = f"{out.get('sop_class', 'a DICOM object')} (no pixel data)"
        raise DataError(f"{p} holds no image: {out['not_image']}")
    out["samples"] = math.prod(dims)
    samples = medical.iter_samples(p, kind, max_pixels)
    _add_stats(out, (to_tensor(a, channels, str(p)) for a in samples))


def inspect_file(args: tuple[str, int, int]) -> dict[str, Any]:
    """Everything the report needs about one file (runs in a worker process)."""
    path, channels, max_pixels = args
    p = Path(path)
    out: dict[str, Any] = {"file": path, "bytes": p.stat().st_size, "samples": 1}
    try:
        out["md5"] = hashlib.md5(p.read_bytes()).hexdigest()
        kind = medical.kind_of(p)
        if kind is not None:
            _inspect_medical(p, kind, channels, max_pixels, out)
            out["ok"] = True
            return out
        img = open_file(p, max_pixels)
        if isinstance(img, np.ndarray):
            out.update(format="TIFF", mode=f"{img.shape[2]}-band", width=img.shape[1],
                       height=img.shape[0], native_channels=int(img.shape[2]))  # fmt: skip
        else:
            out.update(format=img.format or p.suffix.lstrip(".").upper(), mode=img.mode,
                       width=img.width, height=img.height, native_channels=len(img.getbands()))  # fmt: skip
        out["bits"] = _bits(img)
        _add_stats(out, [to_tensor(img, channels, path)])  # sizes after EXIF rotation
        out["ok"] = True
    except Exception as err:  # every failure is reported, none stops the scan
        out["ok"] = False
        out["error"] = f"{type(err).__name__}: {err}"
        if isinstance(err, medical.CompressedPixelsError):
            out["undecodable"] = {"transfer_syntax": err.syntax, "fix": err.fix,
                                  "decoder_missing": err.missing}  # fmt: skip
    return out


def _dist(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {
        "min": int(a.min()),
        "p5": float(np.percentile(a, 5)),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
    }


def check_folder(
    path: str | Path,
    channels: int = 3,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """Scan every image under ``path`` and return the report (a JSON-ready dict)."""
    t0 = time.perf_counter()
    source = scan_folder(path)
    files = [str(source.path(i)) for i in range(len(source))]
    workers = workers or min(8, os.cpu_count() or 1)
    chunk = max(1, len(files) // (workers * 16))
    jobs = [(f, channels, max_pixels) for f in files]
    if workers > 1 and len(files) > 64:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(inspect_file, jobs, chunksize=chunk))
    else:
        rows = [inspect_file(j) for j in jobs]
    good = [r for r in rows if r["ok"]]
    bad = [r for r in rows if not r["ok"] and "not_image" not in r]
    s = np.zeros(channels)
    ss = np.zeros(channels)
    n = 0
    for r in good:
        s += np.asarray(r["sum"])
        ss += np.asarray(r["sumsq"])
        n += r["pixels"]
    mean = (s / max(n, 1)).tolist()
    std = np.sqrt(np.maximum(ss / max(n, 1) - (s / max(n, 1)) ** 2, 1e-12)).tolist()
    by_hash: dict[str, list[str]] = {}
    for r in rows:
        if "md5" in r:
            by_hash.setdefault(r["md5"], []).append(r["file"])
    dups = [sorted(v) for v in by_hash.values() if len(v) > 1]
    return {
        "version": REPORT_VERSION,
        "path": str(Path(path).resolve()),
        "files": len(rows),
        "samples": sum(r["samples"] for r in rows),
        "readable": len(good),
        "unreadable": [{"file": r["file"], "error": r["error"]} for r in bad],
        "labelled": source.labels is not None,
        "classes": {
            c: sum(1 for t in (source.labels or []) if t == i) for i, c in enumerate(source.classes)
        },
        "formats": dict(Counter(r["format"] for r in good)),
        "modes": dict(Counter(r["mode"] for r in good)),
        "bit_depths": dict(Counter(r["bits"] for r in good)),
        "native_channels": dict(Counter(str(r["native_channels"]) for r in good)),
        "width": _dist([r["width"] for r in good]),
        "height": _dist([r["height"] for r in good]),
        "bytes": _dist([r["bytes"] for r in rows]),
        "duplicates": dups,
        "duplicate_files": sum(len(d) - 1 for d in dups),
        "channels": channels,
        "mean": mean,
        "std": std,
        "grey": bool(good) and all(r["grey"] for r in good),
        **({"medical": _medical_summary(rows)} if any("kind" in r for r in rows) else {}),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _medical_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The DICOM / NIfTI part of the report (header facts count unreadable files too)."""
    dcm = [r for r in rows if r.get("kind") == "dicom"]
    nii = [r for r in rows if r.get("kind") == "nifti"]
    images = [r for r in dcm if "not_image" not in r]

    def count(rs: list[dict[str, Any]], key: str) -> dict[str, int]:
        return dict(Counter(str(r[key]) for r in rs if key in r))

    return {
        "dicom_files": len(dcm),
        "nifti_files": len(nii),
        "frames": sum(r["samples"] for r in dcm),
        "slices": sum(r["samples"] for r in nii),
        "multi_sample_files": sum(1 for r in dcm + nii if r["samples"] > 1),
        "bit_depths": count(images + nii, "bits"),
        "photometric": count(images, "mode"),
        "modalities": count(images, "modality"),
        "transfer_syntaxes": count(images, "transfer_syntax"),
        "undecodable": [
            {"file": r["file"], **r["undecodable"]} for r in rows if "undecodable" in r
        ],
        "not_images": [
            {"file": r["file"], "what": r["not_image"]} for r in dcm if "not_image" in r
        ],
    }


def report_cache_path(path: str | Path) -> Path:
    """Where ``data check`` keeps the report of ``path`` for ``data.normalize=auto``."""
    from selfsup.data.sources import default_data_root

    key = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return default_data_root().parent / "reports" / f"{key}.json"


def save_report(report: dict[str, Any], out: str | Path | None) -> list[Path]:
    """Write the report to ``out`` (if given) and to the cache; return the paths written."""
    text = json.dumps(report, indent=2)
    written = []
    for p in ([Path(out)] if out else []) + [report_cache_path(report["path"])]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        written.append(p)
    return written


def cached_stats(
    path: str | Path, channels: int, files: int
) -> tuple[list[float], list[float]] | None:
    """Mean and std from a cached ``data check`` report, if it matches the folder now."""
    p = report_cache_path(path)
    if not p.is_file():
        return None
    try:
        r = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    # ``files`` is the size of the source: files, or frames and slices (``samples``).
    if r.get("version") != REPORT_VERSION or files not in (r.get("files"), r.get("samples")):
        return None
    if r.get("channels") == channels:
        return list(r["mean"]), list(r["std"])
    if r.get("grey") and {channels, r.get("channels")} <= {1, 3}:
        # Grey images: one channel, or three equal ones, hold the same values.
        return [r["mean"][0]] * channels, [r["std"][0]] * channels
    return None


def sample_stats(
    source: ImageSource, channels: int, samples: int = 2000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of up to ``samples`` images (unreadable ones skipped)."""
    import random

    idx = list(range(len(source)))
    random.Random(seed).shuffle(idx)
    s = torch.zeros(channels, dtype=torch.float64)
    ss = torch.zeros(channels, dtype=torch.float64)
    n = 0
    for i in idx[:samples]:
        try:
            raw = to_tensor(source.load(i), channels, source.describe(i))
        except Exception:  # bad files are the loader's business
            continue
        t = (raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()).double()
        flat = t.reshape(channels, -1)
        s += flat.sum(1)
        ss += (flat * flat).sum(1)
        n += flat.shape[1]
    if n == 0:
        raise DataError(f"could not read any image of {source.name} to compute statistics")
    mean = s / n
    std = (ss / n - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
