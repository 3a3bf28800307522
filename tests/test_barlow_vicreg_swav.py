"""Barlow Twins, VICReg and SwAV: each loss against explicit loops and hand-computed values,
SwAV's codes, prototype freezing and normalisation, its queue and multi-crop, and the
losses' global-batch statistics under 2-process (gloo) distribution."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

import selfsup
from selfsup import dist
from selfsup.backbones import Backbone
from selfsup.losses.barlow_twins import BarlowTwinsLoss
from selfsup.losses.swav import SwAVLoss
from selfsup.losses.vicreg import VICRegLoss, covariance_term, variance_term
from selfsup.methods.barlowtwins import BarlowTwins, BarlowTwinsConfig
from selfsup.methods.base import StepInfo
from selfsup.methods.swav import SwAV, SwAVConfig
from selfsup.methods.vicreg import VICReg, VICRegConfig
from selfsup.modules import sinkhorn_knopp
from selfsup.transforms import MultiCropConfig


def tiny_backbone(dim: int = 8) -> Backbone:
    """A one-convolution network: fast, any input size, BatchNorm-free."""
    net = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone(net, dim, "tiny")


def tiny_swav(seed: int = 0, **kw: Any) -> SwAV:
    opts: dict[str, Any] = dict(proj_hidden_dim=16, proj_output_dim=8, num_prototypes=12)
    opts["views"] = MultiCropConfig(global_crops=2, local_crops=kw.pop("local_crops", 2))
    opts.update(kw)
    torch.manual_seed(seed)
    return SwAV(SwAVConfig(**opts), tiny_backbone())


def crops(b: int = 4, local: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 8, 8, generator=g) for _ in range(2)] + [
        torch.randn(b, 3, 4, 4, generator=g) for _ in range(local)
    ]


# ============================================================================ Barlow Twins


def reference_barlow(z0: torch.Tensor, z1: torch.Tensor, lam: float, eps: float = 1e-5) -> float:
    """Eq. 1-2 of Barlow Twins as explicit loops over samples and dimension pairs (i, j)."""
    n, d = z0.shape
    a, b = z0.double().tolist(), z1.double().tolist()

    def standardise(z: list[list[float]]) -> list[list[float]]:
        out = [[0.0] * d for _ in range(n)]
        for j in range(d):
            mean = sum(z[s][j] for s in range(n)) / n
            var = sum((z[s][j] - mean) ** 2 for s in range(n)) / n
            for s in range(n):
                out[s][j] = (z[s][j] - mean) / math.sqrt(var + eps)
        return out

    za, zb = standardise(a), standardise(b)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(za[s][i] * zb[s][j] for s in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lam * c_ij**2
    return loss


@pytest.mark.parametrize("lam", [0.0051, 0.5])
@pytest.mark.parametrize("n,d", [(2, 3), (5, 4), (16, 6)])
def test_barlow_matches_double_loop(n: int, d: int, lam: float) -> None:
    g = torch.Generator().manual_seed(10 * n + d)
    z0, z1 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 0.5
    got = float(BarlowTwinsLoss(lambda_offdiag=lam)(z0, z1))
    assert got == pytest.approx(reference_barlow(z0, z1, lam), rel=1e-5, abs=1e-6)


def test_barlow_hand_computed_values_and_scale() -> None:
    # Four samples whose two dimensions are standardised and uncorrelated: C = I for
    # identical views (loss ~0) and C = -I for negated ones (on-diagonal (1 - (-1))^2 each).
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    loss = BarlowTwinsLoss()
    assert float(loss(z, z.clone())) == pytest.approx(0.0, abs=1e-4)
    assert float(loss(z, -z)) == pytest.approx(8.0, rel=1e-4)
    # Fully correlated dimensions: C is all ones, so only the 2 off-diagonals count.
    zc = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0], [-2.0, -2.0]])
    assert float(BarlowTwinsLoss(lambda_offdiag=0.25)(zc, zc)) == pytest.approx(0.5, rel=1e-4)
    terms = loss.terms(z, -z)
    assert float(terms.on_diagonal) == pytest.approx(8.0, rel=1e-4)
    assert float(terms.off_diagonal) == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert float(BarlowTwinsLoss(scale_loss=0.1)(a, b)) == pytest.approx(0.1 * float(loss(a, b)))


def test_barlow_invariant_to_per_dimension_affine_maps() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
    scale, shift = torch.tensor([0.5, 2.0, 3.0, 10.0]), torch.tensor([1.0, -2.0, 0.0, 5.0])
    loss = BarlowTwinsLoss()
    assert float(loss(a * scale + shift, b)) == pytest.approx(float(loss(a, b)), rel=1e-4)


def test_barlow_bad_inputs() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        BarlowTwinsLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        BarlowTwinsLoss()(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="lambda_offdiag"):
        BarlowTwinsLoss(lambda_offdiag=-1.0)


def test_barlow_method_projector_and_logs() -> None:
    cfg = BarlowTwinsConfig(proj_hidden_dim=32, proj_output_dim=16)
    method = BarlowTwins(cfg, tiny_backbone())
    linears = [m for m in method.projection_head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 32), (32, 32), (32, 16)]
    assert all(m.bias is None for m in linears)
    assert BarlowTwins.needs_sync_batchnorm
    views = crops(b=6, local=0)
    loss, logs = method.training_step(views, StepInfo(0, 0.0))
    expected = method.criterion(method(views[0]), method(views[1]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(logs) == {"loss", "on_diag", "off_diag"}
    on, off = float(logs["on_diag"]), float(logs["off_diag"])
    assert loss.item() == pytest.approx(on + 0.0051 * off, rel=1e-5)


# ============================================================================ VICReg


def reference_vicreg_terms(z0: torch.Tensor, z1: torch.Tensor) -> tuple[float, float, float]:
    """Invariance, variance (mean of both branches) and covariance (sum of both) as loops."""
    n, d = z0.shape
    a, b = z0.double().tolist(), z1.double().tolist()
    inv = sum((a[s][j] - b[s][j]) ** 2 for s in range(n) for j in range(d)) / (n * d)

    def var_cov(z: list[list[float]]) -> tuple[float, float]:
        mean = [sum(z[s][j] for s in range(n)) / n for j in range(d)]
        cov = [
            [sum((z[s][i] - mean[i]) * (z[s][j] - mean[j]) for s in range(n)) / (n - 1)
             for j in range(d)]
            for i in range(d)
        ]  # fmt: skip
        hinge = sum(max(0.0, 1.0 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        off = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return hinge, off

    (va, ca), (vb, cb) = var_cov(a), var_cov(b)
    return inv, (va + vb) / 2, ca + cb


@pytest.mark.parametrize("n,d", [(2, 2), (6, 3), (16, 5)])
def test_vicreg_terms_and_total_match_loops(n: int, d: int) -> None:
    g = torch.Generator().manual_seed(n + 100 * d)
    z0 = torch.randn(n, d, generator=g) * 0.7
    z1 = z0 + 0.3 * torch.randn(n, d, generator=g)
    inv, var, cov = reference_vicreg_terms(z0, z1)
    loss = VICRegLoss(inv_weight=2.0, var_weight=3.0, cov_weight=0.5)
    terms = loss.terms(z0, z1)
    assert float(terms.invariance) == pytest.approx(inv, rel=1e-5, abs=1e-7)
    assert float(terms.variance) == pytest.approx(var, rel=1e-5, abs=1e-7)
    assert float(terms.covariance) == pytest.approx(cov, rel=1e-5, abs=1e-7)
    assert float(loss(z0, z1)) == pytest.approx(2.0 * inv + 3.0 * var + 0.5 * cov, rel=1e-5)
    default = float(VICRegLoss()(z0, z1))
    assert default == pytest.approx(25 * inv + 25 * var + 1 * cov, rel=1e-5)


def test_vicreg_hand_computed_terms() -> None:
    # Invariance: differences (0, 2, 0, -1) -> mean square 5/4.
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 5.0]])
    assert float(VICRegLoss().terms(a, b).invariance) == pytest.approx(1.25)
    # Variance hinge: a constant column has std sqrt(1e-4) = 0.01 -> hinge 0.99; the column
    # (-2, 2, -2, 2) has unbiased variance 16/3 -> std above 1 -> hinge 0. Mean: 0.495.
    z = torch.tensor([[0.0, -2.0], [0.0, 2.0], [0.0, -2.0], [0.0, 2.0]])
    assert float(variance_term(z)) == pytest.approx(0.495, rel=1e-6)
    # Covariance: rows (1, 1), (-1, -1): Cov = [[2, 2], [2, 2]]; off-diagonals 2 * 4, / d=2.
    zc = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert float(covariance_term(zc)) == pytest.approx(4.0)
    # Collapse: every embedding equal -> no invariance or covariance cost, full variance cost.
    const = torch.ones(8, 4)
    terms = VICRegLoss().terms(const, const.clone())
    assert float(terms.invariance) == 0.0 and float(terms.covariance) == 0.0
    assert float(terms.variance) == pytest.approx(0.99, rel=1e-6)


def test_vicreg_bad_inputs() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        VICRegLoss()(torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="at least 2"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="var_weight"):
        VICRegLoss(var_weight=-1.0)


def test_vicreg_method_logs_every_term() -> None:
    cfg = VICRegConfig(expander_hidden_dim=32, expander_output_dim=16)
    method = VICReg(cfg, tiny_backbone())
    linears = [m for m in method.expander if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [32, 32, 16]
    views = crops(b=6, local=0)
    loss, logs = method.training_step(views, StepInfo(0, 0.0))
    assert set(logs) == {"loss", "invariance", "variance", "covariance"}
    total = 25 * logs["invariance"] + 25 * logs["variance"] + logs["covariance"]
    assert loss.item() == pytest.approx(float(total), rel=1e-5)
    assert all(not v.requires_grad for v in logs.values())


# ============================================================================ SwAV loss


def reference_swav(scores: list[torch.Tensor], codes: list[torch.Tensor], t: float) -> float:
    """Swapped prediction over every (global crop, other crop) pair as explicit loops."""
    v_all, g = len(scores), len(codes)
    b, k = scores[0].shape
    total = 0.0
    for i in range(g):
        sub = 0.0
        for v in range(v_all):
            if v == i:
                continue
            for s in range(b):
                row = [float(scores[v][s, c]) / t for c in range(k)]
                log_z = math.log(sum(math.exp(x) for x in row))
                sub += -sum(float(codes[i][s, c]) * (row[c] - log_z) for c in range(k)) / b
        total += sub / (v_all - 1)
    return total / g


@pytest.mark.parametrize("t", [0.1, 0.5])
@pytest.mark.parametrize("n_views,n_global", [(2, 2), (4, 2), (3, 1)])
def test_swav_loss_matches_loops(n_views: int, n_global: int, t: float) -> None:
    g = torch.Generator().manual_seed(n_views * 10 + n_global)
    b, k = 3, 5
    scores = [torch.randn(b, k, generator=g).clamp(-1, 1) for _ in range(n_views)]
    codes = [torch.softmax(torch.randn(b, k, generator=g), dim=1) for _ in range(n_global)]
    got = float(SwAVLoss(t)(scores, codes))
    assert got == pytest.approx(reference_swav(scores, codes, t), rel=1e-5)


def test_swav_loss_hand_computed_and_no_gradient_through_codes() -> None:
    # Uniform scores: every prediction is uniform over K, so the loss is log K for any codes.
    scores = [torch.zeros(2, 4, requires_grad=True) for _ in range(3)]
    codes = [torch.tensor([[1.0, 0, 0, 0], [0, 0.5, 0.5, 0]], requires_grad=True)] * 2
    loss = SwAVLoss(0.1)(scores, codes)
    assert loss.item() == pytest.approx(math.log(4), rel=1e-6)
    loss.backward()
    assert codes[0].grad is None and scores[2].grad is not None
    # Confident, correct prediction: two crops with scores (1, -1) at t = 0.5 and one-hot
    # codes on the first prototype: -log(e^2 / (e^2 + e^-2)) = log(1 + e^-4).
    s = torch.tensor([[1.0, -1.0]])
    q = torch.tensor([[1.0, 0.0]])
    got = float(SwAVLoss(0.5)([s, s.clone()], [q, q.clone()]))
    assert got == pytest.approx(math.log(1 + math.exp(-4)), rel=1e-5)


def test_swav_loss_bad_inputs() -> None:
    with pytest.raises(ValueError, match="two crops"):
        SwAVLoss()([torch.zeros(2, 3)], [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="same"):
        SwAVLoss()([torch.zeros(2, 3), torch.zeros(2, 4)], [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="temperature"):
        SwAVLoss(0.0)


# ============================================================================ SwAV method


def test_swav_codes_come_from_shared_sinkhorn_and_are_equipartitioned() -> None:
    method = tiny_swav()
    g = torch.Generator().manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(12, 6, generator=g), dim=1) * 0.1
    q = method.codes(scores, 0, use_queue=False)
    assert torch.equal(q, sinkhorn_knopp(scores, 0.05, 3))
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)
    assert torch.allclose(q.sum(dim=0), torch.full((6,), 12 / 6), rtol=1e-2)
    # Sharp scores need more iterations for the prototypes' marginal to reach the prior.
    sharp = tiny_swav(sinkhorn_iterations=200)
    scores = torch.nn.functional.normalize(torch.randn(12, 6, generator=g), dim=1)
    q = sharp.codes(scores, 0, use_queue=False)
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)
    assert torch.allclose(q.sum(dim=0), torch.full((6,), 2.0), rtol=1e-2)
    assert not q.requires_grad


def test_swav_step_loss_is_swapped_prediction_over_all_crops() -> None:
    method = tiny_swav(local_crops=3)
    views = crops(local=3)
    loss, logs = method.training_step(views, StepInfo(0, 0.5))
    z = method._embed(views)
    assert len(z) == 5 and all(v.shape == (4, 8) for v in z)
    assert torch.allclose(torch.stack(z).norm(dim=-1), torch.ones(5, 4), atol=1e-5)
    scores = [method.scores(v) for v in z]
    codes = [method.codes(scores[i], i, use_queue=False) for i in range(2)]
    assert loss.item() == pytest.approx(method.criterion(scores, codes).item(), rel=1e-5)
    assert set(logs) == {"loss"}  # no queue configured


def test_swav_prototypes_frozen_then_trained() -> None:
    method = tiny_swav(freeze_prototypes=0.2)
    opt = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    before = method.prototypes.weight.detach().clone()
    for step, progress in enumerate([0.0, 0.1]):
        info = StepInfo(step, progress)
        loss, _ = method.training_step(crops(seed=step), info)
        opt.zero_grad()
        loss.backward()
        method.on_after_backward(info)
        grad = method.prototypes.weight.grad
        assert grad is not None and torch.count_nonzero(grad) == 0
        head_grad = method.projection_head[0].weight.grad
        assert head_grad is not None and torch.count_nonzero(head_grad) > 0
        opt.step()
        method.on_step_end(info)
    # Weight decay and momentum only rescaled them; renormalisation undid it.
    assert torch.allclose(method.prototypes.weight, before, atol=1e-6)
    info = StepInfo(2, 0.2)
    loss, _ = method.training_step(crops(seed=2), info)
    opt.zero_grad()
    loss.backward()
    method.on_after_backward(info)
    grad = method.prototypes.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    opt.step()
    method.on_step_end(info)
    assert not torch.allclose(method.prototypes.weight, before, atol=1e-4)


def test_swav_prototypes_stay_unit_norm() -> None:
    method = tiny_swav(freeze_prototypes=0.0)
    ones = torch.ones(12)
    assert torch.allclose(method.prototypes.weight.norm(dim=1), ones, atol=1e-6)
    opt = torch.optim.SGD(method.parameters(), lr=1.0)
    for step in range(3):
        info = StepInfo(step, 0.5)
        loss, _ = method.training_step(crops(seed=step), info)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(info)
        assert torch.allclose(method.prototypes.weight.norm(dim=1), ones, atol=1e-6)
    # Weights loaded from elsewhere are renormalised before they score anything.
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
    method.training_step(crops(), StepInfo(3, 0.5))
    assert torch.allclose(method.prototypes.weight.norm(dim=1), ones, atol=1e-6)


def test_swav_queue_fills_and_is_used_after_queue_start() -> None:
    method = tiny_swav(queue_size=8, queue_start=0.5)
    assert [q.queue.shape for q in method._queues()] == [(8, 8), (8, 8)]
    assert any(k.startswith("queues.0.") for k in method.state_dict())
    history: list[list[torch.Tensor]] = []
    for step, progress in enumerate([0.0, 0.2, 0.4]):
        info = StepInfo(step, progress)
        _, logs = method.training_step(crops(seed=step), info)
        assert float(logs["queue_used"]) == 0.0  # before queue_start, even once full
        history.append([z.clone() for z in method._pending])
        method.on_step_end(info)
    for i, queue in enumerate(method._queues()):
        assert len(queue) == 8
        # The last two steps' embeddings of global crop i, oldest first.
        assert torch.equal(queue.get(), torch.cat([history[1][i], history[2][i]]))

    info = StepInfo(3, 0.6)
    views = crops(seed=3)
    stored = [q.get().clone() for q in method._queues()]
    loss, logs = method.training_step(views, info)
    assert float(logs["queue_used"]) == 1.0
    z = method._embed(views)
    scores = [method.scores(v) for v in z]
    codes = []
    for i in range(2):
        with torch.no_grad():
            full = torch.cat([method.scores(stored[i]), scores[i]]).float()
        expected = sinkhorn_knopp(full, 0.05, 3)[-4:]
        got = method.codes(scores[i], i, use_queue=True)
        assert torch.allclose(got, expected, atol=1e-6)
        assert not torch.allclose(got, method.codes(scores[i], i, use_queue=False), atol=1e-4)
        codes.append(got)
    assert loss.item() == pytest.approx(method.criterion(scores, codes).item(), rel=1e-5)


def test_swav_multi_crop_transform_and_no_local_crops() -> None:
    cfg = selfsup.make_config("swav", image_size=32, overrides=["method.views.local_size=16"])
    method = selfsup.build_method(cfg)
    t = method.default_transform(32, [0.5] * 3, [0.25] * 3, 3)
    out = t(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8))
    assert [tuple(v.shape) for v in out] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4
    method2 = tiny_swav(local_crops=0)
    loss, _ = method2.training_step(crops(local=0), StepInfo(0, 0.5))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="global crops"):
        method2.training_step(crops(local=0)[:1], StepInfo(0, 0.5))
    with pytest.raises(ValueError, match="queue_start"):
        tiny_swav(queue_start=2.0)
    with pytest.raises(ValueError, match="at least two"):
        SwAV(SwAVConfig(views=MultiCropConfig(global_crops=1, local_crops=0)), tiny_backbone())


def test_losses_and_scores_stay_float32_under_bf16_autocast() -> None:
    # The Trainer runs training_step under bf16 autocast; a bf16 matmul would round the
    # cross-correlation, covariance and prototype scores to ~3 significant digits.
    g = torch.Generator().manual_seed(7)
    z0, z1 = torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g)
    method = tiny_swav()
    z = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    exact = [BarlowTwinsLoss()(z0, z1), VICRegLoss()(z0, z1), method.scores(z)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [BarlowTwinsLoss()(z0, z1), VICRegLoss()(z0, z1), method.scores(z)]
    for a, b in zip(got, exact, strict=True):
        assert a.dtype == torch.float32
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# ============================================================================ distributed

N, DIM, WORLD = 8, 5, 2


def _dist_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return {
        "x0": torch.randn(N, DIM, generator=g),
        "x1": torch.randn(N, DIM, generator=g),
        "w": torch.randn(DIM, DIM, generator=g),
        "queue": torch.randn(2, N, 8, generator=g),
        "scores": torch.randn(N, 12, generator=g).clamp(-1, 1),
    }


def _swav_dist_codes(method: SwAV, queue: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    method._pending = [queue[0], queue[0]]  # enqueue 4 per rank: gathered, all 8 on every rank
    method.on_step_end(StepInfo(0, 0.0))
    return method.codes(scores, 0, use_queue=True)


def _dist_worker(rank: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        data, b = _dist_inputs(), N // WORLD
        part = slice(rank * b, (rank + 1) * b)
        results: dict[str, Any] = {}
        for name, loss_fn in (("barlow", BarlowTwinsLoss()), ("vicreg", VICRegLoss())):
            w = data["w"].clone().requires_grad_(True)
            loss = loss_fn(data["x0"][part] @ w, data["x1"][part] @ w)
            loss.backward()
            assert w.grad is not None
            results[name] = (dist.all_reduce_mean(loss.detach()), dist.all_reduce_mean(w.grad))
        queue = data["queue"][:, part]
        results["swav"] = _swav_dist_codes(tiny_swav(queue_size=N), queue, data["scores"][part])
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_losses_use_the_global_batch_across_two_processes(tmp_path: Path) -> None:
    mp.start_processes(_dist_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")  # fmt: skip
    data = _dist_inputs()
    for name, loss_fn in (("barlow", BarlowTwinsLoss()), ("vicreg", VICRegLoss())):
        w = data["w"].clone().requires_grad_(True)
        loss = loss_fn(data["x0"] @ w, data["x1"] @ w)
        loss.backward()
        for rank in range(WORLD):
            got_loss, got_grad = torch.load(tmp_path / f"rank{rank}.pt")[name]
            assert float(got_loss) == pytest.approx(loss.item(), rel=1e-5), name
            assert torch.allclose(got_grad, w.grad, rtol=1e-4, atol=1e-5), name
    # SwAV: each rank's codes (its share of the gathered queue + its batch) equal the
    # single-process codes of the whole queue and batch.
    method = tiny_swav(queue_size=N)
    # Gathered order: rank 0's half of the queue tensor, then rank 1's.
    q = torch.cat([data["queue"][0, : N // 2], data["queue"][0, N // 2 :]])
    method._pending = [q, q]
    method.on_step_end(StepInfo(0, 0.0))
    full = method.codes(data["scores"], 0, use_queue=True)
    got = torch.cat([torch.load(tmp_path / f"rank{r}.pt")["swav"] for r in range(WORLD)])
    assert torch.allclose(got, full, atol=1e-5)


def test_swav_chance_loss_is_the_loss_of_equal_prototype_scores() -> None:
    m = tiny_swav()
    g = torch.Generator().manual_seed(0)
    scores = [torch.full((4, 12), 0.3) for _ in range(4)]
    codes = [torch.softmax(torch.randn(4, 12, generator=g), dim=1) for _ in range(2)]
    assert float(m.criterion(scores, codes)) == pytest.approx(m.chance_loss(4), rel=1e-5)
    assert m.chance_loss(4) == pytest.approx(math.log(12))


def test_swav_warns_when_embeddings_can_dodge_every_prototype() -> None:
    # With K <= D prototypes, a unit embedding in their orthogonal complement scores 0 against
    # all of them: the prediction is uniform and the loss is log(K) whatever the codes.
    with pytest.warns(UserWarning, match="orthogonal"):
        m = tiny_swav(num_prototypes=6)
    c = m.prototypes.weight.detach()  # (6, 8)
    null = torch.linalg.svd(c).Vh[-1]  # a direction orthogonal to the 6 prototypes
    z = torch.nn.functional.normalize(null.expand(4, 8), dim=1)
    scores = [m.scores(z) for _ in range(3)]
    assert scores[0].abs().max() < 1e-5
    g = torch.Generator().manual_seed(1)
    codes = [torch.softmax(torch.randn(4, 6, generator=g) * 5, dim=1) for _ in range(2)]
    assert float(m.criterion(scores, codes).detach()) == pytest.approx(math.log(6), rel=1e-5)
    # With more prototypes than dimensions there is no such direction: no warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_swav(num_prototypes=12)
