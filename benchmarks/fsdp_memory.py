"""Peak memory per rank, DDP against FSDP (``train.strategy``), for DINO on ViT-S/B/L with
2 CPU processes (gloo), in one command:

    python benchmarks/fsdp_memory.py                       # ViT-S/16, B/16, L/16 (L at 12 blocks)
    python benchmarks/fsdp_memory.py --quick               # ViT-S/16 at 4 blocks: a check

Each (model, strategy) pair runs in 2 fresh processes: build the DINO method (student, EMA
teacher, head of 4096 prototypes; AdamW), wrap it as the trainer does (DDP around the
trainable modules, or FSDP2 per transformer block), then train ``--steps`` steps on random
views (2 global crops at ``--image-size`` px, ``--batch`` per rank, fp32).

Measured (glibc returning large freed blocks at once, ``MALLOC_MMAP_THRESHOLD_``): the peak
resident memory (VmHWM) of each process during the training steps minus
its resident memory before the model was built. The high-water mark is reset
(``/proc/self/clear_refs``) after wrapping, so the transient whole model that every rank
builds before FSDP shards it is left out (meta-device initialisation would avoid it in a
real run). Compared with the analytic bytes of parameters + gradients + AdamW's two moments
(+ the frozen teacher, + DDP's gradient buckets), which are what sharding divides by the
number of ranks; activations are not sharded, so the measured ratio is smaller. "at rest":
after wrapping, before the first step (parameters, DDP's buckets; no gradients or AdamW
moments yet).

Reduced sizes, stated in the table: resolution 64 px (16 patches), and ViT-L at 12 of its
24 blocks by default (``--large-depth 24`` for the whole model: about 15 GB on 2 DDP ranks).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

MODELS = {"ViT-S/16": ("vit_small_patch16_224", 12), "ViT-B/16": ("vit_base_patch16_224", 12),
          "ViT-L/16": ("vit_large_patch16_224", 24)}  # fmt: skip
WORLD = 2
MB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    # Writing 5 resets the peak resident set size (VmHWM) to the current one.
    Path("/proc/self/clear_refs").write_text("5")


def _worker(rank: int, port: int, spec: dict[str, Any], out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec["threads"])
    import selfsup
    from selfsup.methods.base import StepInfo
    from selfsup.train import distributed, fsdp
    from selfsup.train.optim import build_optimizer

    distributed.setup()
    size, batch = spec["image_size"], spec["batch"]
    cfg = selfsup.make_config("dino", image_size=size, seed=0, overrides=[
        f"backbone.name=timm:{spec['timm']}", f"backbone.kwargs={{depth: {spec['depth']}}}",
        "method.views.local_crops=0", "optim.name=adamw", "train.precision=fp32",
    ])  # fmt: skip
    gc.collect()
    rss0 = _status_kib("VmRSS")
    method = selfsup.build_method(cfg).train()
    trainable = sum(p.numel() for m in method.trainable_modules() for p in m.parameters())
    total = sum(p.numel() for p in method.parameters())
    if spec["strategy"] == "fsdp":
        step_fn: Any = fsdp.shard(method, torch.device("cpu"), "fp32")
    else:
        step_fn = distributed.wrap(method, torch.device("cpu"))
    opt = build_optimizer(method.trainable_modules(), cfg.optim, 1e-4)
    gc.collect()
    _reset_peak()
    rss_model = _status_kib("VmRSS")
    g = torch.Generator().manual_seed(rank)
    t0 = time.perf_counter()
    for i in range(spec["steps"]):
        views = [torch.randn(batch, 3, size, size, generator=g) for _ in range(2)]
        info = StepInfo(step=i, progress=i / spec["steps"])
        loss, _ = step_fn(views, info)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_step_end(info)
    step_s = (time.perf_counter() - t0) / spec["steps"]
    res = {"rank": rank, "peak_mb": (_status_kib("VmHWM") - rss0) / 1024,
           "at_rest_mb": (rss_model - rss0) / 1024, "step_s": step_s,
           "trainable": trainable, "frozen": total - trainable}  # fmt: skip
    Path(f"{out}.{rank}").write_text(json.dumps(res))
    distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def analytic_mb(trainable: int, frozen: int, strategy: str) -> float:
    """fp32 bytes per rank of parameters, gradients, AdamW moments and the frozen teacher
    (DDP adds its gradient buckets; FSDP divides all of it by the number of ranks)."""
    if strategy == "ddp":
        return 4 * (trainable * (1 + 1 + 2 + 1) + frozen) / MB
    return 4 * (trainable * (1 + 1 + 2) + frozen) / WORLD / MB


def run(spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "res")
        mp.spawn(_worker, args=(_free_port(), spec, out), nprocs=WORLD, join=True)
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(WORLD)]
    worst = max(ranks, key=lambda r: r["peak_mb"])
    return worst | {"analytic_mb": analytic_mb(worst["trainable"], worst["frozen"],
                                               spec["strategy"])}  # fmt: skip


def main() -> None:
    # glibc keeps freed blocks for reuse (its mmap threshold grows as large blocks are freed),
    # so resident memory would not fall when FSDP frees the whole parameters it sharded. A
    # fixed threshold returns every large block to the system: RSS follows live tensors.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--models", default="ViT-S/16,ViT-B/16,ViT-L/16")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=4, help="images per rank")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--large-depth", type=int, default=12, help="blocks of ViT-L (paper: 24)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--quick", action="store_true", help="ViT-S/16 at 4 blocks, 32 px, 1 step")
    a = p.parse_args()
    names = ["ViT-S/16"] if a.quick else a.models.split(",")
    size = 32 if a.quick else a.image_size
    steps = 1 if a.quick else a.steps
    print(f"DINO, {WORLD} CPU processes (gloo), fp32, AdamW, {size} px, batch {a.batch}/rank, "
          f"{steps} steps; MB per rank (the larger of the two ranks)")  # fmt: skip
    head = (f"{'model':<10}{'blocks':>7}{'params':>9}  {'strategy':<9}{'peak':>9}{'at rest':>9}"
            f"{'analytic':>10}{'s/step':>8}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name in names:
        timm_name, depth = MODELS[name]
        depth = 4 if a.quick else (a.large_depth if name == "ViT-L/16" else depth)
        got = {}
        for strategy in ("ddp", "fsdp"):
            spec = dict(timm=timm_name, depth=depth, image_size=size, batch=a.batch,
                        steps=steps, threads=a.threads, strategy=strategy)  # fmt: skip
            r = got[strategy] = run(spec)
            params = f"{(r['trainable'] + r['frozen']) / 1e6:.0f}M"
            print(f"{name:<10}{depth:>7}{params:>9}  {strategy:<9}{r['peak_mb']:>9.0f}"
                  f"{r['at_rest_mb']:>9.0f}{r['analytic_mb']:>10.0f}{r['step_s']:>8.2f}",
                  flush=True)  # fmt: skip
        d, f = got["ddp"], got["fsdp"]
        print(f"{'':<10}{'':>7}{'':>9}  {'fsdp/ddp':<9}{f['peak_mb'] / d['peak_mb']:>9.2f}"
              f"{f['at_rest_mb'] / d['at_rest_mb']:>9.2f}"
              f"{f['analytic_mb'] / d['analytic_mb']:>10.2f}{f['step_s'] / d['step_s']:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
