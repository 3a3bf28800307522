"""Distributed training on 2 CPU processes (gloo) equals 1 process on the same global batch:
same loss, same gradients, for SimCLR (negatives gathered across ranks, global BatchNorm)
and BYOL (synchronised BatchNorm, EMA teacher untouched by DDP); and a resumed 2-process run
continues the same schedule."""

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
from selfsup.methods.base import StepInfo

WORLD = 2
BATCH = 8  # global


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(rank: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip


def _method(name: str) -> selfsup.Method:
    cfg = selfsup.make_config(name, image_size=16, seed=0,
                              overrides=["method.proj_hidden_dim=64"] if name == "simclr"
                              else ["method.proj_hidden_dim=64", "method.pred_hidden_dim=64"])  # fmt: skip
    return selfsup.build_method(cfg)


def _views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.randn(BATCH, 3, 16, 16, generator=g) for _ in range(2)]


def _worker(rank: int, port: int, name: str, out: str) -> None:
    _env(rank, port)
    torch.set_num_threads(1)
    from selfsup.modules.sync_batchnorm import convert_sync_batchnorm
    from selfsup.train import distributed

    distributed.setup()
    method = _method(name).train()
    if method.needs_sync_batchnorm:
        convert_sync_batchnorm(method, torch.device("cpu"))
    ddp = distributed.wrap(method, torch.device("cpu"))
    half = BATCH // WORLD
    views = [v[rank * half : (rank + 1) * half] for v in _views()]
    loss, _ = ddp(views, StepInfo(step=0, progress=0.0))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    frozen_grads = [
        n for n, p in method.named_parameters() if not p.requires_grad and p.grad is not None
    ]
    losses = distributed.gather_objects(float(loss.detach()))
    if rank == 0:
        torch.save({"losses": losses, "grads": grads, "frozen_grads": frozen_grads}, out)
    distributed.cleanup()


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_two_processes_equal_one_process(name: str, tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), name, str(out)), nprocs=WORLD, join=True)
    got: dict[str, Any] = torch.load(out, weights_only=True)
    ref = _method(name).train()
    loss, _ = ref.training_step(_views(), StepInfo(step=0, progress=0.0))
    loss.backward()
    # The mean of the ranks' losses is the single-process loss over the global batch ...
    assert sum(got["losses"]) / WORLD == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-6)
    # ... and DDP's averaged gradients are its gradients, parameter by parameter.
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert set(got["grads"]) == set(ref_grads)
    for n, g in ref_grads.items():
        diff = float((got["grads"][n] - g).norm())
        # Relative where the gradient is not ~0 (a bias before BatchNorm has none at all).
        assert diff <= 1e-4 * float(g.norm()) + 1e-5, (n, diff, float(g.norm()))
    assert got["frozen_grads"] == []  # the EMA teacher is never touched by DDP


def _pretrain_worker(rank: int, port: int, kw: dict[str, Any]) -> None:
    _env(rank, port)
    torch.set_num_threads(1)
    from selfsup.train import distributed

    try:
        selfsup.pretrain(**kw)
    finally:
        distributed.cleanup()


def _losses(run: Path) -> list[tuple[str, str]]:
    with open(run / "metrics.csv") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f) if r["loss"]]


def test_resumed_distributed_run_continues_the_same_schedule(tmp_path: Path) -> None:
    data = make_images(tmp_path / "imgs", classes=2, per_class=16)
    base: dict[str, Any] = dict(method="simclr", data=str(data), steps=6, batch_size=4,
                                image_size=16, workers=0, progress=False,
                                overrides=["monitor.knn=false", "train.log_every=1",
                                           "method.proj_hidden_dim=32"])  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    mp.spawn(_pretrain_worker, args=(_free_port(), {**base, "out": full}), nprocs=WORLD, join=True)
    mp.spawn(_pretrain_worker, args=(_free_port(), {**base, "out": part, "stop_at_step": 3}),
             nprocs=WORLD, join=True)  # fmt: skip
    state = selfsup.train.checkpoint.load(part)["state"]
    assert state["step"] == 3 and state["images_seen"] == 3 * 8  # global batch 2 x 4
    mp.spawn(_pretrain_worker, args=(_free_port(), {"resume": part, "progress": False}),
             nprocs=WORLD, join=True)  # fmt: skip
    assert _losses(part) == _losses(full) and len(_losses(full)) == 6
    a = selfsup.train.checkpoint.load(full)["method"]
    b = selfsup.train.checkpoint.load(part)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_device_augmentation_makes_two_processes_train_as_one(tmp_path: Path) -> None:
    """With data.augment=device every sample's views come from its own seed, so 2 processes
    of 4 images train exactly as 1 process of 8: the same global-batch loss at every step
    and the same weights at the end."""
    data = make_images(tmp_path / "imgs", classes=2, per_class=16)
    base: dict[str, Any] = dict(method="simclr", data=str(data), steps=3, image_size=16,
                                workers=0, progress=False,
                                overrides=["monitor.knn=false", "train.log_every=1",
                                           "method.proj_hidden_dim=32", "data.augment=device",
                                           "train.precision=fp32"])  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    selfsup.pretrain(**base, out=one, batch_size=BATCH)
    mp.spawn(_pretrain_worker, args=(_free_port(), {**base, "out": two, "batch_size": BATCH // WORLD}),
             nprocs=WORLD, join=True)  # fmt: skip
    la, lb = _losses(one), _losses(two)
    assert [s for s, _ in la] == [s for s, _ in lb] == ["1", "2", "3"]
    for (_, a), (_, b) in zip(la, lb, strict=True):
        assert float(b) == pytest.approx(float(a), rel=1e-4), (la, lb)
    a = selfsup.train.checkpoint.load(one)["method"]
    b = selfsup.train.checkpoint.load(two)["method"]
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
