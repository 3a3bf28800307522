"""Images/s of the training data path from WebDataset shards against the same images as a
folder, in one command: on CIFAR-10 (../shared/datasets/cifar10/train) and on generated
larger JPEGs; with the peak memory of each, and of the shards at two data sizes (memory
stays flat).

Each measurement runs in its own process: the loader of a training run with on-device
augmentation (decode, shrink to ``--cap`` short side, batch onto a canvas) over ``--workers``
workers, for ``--seconds`` or one epoch. Memory is the peak of the summed proportional set
size (PSS: shared pages split between the processes that share them) of the process and its
loader workers, sampled every 0.2 s.

    python benchmarks/shards.py                                    # the full benchmark
    python benchmarks/shards.py --limit 2000 --big 200 --seconds 20  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The shared data sets: $SELFSUP_DATASETS (as the tests use it), else ../shared/datasets.
DATASETS = Path(os.environ.get("SELFSUP_DATASETS") or ROOT.parent / "shared" / "datasets")
CIFAR = DATASETS / "cifar10" / "train"


def link_subset(src: Path, dest: Path, limit: int) -> Path:
    """``dest`` with links to the first ``limit`` images of ``src`` spread over its classes."""
    classes = sorted(p for p in src.iterdir() if p.is_dir())
    per = -(-limit // len(classes))
    for c in classes:
        (dest / c.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(c.iterdir())[:per]:
            (dest / c.name / f.name).symlink_to(f.resolve())
    return dest


def make_jpegs(dest: Path, n: int, side: int, seed: int = 0) -> Path:
    """``n`` photo-like JPEGs (smooth colour fields with texture) of about ``side`` px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0 : side * 4 // 3].astype(np.float32) / side
    for i in range(n):
        d = dest / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 6, 3)
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * xx * yy)], -1)
        noise = rng.normal(0, 0.15, base.shape)
        img = ((base + noise) * 0.5 + 0.5).clip(0, 1) * 255
        Image.fromarray(img.astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=90)
    return dest


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:  # the process ended
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    parent: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parent.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parent.get(p, []))
    return out


class PeakMemory:
    """Peak summed PSS (MB) of this process and its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.2) -> None:
        import threading

        self.peak_kb, self.every = 0, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in _tree(os.getpid())))
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def measure(kind: str, data: str, workers: int, batch: int, cap: int, seconds: float,
            buffer: int) -> dict:  # fmt: skip
    """Images/s of one loader (``kind`` folder or shards) over ``data``; peak memory in MB
    (PSS of the process and its workers)."""
    import torch
    from torch.utils.data import DataLoader

    from selfsup.data import EpochSampler, ImageDataset, collate_canvas, loader_kwargs, scan_folder
    from selfsup.data.shards import ShardLoader, ShardStream, open_shards

    torch.set_num_threads(1)
    if kind == "folder":
        src = scan_folder(data)
        sampler = EpochSampler(len(src), batch, 0, 0)
        it = DataLoader(ImageDataset(src, cap=cap), batch_size=batch, sampler=sampler,
                        collate_fn=collate_canvas, **loader_kwargs(workers))  # fmt: skip
        n = len(src)
    else:
        shards = open_shards(data)
        stream = ShardStream(shards, batch, batch, seed=0, cap=cap, buffer=buffer)
        it = ShardLoader(stream, batch, workers, collate_canvas, False)  # type: ignore[assignment]
        n = len(shards)
    memory = PeakMemory()
    images, t0, first = 0, time.perf_counter(), None
    for canvas, *_ in it:
        images += canvas.shape[0]
        if first is None:  # worker start-up is not throughput
            first, images = time.perf_counter(), 0
        if time.perf_counter() - t0 > seconds:
            break
    dt = time.perf_counter() - (first or t0)
    peak = memory.stop()  # before the workers end
    return {"images_per_s": images / max(dt, 1e-9), "peak_mb": peak, "n": n}


def run(kind: str, data: Path, a: argparse.Namespace, buffer: int | None = None) -> dict:
    args = [sys.executable, __file__, "--measure", kind, str(data), "--workers", str(a.workers),
            "--batch", str(a.batch), "--cap", str(a.cap), "--seconds", str(a.seconds),
            "--buffer", str(buffer or a.buffer)]  # fmt: skip
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(name: str, folder: Path, tmp: Path, a: argparse.Namespace) -> None:
    from selfsup.data.shards import write_shards

    t0 = time.perf_counter()
    index = write_shards(folder, tmp / f"{name}-shards", a.shard_size, progress=False,
                         min_shards=a.min_shards)  # fmt: skip
    took = time.perf_counter() - t0
    f = run("folder", folder, a)
    s = run("shards", tmp / f"{name}-shards", a)
    print(f"{name}: {index['samples']} images, {len(index['shards'])} shards "
          f"(written in {took:.1f}s)")  # fmt: skip
    print(f"  folder  {f['images_per_s']:9.1f} img/s   peak memory {f['peak_mb']:7.1f} MB")
    print(f"  shards  {s['images_per_s']:9.1f} img/s   peak memory {s['peak_mb']:7.1f} MB")
    print(f"  ratio shards/folder: {s['images_per_s'] / f['images_per_s']:.2f}x speed, "
          f"{s['peak_mb'] / f['peak_mb']:.2f}x memory")  # fmt: skip


def flat_memory(folder: Path, tmp: Path, a: argparse.Namespace) -> None:
    """Peak memory of the shard reader on the generated JPEGs and on four times as many
    samples (each file linked four times), with a shuffle buffer of ``--memory-buffer`` a
    worker; both sets are larger than what the loader holds at once (workers x prefetch x
    batch, plus the buffers), so any growth would come from the data's size."""
    from selfsup.data.shards import write_shards

    files = sorted(p for p in folder.rglob("*.jpg"))
    four = tmp / "four"
    for copy in range(4):
        for p in files:
            (four / p.parent.name).mkdir(parents=True, exist_ok=True)
            (four / p.parent.name / f"{copy}-{p.name}").symlink_to(p.resolve())
    write_shards(four, tmp / "four-shards", a.shard_size, progress=False,
                 min_shards=a.min_shards)  # fmt: skip
    b = a.memory_buffer
    small = run("shards", tmp / "big-shards", a, b)["peak_mb"]
    large = run("shards", tmp / "four-shards", a, b)["peak_mb"]
    print(f"memory (shuffle buffer {b} a worker): shards peak {small:.1f} MB on "
          f"{len(files)} images, {large:.1f} MB on {4 * len(files)} "
          f"({large / small:.2f}x for 4x the data)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar", default=str(CIFAR), help="CIFAR-10 train folder")
    p.add_argument("--limit", type=int, default=50_000, help="CIFAR images used")
    p.add_argument("--big", type=int, default=5_000, help="generated JPEGs")
    p.add_argument("--big-side", type=int, default=480, help="their short side in px")
    p.add_argument("--cap", type=int, default=256, help="decoded images shrunk to this side")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60, help="per measurement (or one epoch)")
    p.add_argument("--shard-size", type=int, default=100_000_000, help="bytes per shard at most")
    p.add_argument(
        "--min-shards",
        type=int,
        default=64,
        help="shards at least (as selfsup data shard's default)",
    )
    p.add_argument(
        "--buffer",
        type=int,
        default=1000,
        help="shuffle buffer a worker (data.shuffle_buffer's default)",
    )
    p.add_argument(
        "--memory-buffer",
        type=int,
        default=200,
        help="shuffle buffer a worker for the memory line",
    )
    p.add_argument("--measure", nargs=2, metavar=("KIND", "DATA"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(*a.measure, a.workers, a.batch, a.cap, a.seconds, a.buffer)))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        compare("cifar10", link_subset(Path(a.cifar), tmp / "cifar", a.limit), tmp, a)
        big = make_jpegs(tmp / "big", a.big, a.big_side)
        compare("big", big, tmp, a)
        flat_memory(big, tmp, a)


if __name__ == "__main__":
    main()
