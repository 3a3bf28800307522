"""Shared building blocks: EMA, queue, Sinkhorn-Knopp, patch masking, multi-crop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.modules import (
    FeatureQueue,
    block_mask,
    ema_update,
    frozen_copy,
    random_masking,
    sinkhorn_knopp,
)
from selfsup.transforms import MultiCropConfig, local_crop_size, multi_crop


def test_ema_update_by_hand() -> None:
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = frozen_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(3.0)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=0.9)
    for t, s, b in zip(teacher.parameters(), student.parameters(), before, strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    assert torch.equal(teacher[1].running_mean, torch.full((2,), 3.0))  # buffers copied
    ema_update(teacher, student, momentum=1.0)  # momentum 1: frozen
    ema_update(teacher, student, momentum=0.0)  # momentum 0: a copy
    assert all(
        torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True)
    )


def test_queue_fifo_wraps_and_survives_state_dict() -> None:
    q = FeatureQueue(5, 2)
    assert len(q) == 0 and q.get().shape == (0, 2)
    q.enqueue(torch.tensor([[1.0, 1], [2, 2], [3, 3]]))
    assert q.get()[:, 0].tolist() == [1, 2, 3]
    q.enqueue(torch.tensor([[4.0, 4], [5, 5], [6, 6]]))
    assert len(q) == 5 and q.get()[:, 0].tolist() == [2, 3, 4, 5, 6]  # oldest first
    q2 = FeatureQueue(5, 2)
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2.get(), q.get())
    q.enqueue(torch.arange(14.0).view(7, 2))  # larger than the queue: keeps the newest
    assert q.get()[:, 0].tolist() == [4, 6, 8, 10, 12]


@pytest.mark.parametrize("b,k", [(8, 4), (6, 10), (32, 3)])
def test_sinkhorn_marginals(b: int, k: int) -> None:
    g = torch.Generator().manual_seed(b + k)
    scores = torch.randn(b, k, generator=g)
    q = sinkhorn_knopp(scores, epsilon=0.5, iterations=50)
    assert torch.allclose(q.sum(1), torch.ones(b), atol=1e-5)  # each sample: a distribution
    assert torch.allclose(q.sum(0), torch.full((k,), b / k), atol=1e-3)  # uniform prior
    # Few iterations still give rows that sum to 1 (the last normalisation is over samples).
    q3 = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert torch.allclose(q3.sum(1), torch.ones(b), atol=1e-5)
    # A prototype that every sample prefers still gets only its 1/K share.
    biased = scores.clone()
    biased[:, 0] += 5.0
    assert sinkhorn_knopp(biased, 0.5, 50).sum(0)[0] == pytest.approx(b / k, abs=1e-3)


def test_sinkhorn_equals_explicit_alternating_normalisation() -> None:
    scores = torch.tensor([[1.0, 0.0], [0.5, 0.2], [0.0, 2.0]])
    eps, iters = 0.5, 3
    q = torch.exp(scores / eps).T.double()
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(1, keepdim=True) * 2
        q /= q.sum(0, keepdim=True) * 3
    expected = (q * 3).T
    assert torch.allclose(sinkhorn_knopp(scores, eps, iters).double(), expected, atol=1e-6)


def test_random_masking() -> None:
    keep, mask, restore = random_masking(4, 16, 0.75, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (4, 4) and mask.shape == (4, 16)
    assert torch.all(mask.sum(1) == 12)
    for i in range(4):  # the kept patches are exactly the unmasked ones
        assert sorted(keep[i].tolist()) == torch.nonzero(mask[i] == 0).flatten().tolist()
    shuffled = torch.cat([keep, torch.nonzero(mask == 1)[:, 1].view(4, 12)], 1)
    assert torch.equal(
        torch.gather(shuffled, 1, restore).sort(1).values, torch.arange(16).expand(4, 16)
    )


def test_block_mask_ratio_range() -> None:
    m = block_mask(
        200, (8, 8), (0.1, 0.5), mask_prob=0.5, generator=torch.Generator().manual_seed(0)
    )
    frac = m.float().mean(1)
    masked = frac > 0
    assert 0.35 < masked.float().mean() < 0.65  # about half the images are masked
    assert frac[masked].min() >= 0.05 and frac.max() <= 0.6


def test_multi_crop_views() -> None:
    cfg = MultiCropConfig(global_crops=2, local_crops=4)
    t = multi_crop(cfg, 32, [0.5] * 3, [0.5] * 3)
    views = t(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8))
    small = local_crop_size(cfg, 32)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, small, small)] * 4
