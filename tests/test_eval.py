"""kNN and linear probe against hand computations and separable data."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.eval import knn_classify, knn_scores, linear_probe, topk_accuracy


def test_knn_scores_by_hand() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[2.0, 0.1]])
    t = 0.5
    scores = knn_scores(bank, labels, q, k=2, temperature=t, num_classes=2)
    qn = q / q.norm()
    sims = [float(qn @ (b / b.norm())) for b in bank]
    # The two nearest are bank[0] (class 0) and bank[2] (class 1).
    expected = torch.tensor([[math.exp(sims[0] / t), math.exp(sims[2] / t)]])
    assert torch.allclose(scores, expected, rtol=1e-5)


def test_knn_classify_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    bank, test = torch.randn(50, 6, generator=g), torch.randn(20, 6, generator=g)
    lb, lt = torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (20,), generator=g)
    res = knn_classify(bank, lb, test, lt, k=7, temperature=0.2)
    correct = 0
    for i in range(20):
        sims = torch.nn.functional.cosine_similarity(test[i : i + 1], bank)
        top = sims.topk(7)
        votes = torch.zeros(4)
        for s, j in zip(top.values, top.indices, strict=True):
            votes[lb[j]] += math.exp(float(s) / 0.2)
        correct += int(votes.argmax() == lt[i])
    assert res.top1 == pytest.approx(100 * correct / 20)
    assert res.n_train == 50 and res.n_test == 20 and res.k == 7


def test_topk_accuracy() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.3, 0.3, 0.4]])
    labels = torch.tensor([1, 1, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(100 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(100.0)


def test_linear_probe_learns_separable_data_and_reports_sweep() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 32, generator=g) * 0.6
    y = torch.randint(0, 5, (1000,), generator=g)
    x = centers[y] + torch.randn(1000, 32, generator=g)
    yt = torch.randint(0, 5, (300,), generator=g)
    xt = centers[yt] + torch.randn(300, 32, generator=g)
    res = linear_probe(x, y, xt, yt, lrs=(1e-7, 0.1), weight_decays=(0.0,), epochs=10)
    assert res.top1 > 90 and res.val_top1 > 90
    assert res.n_val == 100 and res.n_train == 900
    assert len(res.sweep) == 2 and res.lr == 0.1  # the tiny lr cannot win
    # Shuffled labels: no better than chance (20%), up to noise.
    yr = y[torch.randperm(1000, generator=g)]
    ytr = yt[torch.randperm(300, generator=g)]
    assert linear_probe(x, yr, xt, ytr, epochs=5).top1 < 35
