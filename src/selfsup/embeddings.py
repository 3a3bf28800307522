"""``selfsup embed``: one embedding per image, streamed to a Parquet or ``.npy`` file.

Features are computed batch by batch under the run's own evaluation transform and written
as they come, so memory stays bounded however large the folder is:

* ``.parquet``: one row per readable image with ``index`` (position in the folder scan),
  ``path``, ``label`` and ``class`` (null when the folder has no class sub-folders) and
  ``embedding`` as a fixed-size ``list<float32>``; one row group per batch, written with
  :class:`pyarrow.parquet.ParquetWriter`. The schema metadata ``selfsup`` holds the
  checkpoint, data, image size, dimension and class names as JSON.
* ``.npy``: the ``(N, D)`` float32 matrix written through a memory-mapped file, with
  ``<name>.paths.txt`` (one path a line, in row order) and, for labelled folders,
  ``<name>.labels.txt`` (``<class index>\\t<class name>`` a line).

Files appear only when complete (written under a temporary name, then renamed).
Unreadable images are skipped with a warning, so rows may be fewer than files.

A folder of videos (files or frame folders, :mod:`selfsup.data.video`) gives one row per
video: its clips' frames through the backbone, averaged (the clip feature of ``selfsup eval
video``).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup import config as C
from selfsup.config import Config, ConfigError
from selfsup.data import EvalDataset, ImageSource, auto_image_size, open_source, subset
from selfsup.data.sources import DataError
from selfsup.eval.features import FeatureBatch, stream_features
from selfsup.methods.base import Method
from selfsup.runs import load_run
from selfsup.runtime import device_and_precision
from selfsup.transforms import eval_transform

FORMATS = (".parquet", ".npy")


@dataclass
class FeatureModel:
    """A feature network with the input it expects (size, normalisation, channels)."""

    net: nn.Module
    image_size: int
    mean: list[float]
    std: list[float]
    channels: int
    name: str
    # Frames between a clip's frames for a video backbone: the run's own (videomae's
    # method.clip_stride, else data.clip_stride), 4 without a run.
    clip_stride: int = 4


def feature_model(
    model: str | Path | Method | nn.Module,
    source: ImageSource | None,
    image_size: int | None = None,
    random_init: bool = False,
) -> FeatureModel:
    """The feature network of a run folder, checkpoint file, Method or plain ``nn.Module``.

    A run brings its own image size and normalisation; other models use ``image_size`` (or
    the images' own size up to 64 px, else 224) and ImageNet statistics.
    ``random_init=True`` keeps a run's architecture with its initial, untrained weights.
    """
    cfg: Config | None = None
    if isinstance(model, str | Path):
        loaded = load_run(model, random_init)
        cfg = loaded.config
        net = loaded.method.feature_extractor()
        name = str(loaded.file)
    elif isinstance(model, Method):
        net, name = model.feature_extractor(), type(model).__name__
    else:
        net, name = model, type(model).__name__
    size = image_size or (cfg.data.image_size if cfg else None)
    if size is None:  # the images' own size up to 64 px, else 224 (and 224 without images)
        size = auto_image_size(source) if source is not None else 224
    return FeatureModel(
        net=net,
        image_size=size,
        mean=list(cfg.data.mean) if cfg else list(C.IMAGENET_MEAN),
        std=list(cfg.data.std) if cfg else list(C.IMAGENET_STD),
        channels=cfg.backbone.in_chans if cfg else 3,
        name=name + (" (random init)" if random_init else ""),
        clip_stride=_clip_stride(cfg) if cfg else 4,
    )


def _clip_stride(cfg: Config) -> int:
    """A run's frames between clip frames: videomae's method.clip_stride, else data's."""
    return int(getattr(cfg.method, "clip_stride", None) or cfg.data.clip_stride)


def open_data(
    data: str | Path | ImageSource, split: str = "train", data_root: str | None = None
) -> ImageSource:
    """A folder path or a named set (its ``split``), or an :class:`ImageSource` as it is."""
    if isinstance(data, str | Path):
        return open_source(str(data), split=split, root=data_root)
    return data


check_device_precision = device_and_precision


# ----------------------------------------------------------------------------- writers


class _Sink:
    """Receives batches of rows; ``finish`` makes the file appear, ``abort`` leaves none."""

    def write(self, batch: FeatureBatch, paths: list[str], classes: list[str]) -> None:
        raise NotImplementedError

    def finish(self) -> int:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


class _ParquetSink(_Sink):
    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path, self.tmp, self.metadata = path, _partial(path), metadata
        self.writer: Any = None
        self.rows = 0

    def write(self, batch: FeatureBatch, paths: list[str], classes: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n, dim = batch.features.shape
        if self.writer is None:
            schema = pa.schema(
                [
                    ("index", pa.int64()),
                    ("path", pa.string()),
                    ("label", pa.int32()),
                    ("class", pa.string()),
                    ("embedding", pa.list_(pa.float32(), dim)),
                ],
                metadata={"selfsup": json.dumps({**self.metadata, "dim": dim})},
            )
            self.writer = pq.ParquetWriter(self.tmp, schema)
        labels = batch.labels.tolist()
        names = [classes[t] if 0 <= t < len(classes) else None for t in labels]
        flat = pa.array(batch.features.numpy().reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "index": pa.array(batch.index.numpy(), type=pa.int64()),
                "path": pa.array(paths, type=pa.string()),
                "label": pa.array([t if t >= 0 else None for t in labels], type=pa.int32()),
                "class": pa.array(names, type=pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            },
            schema=self.writer.schema,
        )
        self.writer.write_table(table)
        self.rows += n

    def finish(self) -> int:
        if self.writer is None:
            return 0
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.rows

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


class _NpySink(_Sink):
    def __init__(self, path: Path, capacity: int) -> None:
        self.path, self.tmp, self.capacity = path, _partial(path), capacity
        stem = path.with_suffix("")
        self.sidecars = [stem.with_name(stem.name + ".paths.txt"),
                         stem.with_name(stem.name + ".labels.txt")]  # fmt: skip
        self.array: np.memmap[Any, np.dtype[np.float32]] | None = None
        self.paths_file = _partial(self.sidecars[0]).open("w", encoding="utf-8")
        self.labels_file = _partial(self.sidecars[1]).open("w", encoding="utf-8")
        self.rows = 0
        self.labelled = False

    def write(self, batch: FeatureBatch, paths: list[str], classes: list[str]) -> None:
        n, dim = batch.features.shape
        if self.array is None:
            self.array = np.lib.format.open_memmap(
                self.tmp, mode="w+", dtype=np.float32, shape=(self.capacity, dim)
            )
        self.array[self.rows : self.rows + n] = batch.features.numpy()
        self.rows += n
        for p in paths:
            if "\n" in p:
                raise DataError(f"file name {p!r} holds a line break; use --out x.parquet.")
            self.paths_file.write(p + "\n")
        for t in batch.labels.tolist():
            self.labelled |= t >= 0
            self.labels_file.write(f"{t}\t{classes[t] if t >= 0 and classes else ''}\n")

    def finish(self) -> int:
        self.paths_file.close()
        self.labels_file.close()
        if self.array is None:
            return 0
        self.array.flush()
        if self.rows < self.capacity:  # unreadable images were skipped: shrink the matrix
            full, self.array = self.array, None
            short = np.lib.format.open_memmap(
                self.path.with_name(f".{self.path.name}.short"), mode="w+", dtype=np.float32,
                shape=(self.rows, full.shape[1]),
            )  # fmt: skip
            step = 65536
            for i in range(0, self.rows, step):
                j = min(i + step, self.rows)
                short[i:j] = full[i:j]
            short.flush()
            del full, short
            os.replace(self.path.with_name(f".{self.path.name}.short"), self.tmp)
        else:
            self.array = None
        os.replace(self.tmp, self.path)
        os.replace(_partial(self.sidecars[0]), self.sidecars[0])
        if self.labelled:
            os.replace(_partial(self.sidecars[1]), self.sidecars[1])
        else:
            _partial(self.sidecars[1]).unlink()
            self.sidecars[1].unlink(missing_ok=True)  # a stale one from an earlier run
        return self.rows

    def abort(self) -> None:
        self.paths_file.close()
        self.labels_file.close()
        self.array = None
        for p in (self.tmp, _partial(self.sidecars[0]), _partial(self.sidecars[1])):
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- embed


@dataclass
class EmbedResult:
    """What ``embed`` wrote: ``rows`` embeddings of ``dim`` values in ``path``."""

    path: Path
    rows: int
    dim: int
    images: int
    skipped: int
    seconds: float
    sidecars: list[Path]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "rows": self.rows, "dim": self.dim, "images": self.images,
            "skipped": self.skipped, "seconds": round(self.seconds, 2),
            "sidecars": [str(p) for p in self.sidecars],
        }  # fmt: skip


def embed(
    model: str | Path | Method | nn.Module,
    data: str | Path | ImageSource,
    out: str | Path,
    *,
    split: str = "train",
    data_root: str | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    limit: int | None = None,
    l2_normalize: bool = False,
    workers: int = -1,
    random_init: bool = False,
    progress: bool | None = False,
    overwrite: bool = True,
) -> EmbedResult:
    """Write one embedding per image of ``data`` to ``out`` (``.parquet`` or ``.npy``).

    ``model`` is a run folder, a checkpoint file, a Method or a feature ``nn.Module``;
    ``data`` a folder (labels come from class sub-folders, when every image has one) or a
    named set. ``limit`` takes a class-balanced subset; ``l2_normalize`` scales every
    embedding to unit length (cosine similarity becomes a dot product). ``progress``: show a
    bar (``None``: the process default, see :func:`selfsup.progress.set_default`).
    """
    t0 = time.perf_counter()
    path = Path(out).expanduser()
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(
            f"--out {str(path)!r}: the file name must end in .parquet (one row per image, with "
            "path and label) or .npy (a float32 matrix plus a .paths.txt sidecar)."
        )
    if path.exists() and not overwrite:
        raise ConfigError(f"{str(path)!r} already exists; choose another --out.")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
    dev, prec = check_device_precision(device, precision)
    if isinstance(data, str | Path):
        from selfsup.data.video import has_video_files

        if has_video_files(data):
            return _embed_videos(model, Path(data), path, image_size, dev, prec, l2_normalize,
                                 random_init, progress, t0)  # fmt: skip
    source = subset(open_data(data, split, data_root), limit, seed=0)
    fm = feature_model(model, source, image_size, random_init)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": fm.name, "data": source.name, "image_size": fm.image_size,
            "l2_normalized": l2_normalize, "classes": list(source.classes)}  # fmt: skip
    sink: _Sink = (
        _ParquetSink(path, meta) if path.suffix.lower() == ".parquet"
        else _NpySink(path, len(source))
    )  # fmt: skip
    ds = EvalDataset(source, eval_transform(fm.image_size, fm.mean, fm.std), fm.image_size,
                     fm.channels, bad_files="skip")  # fmt: skip
    dim = 0
    try:
        for b in stream_features(fm.net.to(dev), ds, batch_size, dev, prec, num_workers=workers,
                                 progress=progress, desc=f"embed {source.name}"):  # fmt: skip
            if l2_normalize:
                b.features = torch.nn.functional.normalize(b.features, dim=1)
            dim = b.features.shape[1]
            sink.write(b, [source.describe(i) for i in b.index.tolist()], list(source.classes))
        rows = sink.finish()
    except BaseException:
        sink.abort()
        raise
    if rows == 0:
        raise DataError(
            f"none of the {len(source)} images of {source.name} could be read; check the "
            "folder with `selfsup data check`."
        )
    if rows < len(source):
        warnings.warn(f"{len(source) - rows} unreadable images of {source.name} were skipped.",
                      stacklevel=2)  # fmt: skip
    sidecars = [p for p in getattr(sink, "sidecars", []) if p.exists()]
    return EmbedResult(path, rows, dim, len(source), len(source) - rows,
                       time.perf_counter() - t0, sidecars)  # fmt: skip


def _embed_videos(model: str | Path | Method | nn.Module, data: Path, path: Path,
                  image_size: int | None, dev: torch.device, prec: str, l2_normalize: bool,
                  random_init: bool, progress: bool | None, t0: float) -> EmbedResult:  # fmt: skip
    """One row per video of ``data``: the mean of its clips' frame features."""
    from selfsup.data.video import open_videos
    from selfsup.eval.video import clip_features
    from selfsup.progress import progress_bar
    from selfsup.runtime import autocast

    folder = open_videos(data)
    fm = feature_model(model, None, image_size, random_init)
    net = fm.net.to(dev).eval()

    def encode(x: torch.Tensor) -> torch.Tensor:
        if fm.channels == 1:
            x = x.mean(1, keepdim=True)
        with autocast(dev, prec):
            out: torch.Tensor = net(x.to(dev))
        return out.float().cpu()

    bar = progress_bar(total=len(folder), desc=f"embed {data.name}", unit="video",
                       enabled=progress)  # fmt: skip
    try:
        # A video backbone takes whole clips of the length it was trained on.
        whole = bool(getattr(net, "is_video", False))
        frames = int(getattr(net, "frames", 8))
        feats = clip_features(encode, folder, eval_transform(fm.image_size, fm.mean, fm.std),
                              frames=frames, stride=fm.clip_stride if whole else 4,
                              progress=bar, whole_clips=whole)  # fmt: skip
    finally:
        bar.close()
    if l2_normalize:
        feats = torch.nn.functional.normalize(feats, dim=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": fm.name, "data": str(data), "image_size": fm.image_size,
            "l2_normalized": l2_normalize, "classes": folder.classes, "unit": "video"}  # fmt: skip
    sink: _Sink = (_ParquetSink(path, meta) if path.suffix.lower() == ".parquet"
                   else _NpySink(path, len(folder)))  # fmt: skip
    try:
        batch = FeatureBatch(torch.arange(len(folder)), feats, torch.tensor(folder.labels))
        sink.write(batch, [str(p) for p in folder.paths], list(folder.classes))
        rows = sink.finish()
    except BaseException:
        sink.abort()
        raise
    if folder.skipped:
        warnings.warn(f"{len(folder.skipped)} unreadable videos of {data} were skipped, e.g. "
                      f"{folder.skipped[0]}", stacklevel=3)  # fmt: skip
    sidecars = [p for p in getattr(sink, "sidecars", []) if p.exists()]
    return EmbedResult(path, rows, int(feats.shape[1]), len(folder) + len(folder.skipped),
                       len(folder.skipped), time.perf_counter() - t0, sidecars)  # fmt: skip


@dataclass
class Embeddings:
    """Embeddings read back from an ``embed`` file: ``vectors`` (N, D) float32, and per
    row its path and label (-1 when unlabelled)."""

    vectors: np.ndarray
    paths: list[str]
    labels: list[int]
    classes: list[str]


def read_embeddings(path: str | Path) -> Embeddings:
    """Read a ``.parquet`` or ``.npy`` file written by :func:`embed`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"embeddings file {str(p)!r} does not exist.")
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        meta = json.loads((table.schema.metadata or {}).get(b"selfsup", b"{}"))
        col = table.column("embedding").combine_chunks()
        dim = col.type.list_size
        vectors = col.flatten().to_numpy().reshape(-1, dim)
        labels = [-1 if t is None else int(t) for t in table.column("label").to_pylist()]
        return Embeddings(vectors, table.column("path").to_pylist(), labels,
                          list(meta.get("classes", [])))  # fmt: skip
    if p.suffix.lower() == ".npy":
        vectors = np.load(p, mmap_mode="r")
        stem = p.with_suffix("")
        paths = stem.with_name(stem.name + ".paths.txt").read_text("utf-8").splitlines()
        lab_file = stem.with_name(stem.name + ".labels.txt")
        labels, names = [-1] * len(paths), {}
        if lab_file.is_file():
            rows = [line.split("\t", 1) for line in lab_file.read_text("utf-8").splitlines()]
            labels = [int(t) for t, _ in rows]
            names = {int(t): c for t, c in rows if int(t) >= 0}
        classes = [names.get(i, "") for i in range(max(names, default=-1) + 1)]
        return Embeddings(np.asarray(vectors), paths, labels, classes)
    raise DataError(f"{str(p)!r} is neither a .parquet nor a .npy embeddings file.")
