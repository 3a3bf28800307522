"""MoCo v2, MoCo v3, BYOL and SimSiam: their losses against independent computations, and
the behaviour specific to each method (queue, momentum schedule, stop-gradient, key
gathering, frozen patch embedding, asymmetric views)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

import selfsup
from selfsup import dist
from selfsup.backbones import Backbone
from selfsup.losses.infonce import InfoNCELoss
from selfsup.losses.negative_cosine import NegativeCosineLoss
from selfsup.methods.base import Method, StepInfo
from selfsup.methods.byol import BYOL, BYOLConfig
from selfsup.methods.mocov2 import MoCoV2, MoCoV2Config
from selfsup.methods.mocov3 import MoCoV3, MoCoV3Config
from selfsup.methods.simsiam import SimSiam, SimSiamConfig

STEP0 = StepInfo(step=0, progress=0.0, epoch=0)


def tiny_backbone(seed: int = 0) -> Backbone:
    """A small conv net with BatchNorm: fast, and shaped like the real backbones."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Backbone(net, 8, "tiny")


def two_batches(b: int = 4, size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]


# ----------------------------------------------------------------------------- InfoNCE


def reference_queue_infonce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float
) -> float:
    """MoCo Eq. 1 with explicit loops: positive q.k+, negatives q.queue."""
    q, k, queue = (x.double() / x.double().norm(dim=1, keepdim=True) for x in (q, k, queue))
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(queue.shape[0]))
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def reference_inbatch_infonce(q: torch.Tensor, k: torch.Tensor, t: float) -> float:
    """In-batch InfoNCE with explicit loops: the key of the same image is the positive,
    every other key of the batch a negative."""
    q, k = (x.double() / x.double().norm(dim=1, keepdim=True) for x in (q, k))
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        num = math.exp(float(q[i] @ k[i]) / t)
        den = sum(math.exp(float(q[i] @ k[j]) / t) for j in range(n))
        total += -math.log(num / den)
    return total / n


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("n,d,kq", [(2, 3, 1), (5, 8, 7), (8, 4, 16)])
def test_infonce_with_queue_matches_reference(n: int, d: int, kq: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(n * 100 + d + kq)
    q, k = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    queue = torch.randn(kq, d, generator=g)
    got = float(InfoNCELoss(temperature)(q, k, queue))
    want = reference_queue_infonce(q, k, queue, temperature)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.2, 1.0])
@pytest.mark.parametrize("n,d", [(2, 3), (6, 5), (16, 8)])
def test_infonce_in_batch_matches_reference(n: int, d: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(n * 10 + d)
    q, k = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    got = float(InfoNCELoss(temperature)(q, k))
    assert got == pytest.approx(reference_inbatch_infonce(q, k, temperature), rel=1e-5, abs=1e-6)


def test_infonce_hand_computed_value() -> None:
    # Query equal to its key (similarity 1), two orthogonal negatives (similarity 0):
    # loss = -log(e^(1/t) / (e^(1/t) + 2)); unnormalised inputs give the same value.
    q = torch.tensor([[2.0, 0.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    t = 0.2
    want = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert float(InfoNCELoss(t)(q, q.clone() * 5, queue)) == pytest.approx(want, rel=1e-6)
    # An empty queue leaves only the positive: a 1-way softmax, loss 0.
    assert float(InfoNCELoss(t)(q, q, torch.zeros(0, 3))) == pytest.approx(0.0, abs=1e-7)


def test_infonce_keys_and_queue_get_no_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 6, generator=g, requires_grad=True)
    k = torch.randn(4, 6, generator=g, requires_grad=True)
    queue = torch.randn(5, 6, generator=g, requires_grad=True)
    loss = InfoNCELoss(0.2)(q, k, queue) + InfoNCELoss(0.2)(q, k)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_infonce_bad_inputs() -> None:
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)
    with pytest.raises(ValueError, match="equal shape"):
        InfoNCELoss()(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="negatives"):
        InfoNCELoss()(torch.randn(4, 8), torch.randn(4, 8), torch.randn(5, 7))


def test_mocov3_key_gathering_single_process_equals_in_batch() -> None:
    """One process: the gathered keys are the batch's own keys, so MoCo v3's loss is the
    in-batch cross-entropy with labels 0..N-1, times 2t, summed over both directions."""
    assert dist.world_size() == 1
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    t = 0.2
    on = float(InfoNCELoss(t, gather_distributed=True)(q, k))
    off = float(InfoNCELoss(t, gather_distributed=False)(q, k))
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / t
    explicit = float(F.cross_entropy(logits, torch.arange(6)))
    assert on == off == pytest.approx(explicit, rel=1e-6)

    method = MoCoV3(MoCoV3Config(temperature=t, proj_hidden_dim=16, proj_output_dim=8,
                                 pred_hidden_dim=16), tiny_backbone()).train()  # fmt: skip
    views = two_batches()
    q0, q1 = method(views[0]), method(views[1])
    k0, k1 = method.keys(views[0]), method.keys(views[1])
    loss = method.training_step(views, STEP0)[0].detach()
    want = (
        2
        * t
        * (
            reference_inbatch_infonce(q0.detach(), k1, t)
            + reference_inbatch_infonce(q1.detach(), k0, t)
        )
    )
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)


def test_infonce_gathers_keys_of_all_ranks_with_rank_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Simulate rank 1 of 2: its queries must find their positives at offset N among the
    keys of both ranks, and the loss equals the one-process loss of those rows."""
    g = torch.Generator().manual_seed(5)
    n, d, t = 3, 4, 0.5
    q_all, k_all = torch.randn(2 * n, d, generator=g), torch.randn(2 * n, d, generator=g)
    other = F.normalize(k_all[:n], dim=1)
    calls: list[bool] = []

    def fake_gather(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
        calls.append(with_grad)
        return torch.cat([other, x])

    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    monkeypatch.setattr(dist, "gather", fake_gather)
    got = float(InfoNCELoss(t)(q_all[n:], k_all[n:]))
    assert calls == [False]  # keys are gathered without gradient
    qn, kn = (x.double() / x.double().norm(dim=1, keepdim=True) for x in (q_all, k_all))
    want = 0.0
    for i in range(n, 2 * n):
        den = sum(math.exp(float(qn[i] @ kn[j]) / t) for j in range(2 * n))
        want += -math.log(math.exp(float(qn[i] @ kn[i]) / t) / den)
    assert got == pytest.approx(want / n, rel=1e-5)


# ----------------------------------------------------------------------------- negative cosine


def test_negative_cosine_hand_values() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    # cosines: 1 (parallel), 0 (orthogonal), -1 (opposite), 1/sqrt(2).
    cos = [1.0, 0.0, -1.0, 1 / math.sqrt(2)]
    assert float(NegativeCosineLoss("cosine")(p, z)) == pytest.approx(-sum(cos) / 4, rel=1e-6)
    byol = [2 - 2 * c for c in cos]  # 0, 2, 4, 2 - sqrt(2)
    assert float(NegativeCosineLoss("byol")(p, z)) == pytest.approx(sum(byol) / 4, rel=1e-6)
    # BYOL's form is the squared distance of the normalised vectors.
    mse = ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(1).mean()
    assert float(NegativeCosineLoss("byol")(p, z)) == pytest.approx(float(mse), rel=1e-6)


def test_negative_cosine_stop_gradient() -> None:
    g = torch.Generator().manual_seed(6)
    p = torch.randn(4, 5, generator=g, requires_grad=True)
    z = torch.randn(4, 5, generator=g, requires_grad=True)
    NegativeCosineLoss()(p, z).backward()
    assert p.grad is not None and z.grad is None  # the target branch gets no gradient
    p.grad = None
    NegativeCosineLoss(stop_gradient=False)(p, z).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_negative_cosine_bad_inputs() -> None:
    with pytest.raises(ValueError, match="form"):
        NegativeCosineLoss("l2")
    with pytest.raises(ValueError, match="equal shape"):
        NegativeCosineLoss()(torch.randn(4, 8), torch.randn(4, 7))


# ----------------------------------------------------------------------------- MoCo v2


def small_mocov2(**kw: object) -> MoCoV2:
    cfg = MoCoV2Config(queue_size=16, proj_hidden_dim=16, proj_output_dim=8, **kw)  # type: ignore[arg-type]
    return MoCoV2(cfg, tiny_backbone()).train()


def expected_keys(method: MoCoV2, x: torch.Tensor) -> torch.Tensor:
    """Keys as MoCo defines them: the momentum encoder's normalised output, computed on an
    independent copy (train mode: batch statistics, as in the step)."""
    bb, head = (
        copy.deepcopy(method.momentum_backbone),
        copy.deepcopy(method.momentum_projection_head),
    )
    with torch.no_grad():
        return F.normalize(head(bb(x)), dim=1)


def test_mocov2_queue_starts_full_of_unit_vectors() -> None:
    m = small_mocov2()
    q = m.queue.get()
    assert q.shape == (16, 8) and len(m.queue) == 16
    assert torch.allclose(q.norm(dim=1), torch.ones(16), atol=1e-5)


def test_mocov2_enqueues_keys_in_order_only_in_on_step_end() -> None:
    m = small_mocov2()
    opt = torch.optim.SGD([p for mod in m.trainable_modules() for p in mod.parameters()], lr=0.1)
    history = []
    for step in range(3):  # 3 steps x 8 keys > 16: the queue wraps around
        views = two_batches(seed=step)
        want = torch.cat([expected_keys(m, views[0]), expected_keys(m, views[1])])
        before = m.queue.get().clone()
        info = StepInfo(step=step, progress=step / 3)
        loss, _ = m.training_step(views, info)
        assert torch.equal(m.queue.get(), before)  # the loss used the old queue only
        loss.backward()
        opt.step()
        opt.zero_grad()
        m.on_step_end(info)
        history.append(want)
        got = m.queue.get()  # oldest first
        assert torch.allclose(got[-8:], want, atol=1e-6)  # view-0 keys, then view-1 keys
        if step >= 1:
            assert torch.allclose(got[-16:-8], history[-2], atol=1e-6)


def test_mocov2_asymmetric_enqueues_only_second_view_keys() -> None:
    m = small_mocov2(symmetric=False)
    views = two_batches()
    want = expected_keys(m, views[1])
    loss, _ = m.training_step(views, STEP0)
    m.on_step_end(STEP0)
    assert torch.allclose(m.queue.get()[-4:], want, atol=1e-6)
    # The loss is MoCo's single direction: query from view 0 against key from view 1.
    assert torch.isfinite(loss)


def test_mocov2_loss_is_symmetric_infonce_against_the_queue() -> None:
    m = small_mocov2(temperature=0.2)
    views = two_batches()
    queue = m.queue.get().clone()
    k0, k1 = expected_keys(m, views[0]), expected_keys(m, views[1])
    with torch.no_grad():
        q0, q1 = m(views[0]), m(views[1])
    loss, _ = m.training_step(views, STEP0)
    want = 0.5 * (
        reference_queue_infonce(q0, k1, queue, 0.2) + reference_queue_infonce(q1, k0, queue, 0.2)
    )
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------- momentum


def ema_methods() -> list[tuple[Method, list[tuple[nn.Module, nn.Module]]]]:
    """Each EMA method with its (teacher, student) pairs."""
    v2m = MoCoV2(MoCoV2Config(queue_size=8, proj_hidden_dim=16, proj_output_dim=8,
                              momentum=0.99, momentum_end=1.0), tiny_backbone())  # fmt: skip
    v3m = MoCoV3(MoCoV3Config(proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=16),
                 tiny_backbone())  # fmt: skip
    byol = BYOL(BYOLConfig(proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=16),
                tiny_backbone())  # fmt: skip
    return [
        (v2m, [(v2m.momentum_backbone, v2m.backbone),
               (v2m.momentum_projection_head, v2m.projection_head)]),
        (v3m, [(v3m.momentum_backbone, v3m.backbone),
               (v3m.momentum_projection_head, v3m.projection_head)]),
        (byol, [(byol.target_backbone, byol.backbone),
                (byol.target_projection_head, byol.projection_head)]),
    ]  # fmt: skip


def test_momentum_schedule_values() -> None:
    for method, _ in ema_methods():
        m = method.momentum_at  # type: ignore[operator]
        assert m(0.0) == pytest.approx(0.99), method.name
        assert m(1.0) == pytest.approx(1.0), method.name
        assert m(0.5) == pytest.approx(0.995), method.name  # cosine midpoint
        # BYOL's formula: 1 - (1 - base) (cos(pi k / K) + 1) / 2.
        assert m(0.25) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    # MoCo v2's default keeps the momentum constant, as in MoCo.
    const = small_mocov2()
    assert const.momentum_at(0.0) == const.momentum_at(1.0) == pytest.approx(0.99)


def test_on_step_end_applies_the_scheduled_momentum() -> None:
    for method, pairs in ema_methods():
        with torch.no_grad():  # move the student away from the teacher
            for _, student in pairs:
                for p in student.parameters():
                    p.add_(torch.randn_like(p))
        before = [[p.clone() for p in t.parameters()] for t, _ in pairs]
        method.on_step_end(StepInfo(step=9, progress=1.0))  # momentum 1: teacher frozen
        for (teacher, _), old in zip(pairs, before, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), old, strict=True))
        method.on_step_end(StepInfo(step=0, progress=0.0))  # momentum 0.99
        for (teacher, student), old in zip(pairs, before, strict=True):
            for t, s, o in zip(teacher.parameters(), student.parameters(), old, strict=True):
                assert torch.allclose(t, 0.99 * o + 0.01 * s, atol=1e-6), method.name


# ----------------------------------------------------------------------------- BYOL / SimSiam


def test_byol_loss_is_the_papers_symmetrised_sum_and_target_gets_no_gradient() -> None:
    m = BYOL(BYOLConfig(proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=16),
             tiny_backbone()).train()  # fmt: skip
    views = two_batches()
    with torch.no_grad():
        p0, p1 = m(views[0]), m(views[1])
        z0, z1 = m.target(views[0]), m.target(views[1])

    def d(p: torch.Tensor, z: torch.Tensor) -> float:
        return float((2 - 2 * F.cosine_similarity(p, z, dim=1)).mean())

    loss, _ = m.training_step(views, STEP0)
    assert float(loss.detach()) == pytest.approx(d(p0, z1) + d(p1, z0), rel=1e-5)
    loss.backward()
    for mod in (m.target_backbone, m.target_projection_head):
        assert all(p.grad is None and not p.requires_grad for p in mod.parameters())
    assert all(p.grad is not None for p in m.predictor.parameters())


def simsiam_grads(m: SimSiam, views: list[torch.Tensor], detach: bool) -> list[torch.Tensor]:
    m.zero_grad()
    z0, p0 = m(views[0])
    z1, p1 = m(views[1])
    if detach:
        z0, z1 = z0.detach(), z1.detach()
    loss = -0.5 * (
        F.cosine_similarity(p0, z1, dim=1).mean() + F.cosine_similarity(p1, z0, dim=1).mean()
    )
    loss.backward()
    return [p.grad.clone() for p in m.parameters()]  # type: ignore[union-attr]


def test_simsiam_stop_gradient_on_the_target_branch() -> None:
    m = SimSiam(SimSiamConfig(proj_hidden_dim=16, proj_output_dim=16, pred_hidden_dim=4),
                tiny_backbone()).train()  # fmt: skip
    views = two_batches(b=6)
    with_sg = simsiam_grads(m, views, detach=True)
    without_sg = simsiam_grads(m, views, detach=False)
    m.zero_grad()
    loss, logs = m.training_step(views, STEP0)
    loss.backward()
    got = [p.grad for p in m.parameters()]
    # Gradients flow only through the predictions: equal to the explicit stopgrad version,
    # not to the version that also differentiates through the targets.
    assert all(
        g is not None and torch.allclose(g, w, atol=1e-6) for g, w in zip(got, with_sg, strict=True)
    )
    assert any(
        not torch.allclose(w, n, atol=1e-6) for w, n in zip(with_sg, without_sg, strict=True)
    )
    assert -1.0 <= float(loss.detach()) <= 1.0 and float(logs["z_std"]) > 0


def test_simsiam_heads_follow_the_paper() -> None:
    m = SimSiam(SimSiamConfig(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=4,
                              proj_layers=3), tiny_backbone())  # fmt: skip
    linears = [x for x in m.projection_head if isinstance(x, nn.Linear)]
    assert [lin.out_features for lin in linears] == [32, 32, 16]
    last_bn = m.projection_head[-1]
    assert isinstance(last_bn, nn.BatchNorm1d) and not last_bn.affine  # BN on the output
    assert [x.out_features for x in m.predictor if isinstance(x, nn.Linear)] == [4, 16]


# ----------------------------------------------------------------------------- MoCo v3 / ViT


def tiny_vit_config(**method: object) -> selfsup.Config:
    overrides = ["backbone.kwargs={patch_size: 4, depth: 1, num_heads: 3}"]
    overrides += [f"method.{k}={str(v).lower()}" for k, v in method.items()]
    overrides += ["method.proj_hidden_dim=16", "method.pred_hidden_dim=16"]
    return selfsup.make_config("mocov3", backbone="timm:vit_tiny_patch16_224", image_size=16,
                               overrides=overrides)  # fmt: skip


def test_mocov3_freeze_patch_embed_on_vit() -> None:
    m = selfsup.build_method(tiny_vit_config(freeze_patch_embed=True)).train()
    assert isinstance(m, MoCoV3)
    frozen = {id(p) for p in m.backbone.net.get_submodule("patch_embed").parameters()}
    assert frozen and all(not p.requires_grad for p in m.backbone.parameters() if id(p) in frozen)
    loss, _ = m.training_step([torch.randn(4, 3, 16, 16) for _ in range(2)], STEP0)
    loss.backward()
    for name, p in m.backbone.named_parameters():
        if id(p) in frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None, name
    trainable = {
        id(p) for mod in m.trainable_modules() for p in mod.parameters() if p.requires_grad
    }
    assert not frozen & trainable
    # Without the option the patch embedding trains.
    free = selfsup.build_method(tiny_vit_config())
    assert all(p.requires_grad for p in free.backbone.net.get_submodule("patch_embed").parameters())


def test_mocov3_freeze_patch_embed_needs_a_vit() -> None:
    with pytest.raises(ValueError, match="freeze_patch_embed"):
        MoCoV3(MoCoV3Config(freeze_patch_embed=True), tiny_backbone())


def test_mocov3_heads_follow_the_paper() -> None:
    m = MoCoV3(MoCoV3Config(proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=12),
               tiny_backbone())  # fmt: skip
    assert [x.out_features for x in m.projection_head if isinstance(x, nn.Linear)] == [16, 16, 8]
    last = m.projection_head[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine  # last BN without affine
    assert [x.out_features for x in m.predictor if isinstance(x, nn.Linear)] == [12, 8]


# ----------------------------------------------------------------------------- views


def _ops(view: object, kind: type) -> list[nn.Module]:
    return [t for t in view.transforms if isinstance(t, kind)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls,cfg", [(BYOL, BYOLConfig()), (MoCoV3, MoCoV3Config())])
def test_byol_views_are_asymmetric_and_blur_only_above_64px(cls: type[Method], cfg: object) -> None:
    m = cls(cfg, tiny_backbone())  # type: ignore[call-arg]
    small = m.default_transform(32, [0.5] * 3, [0.25] * 3).transforms
    assert len(small) == 2
    for view in small:
        blurs = [
            t for t in _ops(view, v2.RandomApply) if isinstance(t.transforms[0], v2.GaussianBlur)
        ]
        assert not blurs
    sol = [_ops(view, v2.RandomSolarize) for view in small]
    assert sol[0] == [] and sol[1][0].p == pytest.approx(0.2)
    big = m.default_transform(96, [0.5] * 3, [0.25] * 3).transforms
    probs = []
    for view in big:
        blurs = [
            t for t in _ops(view, v2.RandomApply) if isinstance(t.transforms[0], v2.GaussianBlur)
        ]
        probs.append(blurs[0].p)
    assert probs == pytest.approx([1.0, 0.1])
    jitter = _ops(big[0], v2.RandomApply)[0].transforms[0]
    assert isinstance(jitter, v2.ColorJitter)
    assert jitter.brightness == pytest.approx((0.6, 1.4)) and jitter.saturation == pytest.approx(
        (0.8, 1.2)
    )
    assert jitter.hue == pytest.approx((-0.1, 0.1))
