"""The one supervised loop on a hand-made task: it learns, keeps the best weights, respects
its step budget and patience, and a run resumed from a checkpoint ends with the same
weights as an uninterrupted one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from selfsup.train.supervised import LoopConfig, SupervisedLoop


class Interrupted(Exception):
    pass


class Blobs:
    """Two classes split by a line in 2-D; a linear classifier. Input noise in the loss
    draws from the global RNG, so a resume must restore it to match."""

    def __init__(self, noise: float = 0.0, fail_at: int | None = None, flat: bool = False) -> None:
        self.model = nn.Linear(2, 2)
        self.noise, self.fail_at, self.flat = noise, fail_at, flat
        self.calls = 0

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.model.weight]}, {"params": [self.model.bias], "lr_scale": 0.5}]

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted
        x, y = batch
        logits = self.model(x + self.noise * torch.randn_like(x))
        return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean()}

    def eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return self.model(x).argmax(1), y

    def metrics(self, outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        pred, y = (torch.cat(t) for t in zip(*outputs, strict=True))
        acc = float((pred == y).float().mean() * 100)
        return {"score": 50.0 if self.flat else acc, "accuracy": acc}


def blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


CFG = LoopConfig(epochs=4, batch_size=32, lr=0.5, device="cpu", precision="fp32",
                 num_workers=0, progress=False)  # fmt: skip


def test_loop_learns_and_keeps_the_best_weights() -> None:
    logged: list[dict[str, float]] = []
    loop = SupervisedLoop(Blobs, CFG, log=logged.append)
    val = blobs(128, 1)
    report = loop.fit(blobs(256, 0), val)
    assert report.steps == report.total_steps == 4 * 8 and report.stopped == "epochs"
    assert report.epochs[-1]["loss"] < 0.5 * report.epochs[0]["loss"]
    assert report.best_score > 90 and "acc" in report.epochs[0]  # chance: 50
    assert len(report.evaluations) == 4 and len(logged) == 8  # 4 epochs + 4 evaluations
    assert report.best_score == max(e["score"] for e in report.evaluations)
    assert loop.evaluate(val)["score"] == report.best_score  # the kept weights


def test_step_budget_and_patience_end_the_run() -> None:
    task = Blobs()
    report = SupervisedLoop(task, replace(CFG, epochs=5, max_steps=11)).fit(blobs(256, 0))
    assert report.steps == task.calls == 11 and report.epochs_run == 2
    assert report.stopped == "steps" and report.epochs[-1]["lr"] > 0
    flat = Blobs(flat=True)  # never improves after the first evaluation
    report = SupervisedLoop(flat, replace(CFG, epochs=10, patience=2)).fit(
        blobs(64, 0), blobs(32, 1)
    )
    assert report.stopped == "patience" and report.epochs_run == 3 and report.best_epoch == 1


def test_resume_from_a_checkpoint_gives_the_same_weights(tmp_path: Path) -> None:
    train, val = blobs(200, 0), blobs(64, 1)  # 200 / 32: 6 batches an epoch, last dropped
    cfg = replace(CFG, epochs=3, checkpoint_every=4, keep_best=False)
    whole = SupervisedLoop(lambda: Blobs(noise=0.3), replace(cfg, checkpoint_dir=tmp_path / "a"))
    expected = whole.fit(train, val)
    folder = tmp_path / "b"
    crashing = SupervisedLoop(
        lambda: Blobs(noise=0.3, fail_at=11), replace(cfg, checkpoint_dir=folder)
    )
    with pytest.raises(Interrupted):  # during step 11: the checkpoint of step 8 is mid-epoch 2
        crashing.fit(train, val)
    resumed = SupervisedLoop(
        lambda: Blobs(noise=0.3), replace(cfg, checkpoint_dir=folder, resume=True)
    )
    report = resumed.fit(train, val)
    assert report.resumed_at == 8 and report.steps == expected.steps == 18
    assert report.evaluations == expected.evaluations
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    # Resuming a finished run trains no further.
    again = SupervisedLoop(
        lambda: Blobs(noise=0.3), replace(cfg, checkpoint_dir=folder, resume=True)
    )
    assert again.fit(train, val).steps == 18
    assert torch.equal(again.model.weight, whole.model.weight)
