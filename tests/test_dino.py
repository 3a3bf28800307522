"""DINO and DINOv2: losses against explicit computations, head, schedules, centring,
last-layer freezing, the EMA teacher, masking and the attention pictures."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import selfsup
from selfsup.backbones.vit_tools import forward_any_size, last_block_attention
from selfsup.config import ConfigError
from selfsup.heads.dino import DINOHead
from selfsup.losses.dino import DINOLoss, update_center
from selfsup.losses.ibot import IBOTPatchLoss
from selfsup.losses.koleo import KoLeoLoss
from selfsup.methods.base import StepInfo
from selfsup.methods.dino import DINO, teacher_temperature
from selfsup.methods.dinov2 import DINOv2, masks_for_batch
from selfsup.modules import vit_local_size
from selfsup.transforms import MultiCropConfig

SIZE = 16
TINY_VIT = "backbone.kwargs={patch_size: 4, depth: 2, num_heads: 3}"
# Small heads keep the tests quick; the behaviour does not depend on the sizes.
SMALL_HEAD = ["method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16"]


def build(name: str, vit: bool, *overrides: str) -> Any:
    backbone = "timm:vit_tiny_patch16_224" if vit else "resnet18"
    extra = [TINY_VIT] if vit else []
    cfg = selfsup.make_config(name, backbone=backbone, image_size=SIZE,
                              overrides=[*extra, *SMALL_HEAD, *overrides])  # fmt: skip
    return selfsup.build_method(cfg).train()


def crops(batch: int = 4, local: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(batch, 3, SIZE, SIZE, generator=g) for _ in range(2)]
    return views + [torch.randn(batch, 3, 8, 8, generator=g) for _ in range(local)]


# ----------------------------------------------------------------------------- DINO loss


def reference_dino(
    student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
    t_temp: float, s_temp: float,
) -> float:  # fmt: skip
    """DINO Eq. 1 with explicit loops over crop pairs (i != j), images and prototypes."""
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for j, s in enumerate(student):
            if i == j:
                continue
            pair = 0.0
            for b in range(t.shape[0]):
                tz = [(float(t[b, k]) - float(center[k])) / t_temp for k in range(t.shape[1])]
                sz = [float(s[b, k]) / s_temp for k in range(s.shape[1])]
                t_den = sum(math.exp(v - max(tz)) for v in tz)
                s_lse = max(sz) + math.log(sum(math.exp(v - max(sz)) for v in sz))
                pair += -sum(
                    math.exp(tz[k] - max(tz)) / t_den * (sz[k] - s_lse) for k in range(len(tz))
                )
            total += pair / t.shape[0]
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("n_teacher,n_student", [(2, 2), (2, 5), (1, 3), (3, 4)])
def test_dino_loss_matches_explicit_loop(n_teacher: int, n_student: int) -> None:
    g = torch.Generator().manual_seed(n_teacher * 10 + n_student)
    b, k = 3, 5
    student = [torch.randn(b, k, generator=g) for _ in range(n_student)]
    teacher = [torch.randn(b, k, generator=g) for _ in range(n_teacher)]
    center = torch.randn(k, generator=g) * 0.3
    got = float(DINOLoss(0.1)(student, teacher, center.unsqueeze(0), 0.05))
    want = reference_dino(student, teacher, center, 0.05, 0.1)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_dino_loss_skips_same_crop_pairs() -> None:
    # Teacher crop 0 equals student crop 0 and nothing else: were the (0, 0) pair counted,
    # the loss would change when student crop 0 alone moves while teacher 0 pairs with it.
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(4, 6, generator=g)]
    student = [torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)]
    loss = DINOLoss(0.1)
    base = float(loss(student, teacher, torch.zeros(6), 0.04))
    moved = [student[0] + 5 * torch.randn(4, 6, generator=g), student[1]]
    assert float(loss(moved, teacher, torch.zeros(6), 0.04)) == pytest.approx(base, rel=1e-6)


def test_dino_loss_gradient_reaches_student_only_and_runs_in_float32() -> None:
    s = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]
    t = [torch.randn(4, 8, requires_grad=True) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DINOLoss(0.1)([x.bfloat16() for x in s], [x.bfloat16() for x in t],
                            torch.zeros(1, 8), 0.04)  # fmt: skip
    assert out.dtype == torch.float32
    out.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)


def test_dino_loss_bad_inputs() -> None:
    with pytest.raises(ValueError, match="student_temp"):
        DINOLoss(0.0)
    with pytest.raises(ValueError, match="teacher_temp"):
        DINOLoss()([torch.randn(2, 3)] * 2, [torch.randn(2, 3)], torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="subset"):
        DINOLoss()([torch.randn(2, 3)], [torch.randn(2, 3)] * 2, torch.zeros(3), 0.04)


# ----------------------------------------------------------------------------- centring


def test_update_center_is_ema_of_the_batch_mean() -> None:
    g = torch.Generator().manual_seed(1)
    center = torch.randn(1, 4, generator=g)
    teacher = torch.randn(6, 4, generator=g)
    want = [0.9 * float(center[0, k]) + 0.1 * sum(float(teacher[i, k]) for i in range(6)) / 6
            for k in range(4)]  # fmt: skip
    update_center(center, teacher, 0.9)
    assert center[0].tolist() == pytest.approx(want, rel=1e-6)
    before = center.clone()
    update_center(center, torch.zeros(0, 4), 0.9)  # no rows: unchanged
    assert torch.equal(center, before)


def test_method_centre_moves_in_on_step_end_by_the_teacher_batch_mean() -> None:
    torch.manual_seed(0)
    method = build("dino", False)
    views = crops()
    with torch.no_grad():
        teacher = method.teacher_head(method.teacher_backbone(torch.cat(views[:2])))
    info = StepInfo(step=0, progress=0.5)
    method.training_step(views, info)
    assert torch.equal(method.center, torch.zeros_like(method.center))  # not yet
    method.on_step_end(info)
    want = 0.1 * teacher.mean(dim=0, keepdim=True)  # 0.9 * 0 + 0.1 * batch mean
    torch.testing.assert_close(method.center, want, rtol=1e-4, atol=1e-6)
    assert "center" in method.state_dict()


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "progress,want", [(0.0, 0.04), (0.025, 0.0475), (0.05, 0.055), (0.1, 0.07), (0.6, 0.07)]
)
def test_teacher_temperature_warmup(progress: float, want: float) -> None:
    assert teacher_temperature(progress, 0.04, 0.07, 0.1) == pytest.approx(want)
    method = build("dino", False, "method.warmup_teacher_temp_fraction=0.1",
                   "method.teacher_temp=0.07")  # fmt: skip
    assert method.teacher_temp(progress) == pytest.approx(want)


def test_teacher_temperature_without_warmup_and_momentum_schedule() -> None:
    assert teacher_temperature(0.0, 0.04, 0.06, 0.0) == pytest.approx(0.06)
    method = build("dino", False, "method.momentum_base=0.99")
    assert method.momentum(0.0) == pytest.approx(0.99)
    assert method.momentum(0.5) == pytest.approx(0.995)
    assert method.momentum(1.0) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- head


def test_dino_head_unit_prototypes_and_frozen_magnitude() -> None:
    head = DINOHead(12, out_dim=20, hidden_dim=16, bottleneck_dim=8)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(20))
    with torch.no_grad():
        out = head(torch.randn(5, 12))
    assert out.shape == (5, 20)
    # Logits are cosines between the unit bottleneck vector and unit prototypes.
    assert float(out.abs().max()) <= 1.0 + 1e-5
    free = DINOHead(12, out_dim=20, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    linears = [
        m for m in DINOHead(4, 6, 5, 3, num_layers=3, use_bn=True).mlp if isinstance(m, nn.Linear)
    ]
    assert [m.out_features for m in linears] == [5, 5, 3]


# ----------------------------------------------------------------------------- freezing


def _last_layer_grad(method: Any, progress: float, head: str = "head") -> torch.Tensor:
    method.zero_grad(set_to_none=True)
    info = StepInfo(step=0, progress=progress)
    loss, _ = method.training_step(crops(), info)
    loss.backward()
    method.on_after_backward(info)
    last = getattr(method, head).last_layer.parametrizations.weight
    assert last.original0.grad is None  # fixed magnitude: never a gradient
    grad: torch.Tensor = last.original1.grad
    return grad


def test_last_layer_gradient_zero_while_frozen_and_not_after() -> None:
    torch.manual_seed(0)
    method = build("dino", False, "method.freeze_last_layer=0.2")
    assert float(_last_layer_grad(method, 0.1).abs().sum()) == 0.0
    assert float(method.head.mlp[0].weight.grad.abs().sum()) > 0  # the rest still learns
    assert float(_last_layer_grad(method, 0.2).abs().sum()) > 0


def test_frozen_last_layer_weight_does_not_move_under_weight_decay() -> None:
    torch.manual_seed(0)
    method = build("dino", False, "method.freeze_last_layer=0.5")
    params = [p for m in method.trainable_modules() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1)
    before = method.head.last_layer.weight.detach().clone()
    for step in range(2):
        info = StepInfo(step=step, progress=0.1)
        loss, _ = method.training_step(crops(seed=step), info)
        loss.backward()
        method.on_after_backward(info)
        opt.step()
        opt.zero_grad()
        method.on_step_end(info)
    torch.testing.assert_close(method.head.last_layer.weight, before, rtol=1e-5, atol=1e-6)


def test_dinov2_freezes_both_heads() -> None:
    torch.manual_seed(0)
    method = build("dinov2", True, "method.freeze_last_layer=0.2", "method.ibot_out_dim=32",
                   "method.ibot_hidden_dim=32", "method.ibot_bottleneck_dim=16")  # fmt: skip
    assert float(_last_layer_grad(method, 0.1, "dino_head").abs().sum()) == 0.0
    assert (
        float(method.ibot_head.last_layer.parametrizations.weight.original1.grad.abs().sum()) == 0
    )
    assert float(_last_layer_grad(method, 0.3, "ibot_head").abs().sum()) > 0


# ----------------------------------------------------------------------------- teacher


@pytest.mark.parametrize("name,vit", [("dino", False), ("dino", True), ("dinov2", True)])
def test_teacher_equals_student_at_init_then_follows_by_ema(name: str, vit: bool) -> None:
    torch.manual_seed(0)
    method = build(name, vit, "method.momentum_base=0.9")
    pairs = [(method.teacher_backbone, method.backbone)]
    pairs.append((method.teacher_head, method.head) if name == "dino"
                 else (method.teacher_dino_head, method.dino_head))  # fmt: skip
    for t, s in pairs:
        for (n, pt), ps in zip(t.named_parameters(), s.parameters(), strict=True):
            assert torch.equal(pt, ps), n
            assert not pt.requires_grad
    teacher0 = [[p.detach().clone() for p in t.parameters()] for t, _ in pairs]
    params = [p for m in method.trainable_modules() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    info = StepInfo(step=0, progress=0.0)
    loss, _ = method.training_step(crops(), info)
    loss.backward()
    method.on_after_backward(info)
    opt.step()
    for (t, _), t0 in zip(pairs, teacher0, strict=True):  # the optimiser leaves it alone
        assert all(torch.equal(p, q) for p, q in zip(t.parameters(), t0, strict=True))
    method.on_step_end(info)
    changed = False
    for (t, s), t0 in zip(pairs, teacher0, strict=True):
        for pt, ps, p0 in zip(t.parameters(), s.parameters(), t0, strict=True):
            torch.testing.assert_close(pt, 0.9 * p0 + 0.1 * ps.detach())
            changed |= not torch.equal(pt, ps)
    assert changed


def test_feature_extractor_is_the_teacher_unless_asked() -> None:
    m = build("dino", False)
    assert m.feature_extractor() is m.teacher_backbone
    m = build("dino", False, "method.eval_teacher=false")
    assert m.feature_extractor() is m.backbone
    assert m.trainable_modules() == [m.backbone, m.head]


# ----------------------------------------------------------------------------- iBOT


def reference_ibot(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, c: torch.Tensor,
                   t_temp: float, s_temp: float) -> float:  # fmt: skip
    total = 0.0
    for b in range(mask.shape[0]):
        hidden = [n for n in range(mask.shape[1]) if mask[b, n]]
        acc = 0.0
        for n in hidden:
            tp = torch.softmax((t[b, n].double() - c.double()) / t_temp, 0)
            ls = torch.log_softmax(s[b, n].double() / s_temp, 0)
            acc += -float((tp * ls).sum())
        total += acc / max(1, len(hidden))
    return total / mask.shape[0]


def test_ibot_loss_matches_reference_and_reads_masked_patches_only() -> None:
    g = torch.Generator().manual_seed(3)
    b, n, k = 3, 6, 5
    s = torch.randn(b, n, k, generator=g)
    t = torch.randn(b, n, k, generator=g)
    mask = torch.tensor([[1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]).bool()
    c = torch.randn(k, generator=g) * 0.2
    loss = IBOTPatchLoss(0.1)
    got = float(loss(s, t, mask, c, 0.05))
    assert got == pytest.approx(reference_ibot(s, t, mask, c, 0.05, 0.1), rel=1e-5)
    # Visible patches of the student (and teacher) do not matter.
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = 100 * torch.randn(int((~mask).sum()), k, generator=g)
    t2[~mask] = -50.0
    assert float(loss(s2, t2, mask, c, 0.05)) == pytest.approx(got, rel=1e-6)
    # ... but masked ones do.
    s2[mask] += 3.0 * torch.randn(int(mask.sum()), k, generator=g)
    assert float(loss(s2, t2, mask, c, 0.05)) != pytest.approx(got, rel=1e-3)
    # The cheap form (masked rows only) gives the same value.
    assert float(loss(s[mask], t[mask], mask, c, 0.05)) == pytest.approx(got, rel=1e-6)


def test_ibot_loss_without_hidden_patches_is_zero_and_checks_shapes() -> None:
    mask = torch.zeros(2, 4, dtype=torch.bool)
    assert float(IBOTPatchLoss()(torch.randn(2, 4, 3), torch.randn(2, 4, 3), mask,
                                 torch.zeros(3), 0.04)) == 0.0  # fmt: skip
    with pytest.raises(ValueError, match="masked"):
        IBOTPatchLoss()(torch.randn(5, 3), torch.randn(5, 3), mask, torch.zeros(3), 0.04)


# ----------------------------------------------------------------------------- KoLeo


def test_koleo_hand_computed_nearest_neighbours() -> None:
    # Unit vectors a=(1,0), b=(0,1), c=(-1,0), d=(0.6,0.8). Nearest neighbours: a->d at
    # sqrt(0.8), b->d at sqrt(0.4), c->b at sqrt(2), d->b at sqrt(0.4).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    want = -(math.log(math.sqrt(0.8)) + 2 * math.log(math.sqrt(0.4)) + math.log(math.sqrt(2))) / 4
    assert float(KoLeoLoss()(x)) == pytest.approx(want, rel=1e-5)
    # The rows are L2-normalised first: scaling them changes nothing.
    scaled = x * torch.tensor([[3.0], [0.5], [2.0], [7.0]])
    assert float(KoLeoLoss()(scaled)) == pytest.approx(want, rel=1e-5)


def test_koleo_pushes_neighbours_apart_and_survives_duplicates() -> None:
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.2]], requires_grad=True)
    loss = KoLeoLoss()(x)
    loss.backward()
    with torch.no_grad():
        assert float(KoLeoLoss()(x - 0.05 * x.grad)) < float(loss)
    dup = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    out = KoLeoLoss()(dup)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(dup.grad).all()
    with pytest.raises(ValueError, match="n >= 2"):
        KoLeoLoss()(torch.randn(1, 4))


# ----------------------------------------------------------------------------- DINOv2


def test_masks_for_batch_masks_exactly_the_asked_share() -> None:
    g = torch.Generator().manual_seed(0)
    m = masks_for_batch(8, (4, 4), (0.1, 0.5), 0.5, generator=g)
    assert m.shape == (8, 16) and m.dtype == torch.bool
    assert int(m.any(dim=1).sum()) == 4
    assert int(masks_for_batch(3, (4, 4), (0.2, 0.5), 0.01, generator=g).any(dim=1).sum()) == 1
    assert not masks_for_batch(3, (4, 4), (0.2, 0.5), 0.0, generator=g).any()


def test_dinov2_step_logs_each_term_and_combines_them() -> None:
    torch.manual_seed(0)
    method = build("dinov2", True)
    loss, logs = method.training_step(crops(local=2), StepInfo(step=0, progress=0.3))
    for key in ("dino_loss", "ibot_loss", "koleo_loss", "teacher_temp"):
        assert key in logs and torch.isfinite(logs[key])
    want = logs["dino_loss"] + logs["ibot_loss"] + 0.1 * logs["koleo_loss"]
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert float(logs["ibot_loss"]) > 0
    loss.backward()
    assert method.mask_token.weight.grad is not None
    assert float(method.mask_token.weight.grad.abs().sum()) > 0
    method.on_step_end(StepInfo(step=0, progress=0.3))
    assert float(method.patch_center.abs().sum()) > 0 and float(method.center.abs().sum()) > 0


def test_dinov2_shared_head_and_vit_only() -> None:
    method = build("dinov2", True, "method.ibot_separate_head=false")
    assert method.ibot_head is method.dino_head
    assert method.patch_center.shape == method.center.shape
    assert len([m for m in method.trainable_modules() if m is method.dino_head]) == 1
    with pytest.raises(ConfigError, match="Vision Transformer"):
        build("dinov2", False)


# ----------------------------------------------------------------------------- ViTs


def test_forward_any_size_takes_local_crops_like_timm_dynamic_size() -> None:
    import timm

    method = build("dino", True)
    bb = method.backbone
    net: Any = bb.net
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(forward_any_size(bb, x), bb(x))
    small = torch.randn(2, 3, 8, 8)
    got = forward_any_size(bb, small)
    # The backbone is left as it was (a fixed input size).
    assert not net.dynamic_img_size and net.patch_embed.strict_img_size
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=SIZE,
                            patch_size=4, depth=2, num_heads=3, dynamic_img_size=True)  # fmt: skip
    ref.load_state_dict(net.state_dict())
    ref.train(net.training)
    torch.testing.assert_close(got, ref(small))
    with pytest.raises(ConfigError, match="local_size"):
        forward_any_size(bb, torch.randn(2, 3, 6, 6))


def test_vit_local_crops_tile_into_patches() -> None:
    method = build("dino", True)
    cfg = MultiCropConfig()
    # 3/7 of 32 px is 14 px: rounded to whole 4 px patches, 16.
    assert vit_local_size(cfg, 32, method.backbone).local_size == 16
    assert vit_local_size(cfg, 16, method.backbone).local_size == 8
    with pytest.raises(ConfigError, match="multiple"):
        vit_local_size(MultiCropConfig(local_size=14), 32, method.backbone)
    sizes = [tuple(v.shape[-2:]) for v in method.default_transform(32, [0.5] * 3, [0.25] * 3, 3)(
        torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8))]  # fmt: skip
    assert sizes[:2] == [(32, 32)] * 2 and set(sizes[2:]) == {(16, 16)}


def test_last_block_attention_matches_timm_attention_matrix() -> None:
    method = build("dino", True).eval()
    bb = method.backbone
    attn = bb.net.blocks[-1].attn
    attn.fused_attn = False  # timm then builds the matrix and passes it through attn_drop
    seen: list[torch.Tensor] = []
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        bb(x)
        heat = last_block_attention(bb, x)
    handle.remove()
    want = seen[0][:, :, 0, 1:].mean(dim=1).reshape(2, 4, 4)
    assert heat.shape == (2, 4, 4)
    torch.testing.assert_close(heat, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["dino", "dinov2"])
def test_visualize_returns_overlays_of_the_input_size_for_vits(name: str) -> None:
    method = build(name, True).eval()
    images = torch.randn(3, 3, SIZE, SIZE)
    grids = method.visualize(images)
    assert set(grids) == {"attention"}
    pic = grids["attention"]
    assert pic.shape == (6, 3, SIZE, SIZE) and torch.isfinite(pic).all()
    torch.testing.assert_close(pic[:3], images)  # first row: the images themselves
    assert not torch.allclose(pic[3:], images)


def test_visualize_is_empty_for_resnets() -> None:
    assert build("dino", False).eval().visualize(torch.randn(2, 3, SIZE, SIZE)) == {}


def test_dino_resnet_uses_bn_head_and_vit_does_not() -> None:
    def has_bn(m: nn.Module) -> bool:
        return any(isinstance(x, nn.BatchNorm1d) for x in m.modules())

    assert has_bn(build("dino", False).head)
    assert not has_bn(build("dino", True).head)
    assert not has_bn(build("dino", False, "method.use_bn=false").head)
    assert isinstance(build("dino", False), DINO) and isinstance(build("dinov2", True), DINOv2)


def test_bad_config_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"method\.teacher_temp"):
        build("dino", False, "method.teacher_temp=0")
    with pytest.raises(ConfigError, match=r"method\.views"):
        build("dino", False, "method.views.global_crops=1", "method.views.local_crops=0")
    with pytest.raises(ConfigError, match=r"method\.mask_ratio"):
        build("dinov2", True, "method.mask_ratio=[0.6, 0.2]")


def test_dino_chance_loss_is_the_loss_of_uniform_student_outputs() -> None:
    m = build("dino", False)
    k = m.cfg.out_dim
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(4, k, generator=g) for _ in range(2)]
    student = [torch.zeros(4, k) for _ in range(4)]  # every crop: the same score everywhere
    loss = m.criterion(student, teacher, torch.zeros(1, k), 0.04)
    assert float(loss) == pytest.approx(m.chance_loss(8), rel=1e-5)
    assert m.chance_loss(8) == pytest.approx(math.log(k))
