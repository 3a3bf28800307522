"""A decoded-image cache: every image decoded once into one uint8 file, memory-mapped.

Decoding JPEG/PNG is the largest per-image cost of the data pipeline once augmentation runs
on the device. For data sets that fit on disk as raw pixels, :func:`open_cache` decodes
each image once (in parallel, with a progress bar), optionally shrinking it so its short
side is at most ``cap`` (see :meth:`BatchedViews.decode_cap`: no crop loses detail), and
writes the pixels back to back into ``pixels.u8`` with an index of offsets and shapes.
Training then reads images as views of the memory-mapped file: no decoding, and the
operating system's page cache keeps hot images in memory for every worker at once.

The cache lives in a folder named after a fingerprint of the data (source, file list,
sizes and modification times), the channel count and the cap, so a changed data set or
setting builds a new one. ``meta.json`` is written last: an interrupted build is simply
rebuilt. Unreadable images are recorded as such and raise :class:`DataError` on load, so
the loaders' bad-file policy still applies. Deep images (16-bit, float) are not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from selfsup.data.sources import DataError, ImageSource

FORMAT = 1


def fingerprint(source: ImageSource, channels: int, cap: int) -> str:
    """A short hash of what the cache holds: the items (paths, sizes, modification times
    when they are files), the channel count and the cap."""
    h = hashlib.sha1(f"v{FORMAT}|{source.name}|{len(source)}|{channels}|{cap}".encode())
    path_of = getattr(source, "path", None)  # folders: the file behind an item (or frame)
    for i in range(len(source)):
        where = source.describe(i)
        h.update(where.encode())
        file = str(path_of(i)) if path_of is not None else where
        if os.path.isfile(file):
            st = os.stat(file)
            h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class _Decode(Dataset[tuple[int, np.ndarray | None, str]]):
    def __init__(self, source: ImageSource, channels: int, cap: int) -> None:
        self.source, self.channels, self.cap = source, channels, cap

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        from torchvision.transforms import v2

        from selfsup.data.decode import to_tensor

        try:
            x = to_tensor(self.source.load(i), self.channels, self.source.describe(i))
        except Exception as err:
            return i, None, f"{type(err).__name__}: {err}"
        if x.dtype != torch.uint8:
            return i, None, "deep"
        if self.cap and min(x.shape[-2:]) > self.cap:
            x = v2.functional.resize(x, self.cap, antialias=True)
        return i, x.permute(1, 2, 0).contiguous().numpy(), ""


class CachedSource:
    """An :class:`ImageSource` reading decoded uint8 images from a cache folder."""

    def __init__(self, base: ImageSource, folder: Path) -> None:
        self.base = base
        self.folder = folder
        self.index = np.load(folder / "index.npy")  # (N, 4): offset, height, width, channels
        self.errors: dict[str, str] = json.loads((folder / "meta.json").read_text())["errors"]
        self._pixels: np.memmap | None = None  # opened lazily, once per worker process

    @property
    def labels(self) -> list[int] | None:
        return self.base.labels

    @property
    def classes(self) -> list[str]:
        return self.base.classes

    @property
    def name(self) -> str:
        return self.base.name

    def __len__(self) -> int:
        return len(self.base)

    def describe(self, i: int) -> str:
        return self.base.describe(i)

    def load(self, i: int) -> Image.Image | np.ndarray:
        offset, h, w, c = (int(v) for v in self.index[i])
        if offset < 0 and self.errors.get(str(i)) == "deep":
            return self.base.load(i)  # deep images keep their precision: read the file
        if offset < 0:
            raise DataError(f"{self.describe(i)} could not be read ({self.errors.get(str(i))})")
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r")
        return np.asarray(self._pixels[offset : offset + h * w * c]).reshape(h, w, c)

    def __getstate__(self) -> dict[str, object]:  # memmaps are reopened in each worker
        state = dict(self.__dict__)
        state["_pixels"] = None
        return state


def _remove_stale_builds(folder: Path) -> None:
    """Temp folders of builds on this machine whose process is gone (interrupted runs)."""
    host = socket.gethostname()
    for d in folder.parent.glob(f"{folder.name}.building-{host}-*"):
        try:
            os.kill(int(d.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def open_cache(
    source: ImageSource,
    root: str | Path,
    channels: int,
    cap: int = 0,
    workers: int = 0,
    progress: bool = True,
    build: bool = True,
) -> ImageSource:
    """The cached version of ``source`` under ``root`` (built on first use). Returns
    ``source`` itself, with a message, when the images are deep or do not fit on disk.
    With ``build=False`` (the other ranks of a distributed run) wait for the process that
    builds it instead."""
    root = Path(root).expanduser()
    folder = root / fingerprint(source, channels, cap)
    declined = folder.with_name(folder.name + ".not-cached")
    if not build:
        # Other ranks wait for rank 0's build (a file-system wait: no collective timeout).
        waited = 0.0
        while not (folder / "meta.json").exists() and not declined.exists():
            time.sleep(1.0)
            waited += 1.0
            if waited % 300 == 0:
                tqdm.write(f"data.cache: still waiting for rank 0 to build {folder}")
        return CachedSource(source, folder) if (folder / "meta.json").exists() else source
    if (folder / "meta.json").exists():
        return CachedSource(source, folder)
    root.mkdir(parents=True, exist_ok=True)
    declined.unlink(missing_ok=True)
    _remove_stale_builds(folder)
    # One builder per machine may run at once on a shared file system: private temp names.
    tmp = folder.with_name(f"{folder.name}.building-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    n = len(source)
    # Estimate the size from a few images before writing anything.
    probe = _Decode(source, channels, cap)
    sample = [probe[i][1] for i in range(0, n, max(1, n // 16))][:16]
    sizes = [a.nbytes for a in sample if a is not None]
    if any(probe[i][2] == "deep" for i in range(min(n, 4))):
        shutil.rmtree(tmp, ignore_errors=True)
        declined.write_text("deep images\n")
        tqdm.write(
            "data.cache: deep (16-bit or float) images are read from their files, not cached."
        )
        return source
    estimate = int(np.mean(sizes) * n) if sizes else 0
    free = shutil.disk_usage(tmp).free
    if estimate > 0.9 * free:
        shutil.rmtree(tmp, ignore_errors=True)
        declined.write_text("not enough disk\n")
        tqdm.write(
            f"data.cache: the decoded images need about {estimate / 2**30:.1f} GiB, more than "
            f"the {free / 2**30:.1f} GiB free under {root}; reading the files instead. Point "
            "data.cache at a larger disk, or lower data.image_size."
        )
        return source
    index = np.full((n, 4), -1, dtype=np.int64)
    errors: dict[str, str] = {}
    offset = 0
    loader = DataLoader(probe, batch_size=None, shuffle=False, num_workers=workers)
    with open(tmp / "pixels.u8", "wb") as f:
        for i, arr, err in tqdm(loader, total=n, desc="decoding into cache", disable=not progress,
                                unit="img", mininterval=1.0):  # fmt: skip
            if arr is None:
                errors[str(i)] = err
                continue
            a = np.asarray(arr)
            f.write(a.tobytes())
            index[i] = (offset, *a.shape)
            offset += a.nbytes
    np.save(tmp / "index.npy", index)
    meta = {"format": FORMAT, "source": source.name, "images": n, "bytes": offset,
            "channels": channels, "cap": cap, "errors": errors}  # fmt: skip
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        tmp.rename(folder)
    except OSError:  # another machine finished first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    tqdm.write(f"data.cache: {n} images decoded once into {folder} ({offset / 2**20:.0f} MiB)")
    return CachedSource(source, folder)
