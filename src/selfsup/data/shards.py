"""Sharded, streamed data: WebDataset tar shards written from a folder and read back as a
stream for training, with exact resume.

Writing (:func:`write_shards`, ``selfsup data shard``): each image file goes into a tar
shard as it is (its bytes, its extension), with its label (``cls``) when the folder has
class sub-folders and its path in the folder (``path``), under the key ``%09d`` (the sample's
number). ``index.json`` beside the shards lists each shard's sample count.

Reading (:class:`ShardStream`): one epoch is a stream of ``epoch_length`` positions. The
shards are put in a seeded order per (seed, epoch) and concatenated; position ``p`` is sample
``p mod N`` of that concatenation (``data.repeat`` and the padding of ``drop_last=false``
wrap around). Each rank's batches are dealt round-robin to its loader workers (the order in
which a PyTorch DataLoader returns them), and every (rank, worker) pair reads one contiguous
range of positions: mostly whole shards of its own, sharing at most the shards at both ends
of its range with its neighbours (it reads past the head of a shared shard without decoding
it). A seeded shuffle buffer (webdataset's) mixes each range. Everything is a function of
(seed, epoch, ranks, workers, batch size), so a run resumed mid-epoch skips exactly the
samples each worker had handed out (re-reading them, not decoding them) and the epoch
continues in the same order as without the interruption: resume is exact, not approximate,
as long as the number of processes, workers and the batch size stay the same (a change
mid-epoch is warned about; from the next epoch all is exact again).

An image that cannot be decoded, or a shard that ends early or cannot be read, is skipped
and counted (listed in ``skipped.txt`` like unreadable files of a folder); its slot in the
batch holds the last good image of the same worker, with its own augmentation, so every rank
keeps the same number of steps.
"""

from __future__ import annotations

import bisect
import io
import json
import math
import os
import random
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2

from selfsup.data.decode import DEFAULT_MAX_PIXELS, TIFF_SUFFIXES, _guard, open_file, to_tensor
from selfsup.data.loader import sample_seed, worker_init
from selfsup.data.sources import IMAGE_EXTENSIONS, DataError, scan_folder

INDEX = "index.json"
FORMAT = "selfsup-shards/1"
PATTERN = "shard-%06d.tar"
DEFAULT_SHUFFLE_BUFFER = 1000
IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
# A file (one line per consumed sample: epoch, sample number) that training appends to, for
# checking which samples a run saw; ".rank<r>" is added under several processes.
SAMPLE_LOG_ENV = "SELFSUP_SAMPLE_LOG"


# ----------------------------------------------------------------------------- writing


def parse_size(text: str) -> int:
    """``"500MB"``, ``"1.5GB"``, ``"64k"`` or a number of bytes -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise DataError(f"--shard-size {text!r} is not a size; write e.g. 500MB, 2GB or 64kB.")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2)]
    return max(1, int(float(m.group(1)) * scale))


def write_shards(folder: str | Path, out: str | Path, shard_size: int = 500_000_000,
                 progress: bool = True, min_shards: int = 64,
                 shuffle_seed: int | None = 0) -> dict[str, Any]:  # fmt: skip
    """Write every image under ``folder`` into WebDataset tar shards in ``out``
    (``shard-000000.tar``, ...), and ``index.json``; returns the index.

    The images are split evenly over ``max(ceil(bytes / shard_size), min_shards)`` shards
    (fewer when there are fewer images): training gives each process and loader worker its
    own shards, and readers that share a shard each read through it. With ``shuffle_seed``
    (the default) the images are written in a seeded random order, so each shard holds a mix
    of the folder (a folder sorted by class would otherwise give shards of one class, and a
    loader worker's batches of one class); ``None`` keeps the folder's order."""
    import webdataset as wds
    from tqdm.auto import tqdm

    src = scan_folder(folder)
    other = [f for f in src.files if not f.lower().endswith(IMAGE_EXTENSIONS)]
    if other:
        raise DataError(
            f"{src.root / other[0]} (and {len(other) - 1} more) is not a plain image file: "
            "shards hold one image per file (medical volumes and multi-frame files are read "
            "from the folder). Train on the folder, or convert those files to images first."
        )
    dest = Path(out).expanduser()
    if (dest / INDEX).exists() or any(dest.glob("shard-*.tar")):
        raise DataError(f"{dest} already holds shards; choose another --out or delete them.")
    dest.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    n = len(src)
    total = sum(src.path(i).stat().st_size for i in range(n))
    n_shards = max(1, min(n, max(math.ceil(total / shard_size), min_shards)))
    starts = {j * n // n_shards for j in range(1, n_shards)}  # even: sizes differ by one at most
    order = list(range(n))
    if shuffle_seed is not None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
    # maxsize still bounds the bytes (tar headers and padding add to the files' sizes).
    # mtime=0: with webdataset's default (the time, a float) Python's tarfile adds a PAX
    # header to every member, which doubled the shards of small images and the time to read
    # them (466 -> 244 us a CIFAR-10 sample); a fixed time also makes shards reproducible.
    writer = wds.ShardWriter(str(dest / PATTERN), maxcount=10**9, maxsize=shard_size,
                             verbose=0, mtime=0)  # fmt: skip
    try:
        for n_written, i in enumerate(tqdm(order, desc="shards", unit="img", disable=not progress)):
            if n_written in starts:
                writer.next_stream()
            rel = src.files[i]
            sample: dict[str, Any] = {"__key__": f"{i:09d}", "path": rel.encode()}
            sample[Path(rel).suffix.lower().lstrip(".")] = src.path(i).read_bytes()
            if src.labels is not None:
                sample["cls"] = str(src.labels[i]).encode()
            writer.write(sample)
            name = Path(writer.fname).name
            counts[name] = counts.get(name, 0) + 1
    finally:
        writer.close()
    index = {
        "format": FORMAT, "source": str(src.root), "samples": len(src),
        "order": "folder" if shuffle_seed is None else f"shuffled (seed {shuffle_seed})",
        "classes": src.classes, "labelled": src.labels is not None,
        "shards": [{"name": n, "samples": c, "bytes": (dest / n).stat().st_size}
                   for n, c in counts.items()],
    }  # fmt: skip
    (dest / INDEX).write_text(json.dumps(index, indent=1))
    return index


# ----------------------------------------------------------------------------- opening


def is_shard_spec(spec: str) -> bool:
    """Whether ``--data`` names shards: a pattern or URL of ``.tar`` files, a ``pipe:``
    command, or a folder written by :func:`write_shards`."""
    if spec.startswith("pipe:") or re.search(r"\.tar\b", spec):
        return True
    return (Path(spec).expanduser() / INDEX).is_file()


def index_url(url: str) -> str:
    """Where the index of the shard ``url`` lives: its name replaced by ``index.json`` (in a
    path, a URL or a ``pipe:`` command alike)."""
    hits = list(re.finditer(r"[^/\s'\"]+\.tar\b", url))
    if not hits:
        return url + "/" + INDEX
    m = hits[-1]
    return url[: m.start()] + INDEX + url[m.end() :]


def _read_index(url: str) -> dict[str, Any] | None:
    import webdataset as wds

    where = index_url(url)
    if "://" not in where and not where.startswith("pipe:") and not Path(where).is_file():
        return None
    try:
        with wds.gopen(where, "rb") as f:
            index: dict[str, Any] = json.loads(f.read())
    except Exception:
        return None
    return index if index.get("format") == FORMAT else None


def _samples(url: str) -> Iterator[dict[str, Any]]:
    import webdataset as wds

    return iter(wds.tarfile_samples([{"url": url}]))


def _count(url: str) -> int:
    try:
        return sum(1 for _ in _samples(url))
    except Exception as err:
        raise DataError(
            f"cannot read shard {url}: {type(err).__name__}: {err}. Check the path or URL; "
            "a shard written by selfsup data shard has its sample count in index.json."
        ) from None


def _label(sample: dict[str, Any]) -> int:
    cls = sample.get("cls")
    return int(cls) if cls is not None else -1


def _image(sample: dict[str, Any]) -> tuple[str, bytes]:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    raise DataError(f"holds no image (members: {', '.join(k for k in sample if k[0] != '_')})")


def decode_bytes(data: bytes, ext: str, where: str, channels: int = 3,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:  # fmt: skip
    """The bytes of an image file -> the tensor :func:`~selfsup.data.decode.to_tensor` gives
    for the same file in a folder (TIFFs go through the folder path itself)."""
    if not data:
        raise DataError(f"{where} is empty (0 bytes)")
    if f".{ext}" in TIFF_SUFFIXES:  # multi-band TIFFs need a file for tifffile
        with tempfile.NamedTemporaryFile(suffix=f".{ext}") as f:
            f.write(data)
            f.flush()
            return to_tensor(open_file(Path(f.name), max_pixels), channels, where)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            _guard(img.width, img.height, where, max_pixels)
            img.load()
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"{where} is larger than the decompression-bomb guard allows; "
                            "if the image is genuine, raise data.max_pixels.") from None  # fmt: skip
        except Exception as err:
            raise DataError(
                f"{where} is not a readable image ({type(err).__name__}: {err})"
            ) from None
    return to_tensor(img, channels, where)


@dataclass
class ShardSource:
    """Shards as an :class:`~selfsup.data.ImageSource`: its length and classes come from the
    index; ``load(i)`` streams a shard up to sample ``i`` (for the few images pictures need;
    training streams, see :class:`ShardStream`). ``labels`` is ``None``: per-sample labels
    live in the shards (they reach the batches), not in memory."""

    spec: str
    urls: list[str]
    counts: list[int]
    classes: list[str]
    max_pixels: int = DEFAULT_MAX_PIXELS

    labels = None

    @property
    def name(self) -> str:
        return self.spec

    def __len__(self) -> int:
        return sum(self.counts)

    def locate(self, i: int) -> tuple[int, int]:
        """Sample ``i`` -> (shard, its number in that shard)."""
        first = np.cumsum([0, *self.counts])
        j = int(np.searchsorted(first, i, side="right")) - 1
        return j, i - int(first[j])

    def load(self, i: int) -> Image.Image | np.ndarray:
        j, k = self.locate(i)
        for n, sample in enumerate(_samples(self.urls[j])):
            if n == k:
                ext, data = _image(sample)
                where = self.describe(i)
                if f".{ext}" in TIFF_SUFFIXES:
                    return Image.fromarray(decode_bytes(data, ext, where).permute(1, 2, 0).numpy())
                img = Image.open(io.BytesIO(data))
                img.load()
                return img
        raise DataError(f"shard {self.urls[j]} has fewer than {k + 1} samples (truncated?)")

    def describe(self, i: int) -> str:
        j, k = self.locate(i)
        return f"{self.urls[j]}[{k}]"

    def preview(self, n: int = 64) -> PreviewSource:
        """The first ``n`` images of the first shard, in memory: enough to choose the image
        size and measure statistics without reading the shards at random."""
        images: list[Image.Image] = []
        for sample in _samples(self.urls[0]):
            try:
                data = _image(sample)[1]
                img = Image.open(io.BytesIO(data))
                img.load()
                images.append(img)
            except Exception:
                continue
            if len(images) >= n:
                break
        if not images:
            raise DataError(f"no readable image in the first shard {self.urls[0]}.")
        return PreviewSource(f"{self.spec} (first {len(images)})", images)


class PreviewSource:
    """A few images held in memory, seen as an ImageSource."""

    def __init__(self, name: str, images: list[Image.Image]) -> None:
        self.name, self.images = name, images
        self.labels: list[int] | None = None
        self.classes: list[str] = []

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> Image.Image:
        return self.images[i]

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


def open_shards(spec: str, max_pixels: int | None = None) -> ShardSource:
    """Shards from a brace pattern (``'shards/shard-{000000..000123}.tar'``), URLs, ``pipe:``
    commands (as WebDataset accepts them) or a folder written by :func:`write_shards`. Sample
    counts come from ``index.json`` beside the shards; shards it does not list are counted by
    reading them once."""
    import webdataset as wds

    folder = Path(spec).expanduser()
    index: dict[str, Any] | None
    if (folder / INDEX).is_file() and not spec.startswith("pipe:"):
        index = json.loads((folder / INDEX).read_text())
        urls = [str(folder / s["name"]) for s in index["shards"]]
    else:
        urls = list(wds.shardlists.expand_urls(spec))
        index = _read_index(urls[0]) if urls else None
    if not urls:
        raise DataError(f"--data {spec!r} names no shards.")
    known = {s["name"]: int(s["samples"]) for s in (index or {}).get("shards", [])}
    missing = [u for u in urls if _shard_name(u) not in known]
    if missing and "://" not in missing[0] and not spec.startswith("pipe:"):
        absent = [u for u in missing if not Path(u).is_file()]
        if absent:
            raise DataError(
                f"shard {absent[0]} does not exist ({len(absent)} of {len(urls)} named by "
                f"{spec!r} are missing). Check the pattern's range, e.g. shard-{{000000..000009}}.tar."
            )
    if missing:
        warnings.warn(f"{len(missing)} shards of {spec!r} are not in an {INDEX}: counting their "
                      "samples by reading them once.", stacklevel=2)  # fmt: skip
    counts = [known[_shard_name(u)] if _shard_name(u) in known else _count(u) for u in urls]
    classes = list((index or {}).get("classes", []))
    return ShardSource(spec, urls, counts, classes, max_pixels or DEFAULT_MAX_PIXELS)


def _shard_name(url: str) -> str:
    hits = re.findall(r"[^/\s'\"]+\.tar\b", url)
    return hits[-1] if hits else url


# ----------------------------------------------------------------------------- streaming


@dataclass
class Plan:
    """Which positions of an epoch one (rank, worker) reads and how many it already handed
    out: ``start`` and ``stop`` bound its range; ``skip`` samples are to be skipped."""

    start: int
    stop: int
    skip: int
    consumer: int


def plan(epoch_length: int, pos: int, batch: int, rank: int, world: int, worker: int,
         workers: int) -> Plan:  # fmt: skip
    """The range of one (rank, worker) in an epoch of ``epoch_length`` positions, ``pos`` of
    them consumed. A rank's batches go to its workers round-robin (batch b to worker
    b mod workers), the order in which a DataLoader returns them; a resumed loader starts
    with its worker 0, so loader worker ``worker`` plays the part of worker
    ``(worker + done) mod workers`` for ``done`` batches already consumed."""
    per_rank = epoch_length // (world * batch)  # batches of one rank
    mine = [max(0, -(-(per_rank - w) // workers)) for w in range(workers)]
    done = pos // (world * batch)  # batches each rank has consumed
    w = (worker + done) % workers
    start = (rank * per_rank + sum(mine[:w])) * batch
    taken = max(0, -(-(done - w) // workers))
    return Plan(start, start + mine[w] * batch, taken * batch, rank * workers + w)


Read = tuple[int, int, int, dict[str, Any] | None, str]  # position, shard, number, sample, error


class ShardStream(IterableDataset[tuple[Any, ...]]):
    """One epoch of shards as ``(image, label, skipped, seed, sample)`` (``transform`` None:
    for the batched device augmentation) or ``(views, label, skipped, sample)``; ``sample``
    is the sample's number in the index (for the sample log). Set ``epoch`` and ``start``
    (global samples already consumed in the epoch) before iterating."""

    def __init__(self, source: ShardSource, batch: int, step_batch: int, seed: int,
                 rank: int = 0, world: int = 1, drop_last: bool = True, repeat: int = 1,
                 channels: int = 3, bad_files: str = "skip", cap: int = 0,
                 transform: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
                 buffer: int = DEFAULT_SHUFFLE_BUFFER) -> None:  # fmt: skip
        self.source, self.batch, self.step_batch, self.seed = source, batch, step_batch, seed
        self.rank, self.world, self.drop_last, self.repeat = rank, world, drop_last, repeat
        self.channels, self.bad_files, self.cap = channels, bad_files, cap
        self.transform, self.buffer = transform, buffer
        self.epoch = self.start = 0
        self.first = np.cumsum([0, *source.counts]).tolist()

    def epoch_length(self) -> int:
        """Global samples per epoch (as :class:`~selfsup.data.EpochSampler` counts them)."""
        n = len(self.source) * self.repeat
        rounded = n // self.step_batch if self.drop_last else math.ceil(n / self.step_batch)
        return rounded * self.step_batch

    def reads(self, start: int, stop: int) -> Iterator[tuple[int, int, int, int]]:
        """Positions [start, stop) as (first position, shard, first sample, count) runs of
        this epoch's seeded shard order."""
        counts = self.source.counts
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -2))
        order = torch.randperm(len(counts), generator=g).tolist()
        ends = np.cumsum([counts[j] for j in order]).tolist()
        n, p = ends[-1], start
        while p < stop:
            q = p % n
            i = bisect.bisect_right(ends, q)
            k = q - (ends[i] - counts[order[i]])
            take = min(stop - p, ends[i] - q)
            yield p, order[i], k, take
            p += take

    def _read(self, start: int, stop: int) -> Iterator[Read]:
        for p, j, k0, take in self.reads(start, stop):
            url, got, seen = self.source.urls[j], 0, 0
            samples = _samples(url)
            try:
                for k, sample in enumerate(samples):
                    seen = k + 1
                    if k >= k0:
                        yield p + got, j, k, sample, ""
                        got += 1
                        if got == take:
                            break
                why = f"the shard ended after {seen} samples; its index says more (truncated?)"
            except Exception as err:
                why = f"cannot be read past sample {k0 + got}: {type(err).__name__}: {err}"
            finally:
                close = getattr(samples, "close", None)
                if close is not None:
                    close()
            for i in range(got, take):
                yield p + i, j, k0 + i, None, why

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        from webdataset.filters import _shuffle

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        pl = plan(self.epoch_length(), self.start, self.batch, self.rank, self.world,
                  worker, workers)  # fmt: skip
        seed = sample_seed(self.seed, self.epoch, -3 - pl.consumer)
        stream = _shuffle(self._read(pl.start, pl.stop), self.buffer, self.buffer,
                          rng=random.Random(seed))  # fmt: skip
        for _ in range(pl.skip):  # already handed out before the interruption
            next(stream)
        yield from self._decoded(stream)

    def _decode(self, item: Read) -> tuple[torch.Tensor | None, int, str]:
        _, j, k, sample, why = item
        where = f"{self.source.urls[j]}[{k}]"
        if sample is not None:
            where += f" ({sample.get('path', b'').decode(errors='replace')})"
            try:
                ext, data = _image(sample)
                x = decode_bytes(data, ext, where, self.channels, self.source.max_pixels)
                return x, _label(sample), ""
            except Exception as err:
                why = f"{type(err).__name__}: {err}"
        if self.bad_files == "fail":
            raise DataError(f"cannot read sample {where}: {why}. Rewrite the shard, or run with "
                            "data.bad_files=skip to skip bad samples.")  # fmt: skip
        return None, -1, f"{where}\t{why}"

    def _decoded(self, stream: Iterator[Read]) -> Iterator[tuple[Any, ...]]:
        """Decode each item; a bad one takes the last good image (and its label)."""
        good: tuple[torch.Tensor, int] | None = None
        pending: list[tuple[int, int, str]] = []  # bad items before the first good one
        for item in stream:
            x, label, bad = self._decode(item)
            p, sample = item[0], self.first[item[1]] + item[2]
            if x is None:
                if good is None:
                    pending.append((p, sample, bad))
                    continue
                yield self._item(*good, [bad], p, sample)
                continue
            good = (x, label)
            yield self._item(x, label, [], p, sample)
            for q, s, why in pending:
                yield self._item(x, label, [why], q, s)
            pending = []
        if pending:
            raise DataError(f"no sample of this worker's shards could be read (first: "
                            f"{pending[0][2]}). Check the shards (selfsup data check).")  # fmt: skip

    def _item(self, x: torch.Tensor, label: int, skipped: list[str], p: int,
              sample: int) -> tuple[Any, ...]:  # fmt: skip
        seed = sample_seed(self.seed, self.epoch, p)
        if self.transform is None:
            if self.cap and min(x.shape[-2:]) > self.cap:
                x = v2.functional.resize(x, self.cap, antialias=True)
            return x, label, skipped, seed, sample
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = self.transform(x)
        return views, label, skipped, sample

    def check_layout(self, saved: list[int], pos: int, workers: int) -> list[int]:
        """The layout (processes, workers, batch) of this run, warning when a run resumed
        mid-epoch changed it: the rest of that epoch then repeats or misses samples."""
        layout = [self.world, workers, self.batch]
        if pos > 0 and saved and saved != layout:
            warnings.warn(
                f"resumed mid-epoch with (processes, workers, batch) = {tuple(layout)}, saved "
                f"with {tuple(saved)}: the shards are dealt differently, so the rest of epoch "
                f"{self.epoch} may repeat or miss samples. Resume with the saved numbers for an "
                "exact epoch; from the next epoch on all is exact.",
                stacklevel=2,
            )
        return layout


class _WithSamples:
    """A collate function that also returns the batch's sample numbers (the last field)."""

    def __init__(self, collate: Callable[[list[tuple[Any, ...]]], Any]) -> None:
        self.collate = collate

    def __call__(self, batch: list[tuple[Any, ...]]) -> tuple[Any, list[int]]:
        return self.collate([item[:-1] for item in batch]), [int(item[-1]) for item in batch]


class ShardLoader:
    """The loader and sampler of a sharded run: the trainer sets ``epoch`` and ``start``
    (as on :class:`~selfsup.data.EpochSampler`) and iterates it for the epoch's batches.
    Workers are started afresh each epoch so each gets the current epoch and position."""

    def __init__(self, stream: ShardStream, batch: int, workers: int,
                 collate: Callable[[list[tuple[Any, ...]]], Any], pin_memory: bool) -> None:  # fmt: skip
        self.stream, self.epoch, self.start = stream, 0, 0
        kw: dict[str, Any] = {"num_workers": workers}
        if workers > 0:
            kw.update(worker_init_fn=worker_init, prefetch_factor=4)
        self.loader = DataLoader(stream, batch_size=batch, collate_fn=_WithSamples(collate),
                                 pin_memory=pin_memory, **kw)  # fmt: skip
        log = os.environ.get(SAMPLE_LOG_ENV)
        self.log = Path(f"{log}.rank{stream.rank}" if log and stream.world > 1 else log or "")

    def epoch_length(self) -> int:
        return self.stream.epoch_length()

    def __iter__(self) -> Iterator[Any]:
        self.stream.epoch, self.stream.start = self.epoch, self.start
        for batch, samples in self.loader:
            if self.log != Path(""):
                with open(self.log, "a") as f:
                    f.write("".join(f"{self.epoch}\t{s}\n" for s in samples))
            yield batch
