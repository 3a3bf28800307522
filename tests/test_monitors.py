"""Collapse signals and the online probe."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import make_images

import selfsup
from selfsup.train.monitors import OnlineProbe, collapse_stats, loss_stuck


def test_collapse_fires_on_constant_and_rank_one_embeddings() -> None:
    g = torch.Generator().manual_seed(0)
    const = collapse_stats(torch.ones(64, 128))
    assert (
        const.collapsed and const.std_ratio == pytest.approx(0.0, abs=1e-6) and const.rankme == 1.0
    )
    u = torch.randn(128, generator=g)
    rank1 = collapse_stats(torch.randn(64, 1, generator=g) * u)
    assert rank1.collapsed and rank1.rankme < 1.01 and "effective rank" in rank1.reason


def test_collapse_silent_on_healthy_embeddings() -> None:
    g = torch.Generator().manual_seed(0)
    gauss = collapse_stats(torch.randn(64, 128, generator=g))
    assert not gauss.collapsed and gauss.std_ratio == pytest.approx(1.0, abs=0.05)
    assert gauss.rankme > 40
    # Post-ReLU features (all positive, like a ResNet's) with a few independent directions.
    relu = collapse_stats(
        torch.relu(torch.randn(64, 16, generator=g) @ torch.randn(16, 128, generator=g))
    )
    assert not relu.collapsed


def test_rankme_by_hand() -> None:
    # Rows spanning two orthogonal directions equally: singular values equal -> rank 2.
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert collapse_stats(z).rankme == pytest.approx(2.0, rel=1e-3)


def test_loss_stuck_at_chance() -> None:
    chance = math.log(255)
    assert loss_stuck(chance * 1.01, chance, progress=0.5, step=1000)
    assert not loss_stuck(chance * 0.8, chance, progress=0.5, step=1000)
    assert not loss_stuck(chance, chance, progress=0.05, step=1000)  # too early to judge
    assert not loss_stuck(chance, chance, progress=0.5, step=20)  # too few steps
    assert not loss_stuck(chance, chance, progress=0.3, step=150)  # short run, judged later
    assert loss_stuck(chance, chance, progress=0.5, step=150)  # ... once half of it has gone
    assert not loss_stuck(chance, chance, progress=0.9, step=49)
    assert not loss_stuck(chance, None, progress=0.5, step=1000)


def test_online_probe_learns() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 3
    probe = OnlineProbe(8, 3, lr=1e-2)
    accs = []
    for _ in range(60):
        y = torch.randint(0, 3, (32,), generator=g)
        accs.append(probe.step(centers[y] + torch.randn(32, 8, generator=g), y))
    assert accs[0] is not None and sum(accs[-10:]) / 10 > 90  # type: ignore[arg-type]
    assert probe.step(torch.randn(4, 8), torch.full((4,), -1)) is None  # no labels: no step


def test_trainer_logs_probe_and_collapse_signals(tmp_path: Path) -> None:
    data = make_images(tmp_path / "imgs", classes=2, per_class=12)
    run = tmp_path / "run"
    selfsup.pretrain("simclr", data=str(data), out=run, steps=3, batch_size=8, image_size=16,
                     workers=0, progress=False,
                     overrides=["monitor.knn=false", "train.log_every=1", "method.proj_hidden_dim=32"])  # fmt: skip
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["loss"]]
    assert len(rows) == 3
    for r in rows:
        assert 0 <= float(r["probe_acc"]) <= 100
        assert float(r["rankme"]) >= 1 and float(r["std_ratio"]) >= 0
        assert r["collapse"] in ("0", "1")
