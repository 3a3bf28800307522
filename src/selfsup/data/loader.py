"""Datasets and samplers that make training reproducible and resumable.

Every sample carries its own augmentation seed, derived from (run seed, epoch, position in
the epoch). Augmentations therefore do not depend on the number of workers, on which worker
loads a sample, or on whether the run was interrupted and resumed mid-epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from selfsup.data.decode import to_tensor
from selfsup.data.sources import DataError, ImageSource

MAX_RETRIES = 20


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, position)."""
    h = seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB
    h ^= h >> 31
    return h % (2**63 - 1)


class _Loader:
    """Decode item i (retrying others on unreadable files under the 'skip' policy)."""

    def __init__(self, source: ImageSource, channels: int, bad_files: str) -> None:
        self.source = source
        self.channels = channels
        self.bad_files = bad_files

    def load(self, index: int, seed: int, frames: int = 1, clip: tuple[int, int] | None = None,
             clips: int = 0) -> tuple[torch.Tensor, int, list[str]]:  # fmt: skip
        """Item ``index`` as ``(C, H, W)``; ``frames`` > 1 from a source of videos: ``frames``
        moments of it stacked, ``(frames, C, H, W)``, one a view; ``clip`` = (frames, stride)
        from a source of videos: a clip ``(frames, C, H, W)`` from a random start, or with
        ``clips`` = n, n clips ``(n, frames, C, H, W)``, one a view."""
        skipped: list[str] = []
        gen = torch.Generator().manual_seed(seed)
        views = getattr(self.source, "load_views", None) if frames > 1 else None
        load_clip = getattr(self.source, "load_clip", None) if clip is not None else None
        load_clips = getattr(self.source, "load_clips", None) if clips else None
        if clip is not None and (load_clip is None or (clips and load_clips is None)):
            raise DataError(
                f"{self.source.name} is not a folder of videos: a video method takes clips. "
                "Point data.path at videos (mp4, avi, webm, mkv or frame folders)."
            )
        for _ in range(MAX_RETRIES):
            try:
                where = self.source.describe(index)
                if load_clips is not None:
                    assert clip is not None
                    x = torch.stack([torch.stack([to_tensor(f, self.channels, where) for f in c])
                                     for c in load_clips(index, seed, clips, *clip)])  # fmt: skip
                elif load_clip is not None:
                    assert clip is not None
                    x = torch.stack([to_tensor(f, self.channels, where)
                                     for f in load_clip(index, seed, *clip)])  # fmt: skip
                elif views is not None:
                    x = torch.stack([to_tensor(f, self.channels, where)
                                     for f in views(index, seed, frames)])  # fmt: skip
                else:
                    x = to_tensor(self.source.load(index), self.channels, where)
                labels = self.source.labels
                return x, (labels[index] if labels is not None else -1), skipped
            except Exception as err:
                where = self.source.describe(index)
                if self.bad_files == "fail":
                    raise DataError(
                        f"cannot read image {where}: {type(err).__name__}: {err}. Fix or "
                        "remove the file, or run with data.bad_files=skip to skip bad images."
                    ) from None
                skipped.append(f"{where}\t{type(err).__name__}: {err}")
                index = int(torch.randint(len(self.source), (1,), generator=gen))
        raise DataError(
            f"{MAX_RETRIES} images in a row could not be read from {self.source.name} "
            f"(last: {skipped[-1]}). Check the data folder (selfsup data check)."
        )


class ViewDataset(Dataset[tuple[list[torch.Tensor], int, list[str]]]):
    """Items are ``(views, label, skipped)`` for an index ``(i, seed)`` from
    :class:`EpochSampler`: the image decoded once to uint8, then each view transformed."""

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[torch.Tensor], list[torch.Tensor]],
        channels: int = 3,
        bad_files: str = "skip",
    ) -> None:
        self.source = source
        self.transform = transform
        self.loader = _Loader(source, channels, bad_files)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> tuple[list[torch.Tensor], int, list[str]]:
        index, seed = item
        # A video source gives one moment of the clip a view (MultiView maps frame k to
        # view k), so time is one of the augmentations.
        n_views = len(getattr(self.transform, "transforms", [None]))
        # A video method's transform asks for whole clips: (frames, stride).
        clip = getattr(self.transform, "clip", None)
        # An image method on a video backbone asks for one clip a view.
        clips = int(getattr(self.transform, "clips", 0))
        x, label, skipped = self.loader.load(index, seed, n_views, clip, clips)
        # Seed the augmentation without disturbing the process's own random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = self.transform(x)
        return views, label, skipped


class ImageDataset(Dataset[tuple[torch.Tensor, int, list[str], int]]):
    """Items are ``(image, label, skipped, seed)`` for an index ``(i, seed)``: the image
    decoded once and left unaugmented (uint8, or float for deep images), for augmentation of
    whole batches on the training device (:class:`selfsup.transforms.batched.BatchedViews`),
    which draws each sample's views from its ``seed``.

    Images whose short side exceeds ``cap`` are first shrunk to it (antialiased): every crop
    of them would be shrunk at least that much anyway, and it bounds the batch canvas.
    """

    def __init__(
        self, source: ImageSource, channels: int = 3, bad_files: str = "skip", cap: int = 0
    ) -> None:
        self.source = source
        self.cap = cap
        self.loader = _Loader(source, channels, bad_files)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, list[str], int]:
        index, seed = item
        x, label, skipped = self.loader.load(index, seed)
        if self.cap and min(x.shape[-2:]) > self.cap:
            x = v2.functional.resize(x, self.cap, antialias=True)
        return x, label, skipped, seed


def collate_canvas(
    batch: Sequence[tuple[torch.Tensor, int, list[str], int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Images of any sizes -> (canvas (B, C, H_max, W_max), sizes (B, 2), seeds (B,) int64,
    labels, skipped).

    Each image sits in the top-left corner of the canvas; the rest is zero and never read
    (crops stay inside each image's own size). The canvas stays uint8 unless some image is
    deeper, then all become float32 in [0, 1].
    """
    images = [item[0] for item in batch]
    sizes = torch.tensor([list(x.shape[-2:]) for x in images])
    height, width = (int(v) for v in sizes.max(dim=0).values)
    deep = any(x.dtype != torch.uint8 for x in images)
    dtype = torch.float32 if deep else torch.uint8
    canvas = torch.zeros(len(images), images[0].shape[0], height, width, dtype=dtype)
    for i, x in enumerate(images):
        if deep and x.dtype == torch.uint8:
            x = x.float() / 255.0
        canvas[i, :, : x.shape[-2], : x.shape[-1]] = x
    labels = torch.tensor([item[1] for item in batch])
    skipped = [s for item in batch for s in item[2]]
    seeds = torch.tensor([item[3] for item in batch], dtype=torch.int64)
    return canvas, sizes, seeds, labels, skipped


class EvalDataset(Dataset[tuple[torch.Tensor, int, bool]]):
    """Items are ``(image, label, ok)`` with a deterministic transform; unreadable images
    give ``ok=False`` (and are left out of features) under the 'skip' policy."""

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[torch.Tensor], torch.Tensor],
        image_size: int,
        channels: int = 3,
        bad_files: str = "skip",
    ) -> None:
        self.source = source
        self.transform = transform
        self.image_size = image_size
        self.channels = channels
        self.bad_files = bad_files

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        labels = self.source.labels
        label = labels[index] if labels is not None else -1
        try:
            x = to_tensor(self.source.load(index), self.channels, self.source.describe(index))
        except Exception as err:
            if self.bad_files == "fail":
                raise DataError(
                    f"cannot read image {self.source.describe(index)}: {err}. Fix or remove it."
                ) from None
            return torch.zeros(self.channels, self.image_size, self.image_size), label, False
        return self.transform(x), label, True


class EpochSampler(Sampler[tuple[int, int]]):
    """Seeded per-epoch permutation that can start mid-epoch and shard across ranks.

    Yields ``(index, augmentation seed)``. With ``drop_last`` the epoch holds
    ``floor(n * repeat / global_batch)`` full global batches. ``start`` counts global samples
    already consumed in this epoch (for resuming); rank r takes positions r, r + world, ...
    ``repeat``: each index appears that many times an epoch (one permutation of the
    ``n * repeat`` positions), with its own augmentation seed each time.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        seed: int,
        epoch: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = True,
        repeat: int = 1,
    ) -> None:
        if repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {repeat}")
        self.size, self.repeat = n, repeat
        self.n, self.global_batch, self.seed, self.epoch = n * repeat, global_batch, seed, epoch
        self.start, self.rank, self.world, self.drop_last = start, rank, world, drop_last

    def epoch_length(self) -> int:
        """Global samples per epoch."""
        if self.drop_last:
            return (self.n // self.global_batch) * self.global_batch
        return math.ceil(self.n / self.global_batch) * self.global_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        perm = torch.randperm(self.n, generator=g).tolist()
        total = self.epoch_length()
        if total > self.n:  # pad the last batch by wrapping around
            perm = perm + perm[: total - self.n]
        for pos in range(self.start + self.rank, total, self.world):
            yield perm[pos] % self.size, sample_seed(self.seed, self.epoch, pos)

    def __len__(self) -> int:
        return max(0, (self.epoch_length() - self.start - self.rank + self.world - 1) // self.world)


def collate_views(
    batch: Sequence[tuple[list[torch.Tensor], int, list[str]]],
) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Stack each view across the batch: -> ([view0 (B,C,H,W), view1, ...], labels, skipped)."""
    n_views = len(batch[0][0])
    views = [torch.stack([item[0][v] for item in batch]) for v in range(n_views)]
    labels = torch.tensor([item[1] for item in batch])
    skipped = [s for item in batch for s in item[2]]
    return views, labels, skipped


def default_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    import os

    return min(4, os.cpu_count() or 1)


def worker_init(_: int) -> None:
    # Each worker does its per-image work on one thread; the main process owns the cores
    # for the model.
    torch.set_num_threads(1)


def loader_kwargs(num_workers: int, persistent: bool = False) -> dict[str, Any]:
    """DataLoader options: single-threaded workers; ``persistent`` keeps them across epochs
    (the sampler is iterated in the main process, so its epoch can change)."""
    kw: dict[str, Any] = {"num_workers": num_workers}
    if num_workers > 0:
        kw.update(worker_init_fn=worker_init, prefetch_factor=4, persistent_workers=persistent)
    return kw
