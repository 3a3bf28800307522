"""NT-Xent against an independent, explicit computation."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import NTXentLoss


def reference_ntxent(z0: torch.Tensor, z1: torch.Tensor, t: float) -> float:
    """Eq. 1 of SimCLR, written as explicit loops over the 2N anchors."""
    z = torch.cat([z0, z1]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = i + n if i < n else i - n
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("n,d", [(2, 3), (5, 8), (16, 4)])
def test_matches_reference(n: int, d: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(n * 100 + d)
    z0, z1 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    got = float(NTXentLoss(temperature)(z0, z1))
    assert got == pytest.approx(reference_ntxent(z0, z1, temperature), rel=1e-5, abs=1e-6)


def test_hand_computed_value() -> None:
    # Two images, positives identical, negatives orthogonal: every anchor sees similarity 1
    # with its positive and 0 with both negatives. loss = -log(e^(1/t) / (e^(1/t) + 2)).
    z0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert float(NTXentLoss(t)(z0, z0.clone())) == pytest.approx(expected, rel=1e-6)


def test_symmetric_in_views_and_scale_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    loss = NTXentLoss(0.2)
    assert float(loss(z0, z1)) == pytest.approx(float(loss(z1, z0)), rel=1e-6)
    assert float(loss(3 * z0, 0.5 * z1)) == pytest.approx(float(loss(z0, z1)), rel=1e-5)


def test_temperature_matters_and_random_loss_near_log() -> None:
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(64, 128, generator=g), torch.randn(64, 128, generator=g)
    # Near-orthogonal random embeddings at t=1: every logit ~0, so loss ~ log(2N - 1).
    assert float(NTXentLoss(1.0)(z0, z1)) == pytest.approx(math.log(127), rel=0.02)
    assert float(NTXentLoss(0.1)(z0, z1)) != pytest.approx(float(NTXentLoss(1.0)(z0, z1)), rel=0.01)


def test_gradient_pulls_positives_together() -> None:
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(4, 8, generator=g, requires_grad=True)
    z1 = torch.randn(4, 8, generator=g)
    loss = NTXentLoss(0.5)(z0, z1)
    loss.backward()
    with torch.no_grad():
        stepped = z0 - 0.1 * z0.grad
        assert float(NTXentLoss(0.5)(stepped, z1)) < float(loss)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError, match="equal shape"):
        NTXentLoss()(torch.randn(4, 8), torch.randn(3, 8))


def test_extra_negatives_join_every_anchors_denominator() -> None:
    # Explicit loops: the extra embeddings add exp(sim / t) to every anchor's denominator.
    g = torch.Generator().manual_seed(2)
    z0, z1, neg = (torch.randn(4, 6, generator=g) for _ in range(3))
    t = 0.3
    z = torch.cat([z0, z1]).double()
    z = z / z.norm(dim=1, keepdim=True)
    m = neg.double() / neg.double().norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(8):
        j = (i + 4) % 8
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(8) if k != i)
        den += sum(math.exp(float(z[i] @ m[k]) / t) for k in range(4))
        total += -math.log(num / den)
    got = float(NTXentLoss(t)(z0, z1, neg))
    assert got == pytest.approx(total / 8, rel=1e-5)
    # A negative equal to an anchor's positive makes that anchor's task harder.
    assert float(NTXentLoss(t)(z0, z1, z1[:1])) > float(NTXentLoss(t)(z0, z1))
