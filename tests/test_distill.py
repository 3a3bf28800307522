"""Distillation: the regression loss by hand, the teacher's input, and a student that
learns its teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_images

import selfsup
from selfsup.config import ConfigError
from selfsup.losses.distill import FeatureDistillLoss
from selfsup.methods.base import StepInfo
from selfsup.methods.distill import Distill

RESNET_TEACHER = ["method.teacher_backbone={name: resnet18, small_stem: true}"]


def test_loss_by_hand_global_and_dense() -> None:
    # cos = 0, 1, -1, 1 (scale-blind) -> 2 - 2 cos = 2, 0, 4, 0; mean 1.5.
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    t = torch.tensor([[0.0, 2.0], [2.0, 2.0], [-5.0, 0.0], [0.0, 0.1]], requires_grad=True)
    loss = FeatureDistillLoss()(p, t)
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    assert t.grad is None and p.grad is not None  # the teacher's side is a target
    # The same four vectors as the locations of a (1, 2, 2, 2) map: one distance each.
    dense_p = p.detach().T.reshape(1, 2, 2, 2)
    dense_t = t.detach().T.reshape(1, 2, 2, 2)
    assert FeatureDistillLoss()(dense_p, dense_t).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="equal shape"):
        FeatureDistillLoss()(p, t[:, :1])


def _method(overrides: list[str], size: int = 16) -> Distill:
    cfg = selfsup.make_config("distill", backbone="resnet18", image_size=size, overrides=overrides)
    m = selfsup.build_method(cfg)
    assert isinstance(m, Distill)
    return m


def test_needs_exactly_one_teacher_and_says_how(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"method\.teacher=RUN"):
        _method([])
    with pytest.raises(ConfigError, match="does not exist"):
        _method([f"method.teacher={tmp_path / 'gone'}"])


def test_teacher_sees_its_own_normalisation_and_size(tmp_path: Path) -> None:
    # A teacher run trained at 24 px with its own mean / std; the student at 16 px with
    # ImageNet's: the teacher must get the view resized to 24 and renormalised.
    data = make_images(tmp_path / "imgs", classes=2, per_class=4, size=24)
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
    selfsup.pretrain(data=str(data), out=tmp_path / "t", method="vicreg", steps=1, batch_size=8,
                     workers=0, image_size=24, progress=False,
                     overrides=["monitor.knn=false", f"data.mean={mean}", f"data.std={std}"])  # fmt: skip
    m = _method([f"method.teacher={tmp_path / 't'}"])
    s_mean, s_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    m.default_transform(16, s_mean, s_std, 3)
    raw = torch.rand(2, 3, 16, 16)
    x = (raw - torch.tensor(s_mean).view(1, 3, 1, 1)) / torch.tensor(s_std).view(1, 3, 1, 1)
    tx = m._teacher_input(x)
    expect = torch.nn.functional.interpolate(raw, size=(24, 24), mode="bilinear",
                                             align_corners=False)  # fmt: skip
    expect = (expect - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert tx.shape == (2, 3, 24, 24)
    assert torch.allclose(tx, expect, atol=1e-5)
    # The teacher stays in eval mode whatever the trainer asks of the method.
    m.train()
    assert not m.teacher.training and m.backbone.training


def test_vit_teacher_adds_the_patch_token_term() -> None:
    m = _method(["method.teacher_backbone={name: 'timm:vit_tiny_patch16_224', "
                 "kwargs: {patch_size: 4, depth: 1, img_size: 16}}"])  # fmt: skip
    assert m.patch_weight == 1.0 and m.patch_head is not None
    loss, logs = m.training_step([torch.randn(2, 3, 16, 16)], StepInfo(0, 0.0))
    assert set(logs) == {"global", "patch", "loss"}
    assert loss.item() == pytest.approx((logs["global"] + logs["patch"]).item(), rel=1e-5)
    assert _method(RESNET_TEACHER).patch_head is None


def test_student_learns_to_reproduce_its_teacher() -> None:
    # A fixed teacher, a fresh student: a few steps on one batch must bring the student's
    # predictions much closer (cosine distance) to the teacher's embeddings.
    torch.manual_seed(0)
    m = _method([*RESNET_TEACHER, "method.head_hidden_dim=64"], size=8).train()
    params = [p for mod in m.trainable_modules() for p in mod.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randn(8, 3, 8, 8)
    first = None
    for step in range(15):
        loss, _ = m.training_step([x], StepInfo(step, step / 15))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        after = FeatureDistillLoss()(m.head(m.backbone(x)), m.teacher(x)).item()
    assert after < 0.5 * first, (first, after)
