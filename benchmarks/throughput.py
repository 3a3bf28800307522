"""Training throughput of selfsup against lightly, one after the other in one command.

Both sides train SimCLR with the same recipe (../shared/BASELINE.md): ResNet-18 with the
small-image stem, projection head 512-512-128, NT-Xent (temperature 0.5), SGD lr 0.06 x
batch/256, batch 256, two views of 32 px crops (colour jitter 0.5, no blur), ImageNet
normalisation, 2 data workers. Each side runs for the same wall-clock time; images/s counts
source images (each gives two views). Also measured: the model step alone (random tensors)
and the data pipeline alone.

lightly is not a dependency of selfsup: install it in the benchmark's own environment,

    python -m venv --system-site-packages /tmp/lightly-env && /tmp/lightly-env/bin/pip install lightly
    python benchmarks/throughput.py --lightly-python /tmp/lightly-env/bin/python --seconds 180
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "train"

LIGHTLY_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, torch, torchvision
    from torch import nn
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    data, seconds, batch, workers, mode = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(int(sys.argv[6]))
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    head = SimCLRProjectionHead(512, 512, 128)
    crit = NTXentLoss()
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.06 * batch / 256, momentum=0.9, weight_decay=5e-4)
    tf = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    ds = torchvision.datasets.ImageFolder(data, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    images, wait, t0, warm_up = 0, 0.0, time.perf_counter(), True
    if mode == "model":
        x0, x1 = torch.randn(batch, 3, 32, 32), torch.randn(batch, 3, 32, 32)
    it = iter(loader)
    while time.perf_counter() - t0 < seconds:
        tw = time.perf_counter()
        if mode != "model":
            try:
                (x0, x1), _ = next(it)
            except StopIteration:
                it = iter(loader)
                (x0, x1), _ = next(it)
        wait += time.perf_counter() - tw
        if mode != "data":
            loss = crit(head(net(x0)), head(net(x1)))
            opt.zero_grad(); loss.backward(); opt.step()
        images += x0.shape[0]
        if warm_up:  # the first step warms up: time from its end
            t0, images, wait, warm_up = time.perf_counter(), 0, 0.0, False
    dt = time.perf_counter() - t0
    print(json.dumps({"img_per_s": images / dt, "data_wait": wait / dt, "images": images}))
    """
)


def run_lightly(python: str, mode: str, a: argparse.Namespace) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(LIGHTLY_SCRIPT)
    out = subprocess.run(
        [python, f.name, a.data, str(a.seconds), str(a.batch_size), str(a.workers), mode,
         str(a.threads)], capture_output=True, text=True,
    )  # fmt: skip
    os.unlink(f.name)
    if out.returncode != 0:
        raise SystemExit(f"lightly run failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def selfsup_train(a: argparse.Namespace, precision: str, augment: str = "cpu") -> dict[str, float]:
    import selfsup

    with tempfile.TemporaryDirectory() as tmp:
        res = selfsup.pretrain(
            "simclr", data=a.data, out=Path(tmp) / "run", max_time=f"{a.seconds}s",
            batch_size=a.batch_size, workers=a.workers, precision=precision, lr=0.06,
            progress=False, image_size=32, threads=a.threads,
            overrides=["monitor.knn=false", "monitor.probe=false", "monitor.collapse=false",
                       "method.views.blur_prob=[0.0]", "optim.weight_decay=5e-4",
                       f"data.augment={augment}"],
        )  # fmt: skip
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    return {"img_per_s": res.images_per_s, "images": res.state.images_seen,
            "peak_mib": summary["peak_memory_mb"]}  # fmt: skip


def selfsup_model(
    a: argparse.Namespace, precision: str, channels_last: bool, compile: bool = False
) -> dict[str, float]:
    import selfsup
    from selfsup.methods.base import StepInfo
    from selfsup.runtime import autocast

    torch.set_num_threads(a.threads)
    m = selfsup.create_method("simclr", image_size=32)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if compile:
        m.compile()  # what train.compile=true does (the first steps below pay for it)
    opt = torch.optim.SGD(m.parameters(), lr=0.06, momentum=0.9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    views = [torch.randn(a.batch_size, 3, 32, 32).contiguous(memory_format=fmt) for _ in range(2)]
    dev = torch.device("cpu")
    # Untimed warm-up steps: one (three when compiling: tracing and recompiles).
    images, t0, warm_up = 0, time.perf_counter(), 3 if compile else 1
    while time.perf_counter() - t0 < a.seconds or warm_up:
        with autocast(dev, precision):
            loss, _ = m.training_step(views, StepInfo(0, 0.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if warm_up:
            warm_up -= 1
            t0 = time.perf_counter()
            continue
        images += a.batch_size
    return {"img_per_s": images / (time.perf_counter() - t0)}


def selfsup_data(a: argparse.Namespace, augment: str = "cpu") -> dict[str, float]:
    """Batches of two views per second: per image in the workers (augment=cpu), or decoded
    in the workers and augmented batch-wise in this process (augment=device, on the CPU)."""
    from torch.utils.data import DataLoader

    import selfsup
    from selfsup.data import (
        EpochSampler,
        ImageDataset,
        ViewDataset,
        collate_canvas,
        collate_views,
        loader_kwargs,
        scan_folder,
    )  # fmt: skip
    from selfsup.transforms.batched import BatchedViews

    torch.set_num_threads(a.threads)
    src = scan_folder(a.data)
    m = selfsup.create_method("simclr", image_size=32)
    m.cfg.views.blur_prob = [0.0]
    mv = m.default_transform(32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    sampler = EpochSampler(len(src), a.batch_size, 0, 0)
    batched = BatchedViews(mv.specs) if augment == "device" and mv.specs else None
    if batched is not None:
        ds: ImageDataset | ViewDataset = ImageDataset(src, cap=batched.decode_cap())
        collate = collate_canvas
    else:
        ds, collate = ViewDataset(src, mv), collate_views
    loader = DataLoader(ds, batch_size=a.batch_size, sampler=sampler, collate_fn=collate,
                        **loader_kwargs(a.workers, persistent=True))  # fmt: skip
    images, t0, first = 0, time.perf_counter(), True
    for batch in loader:
        views = batched(batch[0], batch[1], batch[2]) if batched is not None else batch[0]
        if first:
            t0, first = time.perf_counter(), False
            continue
        images += views[0].shape[0]
        if time.perf_counter() - t0 > min(a.seconds, 60):
            break
    return {"img_per_s": images / (time.perf_counter() - t0)}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=str(CIFAR), help="ImageFolder of training images")
    p.add_argument(
        "--seconds", type=float, default=180, help="time per end-to-end run (default: 180)"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--lightly-python", default=sys.executable,
                   help="a python that can import lightly (default: this one)")  # fmt: skip
    p.add_argument("--skip-lightly", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="also time the model step under torch.compile (train.compile=true)")  # fmt: skip
    p.add_argument("--parts", default="train,model,data",
                   help="which measurements: any of train, model, data (default: all)")  # fmt: skip
    a = p.parse_args()

    rows: list[tuple[str, float]] = []

    def show(name: str, r: dict[str, float]) -> None:
        rows.append((name, r["img_per_s"]))
        print(f"{name:<44} {r['img_per_s']:8.1f} img/s   {json.dumps(r)}", flush=True)

    parts = set(a.parts.split(","))
    lightly = not a.skip_lightly
    if "train" in parts:
        if lightly:
            show("lightly end-to-end (fp32, its recipe)", run_lightly(a.lightly_python, "train", a))
        show("selfsup end-to-end (bf16 auto, channels_last)", selfsup_train(a, "auto"))
        show("selfsup end-to-end (bf16, batched augment)", selfsup_train(a, "auto", "device"))
        show("selfsup end-to-end (fp32)", selfsup_train(a, "fp32"))
    if "model" in parts:
        if lightly:
            show("lightly model only (fp32)", run_lightly(a.lightly_python, "model", a))
        show("selfsup model only (fp32)", selfsup_model(a, "fp32", False))
        show("selfsup model only (fp32, channels_last)", selfsup_model(a, "fp32", True))
        show("selfsup model only (bf16, channels_last)", selfsup_model(a, "bf16", True))
        if a.compile:
            show("selfsup model only (bf16, cl, torch.compile)",
                 selfsup_model(a, "bf16", True, compile=True))  # fmt: skip
    if "data" in parts:
        if lightly:
            show("lightly data only", run_lightly(a.lightly_python, "data", a))
        show("selfsup data only (per image in workers)", selfsup_data(a))
        show("selfsup data only (decode in workers, batched)", selfsup_data(a, "device"))
    if lightly and "train" in parts:
        base = rows[0][1]
        print("\nratios against lightly end-to-end:")
        for name, v in rows:
            print(f"  {name:<44} {v / base:5.2f}x")


if __name__ == "__main__":
    main()
