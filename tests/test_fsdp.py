"""Sharded training (train.strategy=fsdp, FSDP2) on 2 CPU processes (gloo) with a tiny ViT
DINO: the same losses and weights (EMA teacher included) as one process on the same global
batch, an EMA update on the shards without communication, a checkpoint saved on 2 ranks that
resumes on 1 into the same next step, bf16 mixed precision, and activation checkpointing
that leaves the loss and gradients unchanged.

One ``mp.spawn`` does all the 2-process work (starting processes is the slow part)."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from conftest import make_images

import selfsup
from selfsup.config import ConfigError
from selfsup.methods.base import StepInfo
from selfsup.modules import ema_update
from selfsup.train import checkpoint as ckpt_io

WORLD = 2
BATCH = 8  # global
TINY = ["backbone.name=timm:vit_tiny_patch16_224",
        "backbone.kwargs={patch_size: 4, depth: 2, num_heads: 3}",
        "method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16",
        "method.views.local_crops=2"]  # fmt: skip
RUN = ["monitor.knn=false", "monitor.probe=false", "train.log_every=1", "data.augment=device",
       "train.precision=fp32", "method.freeze_last_layer=0", *TINY]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kw(data: Path, out: Path, batch: int, *extra: str, **more: Any) -> dict[str, Any]:
    kw = dict(method="dino", data=str(data), out=out, steps=3, batch_size=batch, image_size=16,
              workers=0, progress=False, overrides=[*RUN, *extra])  # fmt: skip
    return kw | more


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]


def _ema_without_communication(rank: int) -> dict[str, Any]:
    """Shard a method, step it once, and EMA-update its teacher under CommDebugMode."""
    from torch.distributed.tensor.debug import CommDebugMode

    from selfsup.train import fsdp

    cfg = selfsup.make_config("dino", image_size=16, seed=0, overrides=TINY)
    torch.manual_seed(0)
    method = selfsup.build_method(cfg).train()
    root = fsdp.shard(method, torch.device("cpu"), "fp32")
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(BATCH, 3, 16, 16, generator=g)[rank * 4 : rank * 4 + 4] for _ in range(2)]
    loss, _ = root(views, StepInfo(step=0, progress=0.5))
    loss.backward()
    with torch.no_grad():  # a stand-in for the optimiser: the student moves away
        for p in method.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-1.0)
    with CommDebugMode() as comm:  # DINO's centre update (an all-reduce) is left out
        for student, teacher in method.teacher_pairs():
            ema_update(teacher, student, 0.9)
    full = method.teacher_backbone.net.blocks[0].attn.qkv.weight.full_tensor()
    return {"comms": comm.get_total_counts(), "teacher_qkv": full}


def _worker(rank: int, port: int, runs: list[dict[str, Any]], out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    from selfsup.train import distributed

    distributed.setup()
    try:
        ema = _ema_without_communication(rank)
        for kw in runs:
            selfsup.pretrain(**kw)
        if rank == 0:
            torch.save(ema, out)
    finally:
        distributed.cleanup()


def test_fsdp_trains_as_one_process_and_resumes_on_fewer_ranks(tmp_path: Path) -> None:
    data = make_images(tmp_path / "imgs", classes=2, per_class=16)
    one, two, bf16 = tmp_path / "one", tmp_path / "two", tmp_path / "bf16"
    half = BATCH // WORLD
    runs = [
        _kw(data, two, half, "train.strategy=fsdp", stop_at_step=2),
        # bf16 compute and all-gathers, fp32 reduce-scatter; the kNN monitor runs on all ranks
        # (its queries from a separate folder, so the training images are the same).
        _kw(data, bf16, half, "train.strategy=fsdp", "train.precision=bf16", "monitor.knn=true",
            f"monitor.val_path={data}", "monitor.bank=16", "monitor.k=4", steps=2),
    ]  # fmt: skip
    mp.spawn(_worker, args=(_free_port(), runs, str(tmp_path / "ema.pt")), nprocs=WORLD)

    # The EMA update on the shards sends nothing and equals the EMA of the whole tensors.
    ema = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert ema["comms"] == 0
    cfg = selfsup.make_config("dino", image_size=16, seed=0, overrides=TINY)
    torch.manual_seed(0)
    ref = selfsup.build_method(cfg).train()
    g = torch.Generator().manual_seed(1)
    loss, _ = ref.training_step([torch.randn(BATCH, 3, 16, 16, generator=g) for _ in range(2)],
                                StepInfo(step=0, progress=0.5))  # fmt: skip
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-1.0)
    for student, teacher in ref.teacher_pairs():
        ema_update(teacher, student, 0.9)
    want = ref.teacher_backbone.net.blocks[0].attn.qkv.weight
    torch.testing.assert_close(ema["teacher_qkv"], want, atol=1e-5, rtol=1e-4)

    # One process on the global batch: stop at step 2, then finish.
    selfsup.pretrain(**_kw(data, one, BATCH, stop_at_step=2))
    a, b = ckpt_io.load(one), ckpt_io.load(two)
    assert b["optimizer"] is None and b["sharded"]["step"] == 2
    assert (two / "checkpoints" / "last.dcp" / ".metadata").is_file()
    assert any(k.startswith("teacher_backbone.") for k in b["method"])
    for k, v in a["method"].items():  # the full weights in last.pt: student and EMA teacher
        if v.is_floating_point():
            torch.testing.assert_close(b["method"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    selfsup.pretrain(resume=one, progress=False)

    # Saved on 2 ranks, resumed on 1 (the same global batch): the same next step.
    selfsup.pretrain(resume=two, progress=False, batch_size=BATCH)
    la, lb = _losses(one), _losses(two)
    assert len(la) == len(lb) == 3
    assert lb == pytest.approx(la, rel=1e-4)
    a, b = ckpt_io.load(one), ckpt_io.load(two)
    for k, v in a["method"].items():
        if v.is_floating_point():
            torch.testing.assert_close(b["method"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    assert (two / "checkpoints" / "previous.dcp" / ".metadata").is_file()
    # Export and evaluation read an fsdp run's last.pt like any other.
    assert selfsup.load_method(two).backbone.embed_dim == 192

    lc = _losses(bf16)
    assert len(lc) == 2 and lc == pytest.approx(la[:2], rel=0.05)
    with open(bf16 / "metrics.csv") as f:
        assert any(r.get("knn_top1") for r in csv.DictReader(f))


def test_activation_checkpointing_keeps_loss_and_gradients() -> None:
    from selfsup.train import fsdp

    cfg = selfsup.make_config("dino", image_size=16, seed=0, overrides=TINY)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)]
    out = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = selfsup.build_method(cfg).train()
        if ckpt:
            assert fsdp.checkpoint_activations(m.trainable_modules()) == 2
        loss, _ = m.training_step(views, StepInfo(step=0, progress=0.5))
        loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        out.append((loss.detach(), grads, set(m.state_dict())))
    (l0, g0, k0), (l1, g1, k1) = out
    torch.testing.assert_close(l1, l0)
    assert k1 == k0 and set(g1) == set(g0)  # parameter names are unchanged
    for n, grad in g0.items():
        torch.testing.assert_close(g1[n], grad, msg=n)


def test_strategy_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"train\.strategy must be ddp or fsdp"):
        selfsup.make_config("dino", overrides=["train.strategy=zero3"])
    with pytest.raises(ConfigError, match="fsdp does not run fp16"):
        selfsup.make_config("dino", overrides=["train.strategy=fsdp", "train.precision=fp16"])
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        from selfsup.train import fsdp

        fsdp.checkpoint_activations([torch.nn.Linear(2, 2)])
