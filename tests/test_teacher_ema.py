"""The EMA (momentum) teacher update shared by every method through ``Method.on_step_end``:
checked against a hand computation, and each teacher-based method declares all its
teachers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import selfsup
from selfsup.backbones import Backbone
from selfsup.config import MethodConfig
from selfsup.methods.base import Method, StepInfo
from selfsup.modules import frozen_copy
from selfsup.registry import get_method_class

SIZE = 16
TINY_VIT = "backbone.kwargs={patch_size: 4, depth: 2, num_heads: 3}"
TEACHER_METHODS = ["byol", "mocov2", "mocov3", "dino", "dinov2"]


class _TwoTeachers(Method):
    """A linear backbone and a Linear-BatchNorm head, each with an EMA teacher; the
    momentum is ``1 - progress`` so the test can tell it is read from the step."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(MethodConfig(), Backbone(nn.Linear(3, 2), 2, "linear"))
        self.head = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def teacher_momentum(self, info: StepInfo) -> float:
        return 1.0 - info.progress


def test_on_step_end_moves_every_teacher_by_hand_computed_ema() -> None:
    method = _TwoTeachers()
    with torch.no_grad():  # move the students away from their teachers
        for p in [*method.backbone.parameters(), *method.head.parameters()]:
            p.add_(torch.randn_like(p))
        method.head[1].running_mean.fill_(3.0)
        method.head[1].num_batches_tracked.fill_(7)
    t_before = [p.clone() for p in [*method.teacher_backbone.parameters(),
                                   *method.teacher_head.parameters()]]  # fmt: skip
    students = [*method.backbone.parameters(), *method.head.parameters()]
    method.on_step_end(StepInfo(step=3, progress=0.25))  # momentum 0.75
    teachers = [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]
    assert len(teachers) == len(students) == len(t_before) == 6
    for t, s, old in zip(teachers, students, t_before, strict=True):
        torch.testing.assert_close(t, 0.75 * old + 0.25 * s, rtol=0, atol=1e-6)
        assert not t.requires_grad
    # Buffers (BatchNorm statistics) are copied from the student, not averaged.
    bn = method.teacher_head[1]
    assert torch.equal(bn.running_mean, torch.full((2,), 3.0))
    assert int(bn.num_batches_tracked) == 7


def test_momentum_one_freezes_and_zero_copies_the_teacher() -> None:
    method = _TwoTeachers()
    with torch.no_grad():
        for p in method.head.parameters():
            p.add_(1.0)
    old = [p.clone() for p in method.teacher_head.parameters()]
    method.on_step_end(StepInfo(step=0, progress=0.0))  # momentum 1
    for t, o in zip(method.teacher_head.parameters(), old, strict=True):
        assert torch.equal(t, o)
    method.on_step_end(StepInfo(step=1, progress=1.0))  # momentum 0
    for t, s in zip(method.teacher_head.parameters(), method.head.parameters(), strict=True):
        assert torch.equal(t, s)


def test_methods_without_teachers_need_no_momentum() -> None:
    method = Method(MethodConfig(), Backbone(nn.Linear(3, 2), 2, "linear"))
    assert method.teacher_pairs() == []
    method.on_step_end(StepInfo(step=0, progress=0.0))  # no momentum asked for

    class NoMomentum(Method):
        def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
            return [(self.backbone, frozen_copy(self.backbone))]

    with pytest.raises(NotImplementedError, match="NoMomentum"):
        NoMomentum(MethodConfig(), Backbone(nn.Linear(3, 2), 2, "linear")).on_step_end(
            StepInfo(step=0, progress=0.0)
        )


def _build(name: str, *overrides: str) -> Method:
    vit = get_method_class(name).needs_vit
    cfg = selfsup.make_config(
        name,
        backbone="timm:vit_tiny_patch16_224" if vit else "resnet18",
        image_size=SIZE,
        overrides=[TINY_VIT, *overrides] if vit else list(overrides),
    )
    return selfsup.build_method(cfg)


def _ids(modules: list[nn.Module]) -> set[int]:
    return {id(p) for m in modules for p in m.parameters()}


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_method_declares_all_its_frozen_teachers(name: str) -> None:
    method = _build(name)
    pairs = method.teacher_pairs()
    assert pairs, f"{name} declares no teacher"
    for student, teacher in pairs:
        assert all(not p.requires_grad for p in teacher.parameters()), name
        assert type(student) is type(teacher) and student is not teacher
        assert [p.shape for p in student.parameters()] == [p.shape for p in teacher.parameters()]
    # Every parameter outside the trainable modules belongs to a declared teacher, so no
    # teacher is left behind by the shared update.
    trainable = _ids(method.trainable_modules())
    teachers = _ids([t for _, t in pairs])
    assert teachers == _ids([method]) - trainable, name
    assert not teachers & trainable


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_method_teacher_follows_its_schedule_and_copies_at_momentum_zero(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    method = _build(name)
    cfg = method.cfg
    start = getattr(cfg, "momentum", getattr(cfg, "momentum_base", None))
    assert method.teacher_momentum(StepInfo(step=0, progress=0.0)) == pytest.approx(start)
    end = method.teacher_momentum(StepInfo(step=9, progress=1.0))
    assert end == pytest.approx(getattr(cfg, "momentum_end", None))
    with torch.no_grad():
        for student, _ in method.teacher_pairs():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
    monkeypatch.setattr(method, "teacher_momentum", lambda info: 0.0)
    method.on_step_end(StepInfo(step=0, progress=0.0))
    for student, teacher in method.teacher_pairs():
        for s, t in zip(student.state_dict().values(), teacher.state_dict().values(), strict=True):
            assert torch.equal(s, t), name


def test_dinov2_shared_ibot_head_is_one_teacher() -> None:
    method = _build("dinov2", "method.ibot_separate_head=false")
    assert len(method.teacher_pairs()) == 2
    assert len(_build("dinov2").teacher_pairs()) == 3
