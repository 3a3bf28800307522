"""Videos as data: files decoded with PyAV (FFmpeg: mp4, avi, webm, mkv, mov) and folders of
frames, one clip sampler for all of them.

A video folder holds videos at any depth; a sub-folder whose files are all images (and
that has no sub-folders) is one video of frames in name order. Class folders, as for
images, give labels (``<root>/<class>/<video>``); labels are only for evaluation.
Unreadable or empty videos are skipped and listed (``skipped``), as for images, so one bad
file never stops a run.

Clips are ``frames`` frames ``stride`` apart, starting at a position the sampler draws:
``random`` from a generator seeded by (seed, epoch, video index), so the same run draws the
same clips after a resume; ``uniform`` (``n_clips`` starts spread over the video, for
evaluation) or ``center``. A video shorter than a clip repeats its last frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data.sources import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
START_MODES = ("random", "uniform", "center")


@dataclass
class VideoInfo:
    """What ``probe_video`` reads: frame count, rate, size, duration in seconds."""

    path: str
    frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps > 0 else math.nan


def _is_frame_folder(p: Path) -> bool:
    if not p.is_dir():
        return False
    entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    return bool(entries) and all(e.is_file() and e.suffix.lower() in FRAME_SUFFIXES
                                 for e in entries)  # fmt: skip


def find_videos(root: Path) -> list[Path]:
    """Video files and frame folders under ``root`` (any depth), sorted."""
    out: list[Path] = []

    def walk(d: Path) -> None:
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or _is_frame_folder(p):
                out.append(p)
            elif p.is_dir():
                walk(p)

    walk(root)
    return out


def probe_video(path: Path) -> VideoInfo:
    """Frame count, frame rate and size of a video file or frame folder; a file whose
    container does not say its frame count is decoded to count. Raises DataError naming the
    file when it cannot be read or holds no frame."""
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        from PIL import Image

        try:
            with Image.open(frames[0]) as im:
                w, h = im.size
        except Exception as err:
            raise DataError(f"cannot read frame {frames[0]}: {err}") from None
        return VideoInfo(str(path), len(frames), math.nan, w, h)
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DataError(f"{path} has no video stream")
            s = c.streams.video[0]
            n = int(s.frames or 0)
            if n <= 0:
                n = sum(1 for _ in c.decode(video=0))
            fps = float(s.average_rate) if s.average_rate else math.nan
            w, h = int(s.codec_context.width), int(s.codec_context.height)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read video {path}: {err}") from None
    if n <= 0:
        raise DataError(f"{path} holds no frame")
    return VideoInfo(str(path), n, fps, w, h)


def decode_video(path: Path, max_frames: int | None = None) -> torch.Tensor:
    """Every frame (up to ``max_frames``) as uint8 ``(T, 3, H, W)``; DataError names the
    file when it cannot be decoded or holds no frame."""
    frames: list[np.ndarray] = []
    if path.is_dir():
        from PIL import Image

        for p in sorted(q for q in path.iterdir() if q.suffix.lower() in FRAME_SUFFIXES):
            try:
                with Image.open(p) as im:
                    frames.append(np.asarray(im.convert("RGB")))
            except Exception as err:
                raise DataError(f"cannot read frame {p}: {err}") from None
            if max_frames is not None and len(frames) >= max_frames:
                break
    else:
        import av

        try:
            with av.open(str(path)) as c:
                for f in c.decode(video=0):
                    frames.append(f.to_ndarray(format="rgb24"))
                    if max_frames is not None and len(frames) >= max_frames:
                        break
        except Exception as err:
            raise DataError(f"cannot decode video {path}: {err}") from None
    if not frames:
        raise DataError(f"{path} holds no frame")
    if len({f.shape for f in frames}) > 1:
        raise DataError(f"{path} changes frame size mid-stream; re-encode it at one size")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def clip_starts(n_frames: int, span: int, mode: str, n_clips: int = 1,
                generator: torch.Generator | None = None) -> list[int]:  # fmt: skip
    """First frames of ``n_clips`` clips spanning ``span`` frames in a video of ``n_frames``:
    ``random`` (uniform over the valid starts), ``uniform`` (evenly spread, first and last
    included) or ``center``."""
    if mode not in START_MODES:
        raise ValueError(f"clip start {mode!r} is not one of {', '.join(START_MODES)}")
    last = max(0, n_frames - span)
    if mode == "center":
        return [last // 2] * n_clips
    if mode == "uniform":
        if n_clips == 1:
            return [last // 2]
        return [round(i * last / (n_clips - 1)) for i in range(n_clips)]
    return [int(torch.randint(last + 1, (), generator=generator)) for _ in range(n_clips)]


def clip_indices(n_frames: int, start: int, frames: int, stride: int) -> list[int]:
    """Frame indices of a clip: ``frames`` frames ``stride`` apart from ``start``; past the
    end the last frame repeats."""
    return [min(start + i * stride, n_frames - 1) for i in range(frames)]


@dataclass
class VideoFolder:
    """Videos under ``root`` with class labels from their folders (-1 without classes)."""

    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int, max_frames: int | None = None) -> torch.Tensor:
        return decode_video(self.paths[i], max_frames)


def open_videos(root: str | Path, check: bool = True) -> VideoFolder:
    """The videos under ``root``; ``check`` probes each and skips (and lists) those that
    cannot be read or hold no frame. Labels come from the first folder level below
    ``root`` when every video sits in one."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"video folder {root} does not exist")
    paths = [root] if _is_frame_folder(root) else find_videos(root)
    skipped: list[str] = []
    if check:
        kept = []
        for p in paths:
            try:
                probe_video(p)
                kept.append(p)
            except DataError as err:
                skipped.append(f"{p}\t{err}")
        paths = kept
    if not paths:
        raise DataError(
            f"{root} holds no readable video (files ending in {', '.join(VIDEO_SUFFIXES)}, or "
            "folders of frames)" + (f"; skipped: {skipped[0]}" if skipped else "")
        )
    rel = [p.relative_to(root).parts for p in paths]
    if all(len(r) >= 2 for r in rel):
        classes = sorted({r[0] for r in rel})
        labels = [classes.index(r[0]) for r in rel]
    else:
        classes, labels = [], [-1] * len(paths)
    return VideoFolder(root, paths, labels, classes, skipped)


def has_video_files(root: str | Path, limit: int = 10_000) -> bool:
    """Whether ``root`` holds video files (looked for among its first ``limit`` entries)."""
    root = Path(root)
    if not root.is_dir():
        return False
    for i, p in enumerate(root.rglob("*")):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            return True
        if i >= limit:
            break
    return False


def check_videos(root: str | Path) -> dict[str, Any]:
    """The ``data check`` report of a video folder: videos (per class), frames, durations,
    frame rates and sizes, and the videos that cannot be read (with the reason)."""
    folder = open_videos(root, check=False)
    infos: list[VideoInfo] = []
    unreadable = []
    for p in folder.paths:
        try:
            infos.append(probe_video(p))
        except DataError as err:
            unreadable.append({"file": str(p), "error": str(err)})

    def spread(values: list[float]) -> dict[str, float]:
        vals = sorted(v for v in values if not math.isnan(v))
        if not vals:
            return {}
        return {"min": vals[0], "median": vals[len(vals) // 2], "max": vals[-1]}

    per_class: dict[str, int] = {}
    for label in folder.labels:
        name = folder.classes[label] if label >= 0 else "(no class)"
        per_class[name] = per_class.get(name, 0) + 1
    sizes: dict[str, int] = {}
    for v in infos:
        key = f"{v.width}x{v.height}"
        sizes[key] = sizes.get(key, 0) + 1
    return {
        "layout": "video", "path": str(Path(root).resolve()), "videos": len(folder.paths),
        "readable": len(infos), "classes": per_class,
        "frames": spread([float(v.frames) for v in infos]),
        "duration_s": spread([v.duration for v in infos]),
        "fps": spread([v.fps for v in infos]), "sizes": sizes,
        "formats": sorted({Path(v.path).suffix.lower() or "frames" for v in infos}),
        "unreadable": unreadable,
    }  # fmt: skip


class VideoSource:
    """Videos as a pretraining source: one item a video. ``load(i)`` is its middle frame
    (monitors, evaluation, image-size sniffing); ``load_views(i, seed, n)`` draws ``n`` frames
    of it for ``n`` views: the first uniformly, the others up to ``gap`` frames from it
    (time as augmentation: two moments of one clip are positives). ``gap`` 0 gives one frame
    for all views. Decoded videos are kept per process up to ``cache_mb`` (least recently
    used dropped first): small clips decode once, not once a sample."""

    def __init__(self, folder: VideoFolder, gap: int = 8, cache_mb: int = 1024) -> None:
        if gap < 0:
            raise ValueError(f"gap must be >= 0, got {gap}")
        self.folder, self.gap, self.cache_bytes = folder, gap, cache_mb * 2**20
        self.classes = list(folder.classes)
        self.labels: list[int] | None = list(folder.labels) if folder.classes else None
        self._cache: dict[int, torch.Tensor] = {}

    @property
    def name(self) -> str:
        return str(self.folder.root)

    def __len__(self) -> int:
        return len(self.folder)

    def describe(self, i: int) -> str:
        return str(self.folder.paths[i])

    def frames(self, i: int) -> torch.Tensor:
        """All frames of video ``i``, uint8 ``(T, 3, H, W)`` (cached)."""
        v = self._cache.pop(i) if i in self._cache else self.folder.load(i)
        self._cache[i] = v  # most recently used last
        while (
            sum(x.numel() for x in self._cache.values()) > self.cache_bytes and len(self._cache) > 1
        ):
            self._cache.pop(next(iter(self._cache)))
        return v

    def load(self, i: int) -> np.ndarray:
        v = self.frames(i)
        return v[len(v) // 2].permute(1, 2, 0).numpy()

    def load_views(self, i: int, seed: int, n: int) -> list[np.ndarray]:
        v = self.frames(i)
        t = int(v.shape[0])
        g = torch.Generator().manual_seed(seed)
        first = int(torch.randint(t, (), generator=g))
        picks = [first]
        for _ in range(n - 1):
            lo, hi = max(0, first - self.gap), min(t - 1, first + self.gap)
            picks.append(int(torch.randint(lo, hi + 1, (), generator=g)))
        return [v[p].permute(1, 2, 0).numpy() for p in picks]

    def load_clip(self, i: int, seed: int, frames: int, stride: int) -> list[np.ndarray]:
        """A clip of video ``i`` for video methods: ``frames`` frames ``stride`` apart from a
        start drawn uniformly with ``seed`` (past the end the last frame repeats)."""
        v = self.frames(i)
        n = int(v.shape[0])
        g = torch.Generator().manual_seed(seed)
        (start,) = clip_starts(n, (frames - 1) * stride + 1, "random", 1, g)
        return [v[p].permute(1, 2, 0).numpy() for p in clip_indices(n, start, frames, stride)]

    def load_clips(self, i: int, seed: int, n: int, frames: int,
                   stride: int) -> list[list[np.ndarray]]:  # fmt: skip
        """``n`` clips of video ``i`` (image methods on a video backbone: one clip a view):
        the first from a start drawn uniformly with ``seed``, the others from starts at most
        ``gap`` frames from it (``gap`` 0: ``n`` times the same clip)."""
        v = self.frames(i)
        t = int(v.shape[0])
        g = torch.Generator().manual_seed(seed)
        last = max(0, t - ((frames - 1) * stride + 1))
        first = int(torch.randint(last + 1, (), generator=g))
        starts = [first]
        for _ in range(n - 1):
            lo, hi = max(0, first - self.gap), min(last, first + self.gap)
            starts.append(int(torch.randint(lo, hi + 1, (), generator=g)))
        return [[v[p].permute(1, 2, 0).numpy() for p in clip_indices(t, s, frames, stride)]
                for s in starts]  # fmt: skip
