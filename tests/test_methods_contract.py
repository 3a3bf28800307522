"""The contract every registered method meets, checked for each one automatically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_images, make_videos

import selfsup
from selfsup.data.loader import collate_views
from selfsup.methods.base import Method, StepInfo
from selfsup.registry import get_method_class, list_methods

SIZE = 16
TINY_VIT = ["backbone.kwargs={patch_size: 4, depth: 2, num_heads: 3}"]
# Video methods: a two-block space-time ViT on clips of 4 frames.
TINY_VIDEO_VIT = ["backbone.kwargs={patch_size: 4, depth: 2, frames: 4}"]
# Distillation: an untrained ResNet-18 named as teacher (a run folder in real use).
TEACHER = ["method.teacher_backbone={name: resnet18, small_stem: true}"]


def _config(name: str, seed: int = 0) -> selfsup.Config:
    cls = get_method_class(name)
    if cls.needs_video:
        return selfsup.make_config(name, backbone="video_vit_tiny", image_size=SIZE, seed=seed,
                                   overrides=TINY_VIDEO_VIT)  # fmt: skip
    backbone = "timm:vit_tiny_patch16_224" if cls.needs_vit else "resnet18"
    overrides = TINY_VIT if cls.needs_vit else []
    if name == "distill":
        overrides = TEACHER
    return selfsup.make_config(name, backbone=backbone, image_size=SIZE, seed=seed,
                               overrides=overrides)  # fmt: skip


def _build(name: str, seed: int = 0) -> Method:
    return selfsup.build_method(_config(name, seed))


def _views(method: Method, batch: int = 4) -> list[torch.Tensor]:
    t = method.default_transform(SIZE, [0.5] * 3, [0.25] * 3, 3)
    # Video methods ask the loader for clips of (frames, stride): (frames, 3, H, W).
    clip = getattr(t, "clip", None)
    shape = (clip[0], 3, 24, 24) if clip else (3, 24, 24)
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(batch):
        img = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        torch.manual_seed(i)
        items.append((t(img), 0, []))
    return collate_views(items)[0]


def _trainable(method: Method) -> set[int]:
    return {id(p) for m in method.trainable_modules() for p in m.parameters() if p.requires_grad}


@pytest.fixture(params=list_methods())
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_one_step_gives_finite_loss_and_grads_reach_exactly_the_trainable_params(name: str) -> None:
    torch.manual_seed(0)
    method = _build(name).train()
    views = _views(method)
    loss, logs = method.training_step(views, StepInfo(step=0, progress=0.0, epoch=0))
    assert loss.ndim == 0 and torch.isfinite(loss), name
    assert all(torch.is_tensor(v) and v.numel() == 1 and not v.requires_grad for v in logs.values())
    loss.backward()
    method.on_after_backward(StepInfo(step=0, progress=0.0, epoch=0))
    trainable = _trainable(method)
    with_grad = {id(p) for p in method.parameters() if p.grad is not None}
    named = {id(p): n for n, p in method.named_parameters()}
    missing = sorted(named[i] for i in trainable - with_grad)
    extra = sorted(named[i] for i in with_grad - trainable)
    assert not missing, f"{name}: trainable parameters without gradient: {missing[:5]}"
    assert not extra, f"{name}: gradients reached non-trainable parameters: {extra[:5]}"


def test_teacher_changes_only_in_on_step_end(name: str) -> None:
    torch.manual_seed(0)
    method = _build(name).train()
    trainable = _trainable(method)
    frozen = {n: p.detach().clone() for n, p in method.named_parameters() if id(p) not in trainable}
    opt = torch.optim.SGD([p for p in method.parameters() if id(p) in trainable], lr=0.1)
    info = StepInfo(step=0, progress=0.1, epoch=0)
    loss, _ = method.training_step(_views(method), info)
    loss.backward()
    method.on_after_backward(info)
    opt.step()
    for n, p in method.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{name}: {n} changed outside on_step_end"
    method.on_step_end(info)
    changed = [
        n for n, p in method.named_parameters() if n in frozen and not torch.equal(p, frozen[n])
    ]
    if method.teacher_pairs():  # an EMA teacher moves towards the student after on_step_end
        assert changed, f"{name}: the EMA teacher did not move in on_step_end"
    else:  # a frozen teacher (distillation) never moves
        assert not changed, f"{name}: frozen parameters changed: {changed[:5]}"


def test_state_dict_round_trip_and_feature_extractor_shape(name: str) -> None:
    a, b = _build(name, seed=0).eval(), _build(name, seed=1).eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    fa = a.feature_extractor()(x)
    assert fa.shape == (3, a.backbone.embed_dim)
    assert not torch.allclose(fa, b.feature_extractor()(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(fa, b.feature_extractor()(x))


def test_checkpoint_resumes(name: str, tmp_path: Path) -> None:
    if get_method_class(name).needs_video:
        data = make_videos(tmp_path / "videos", classes=2, per_class=4, frames=8, size=24)
    else:
        data = make_images(tmp_path / "imgs", classes=2, per_class=8, size=24)
    cfg = selfsup.config.to_dict(_config(name))
    kw = dict(progress=False, overrides=["monitor.knn=false", "train.log_every=1"])
    run = tmp_path / "run"
    first = selfsup.pretrain(data=str(data), out=run, config=cfg, steps=2, batch_size=8,
                             workers=0, stop_at_step=1, **kw)  # fmt: skip
    assert first.state.step == 1
    done = selfsup.pretrain(resume=run, progress=False)
    assert done.state.step == 2 and done.final_loss is not None
