"""Dense features of every backbone, the dense heads, and segmentation metrics."""

from __future__ import annotations

import importlib.util
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from selfsup.backbones import Backbone, DenseSpec, create_backbone
from selfsup.config import BackboneConfig
from selfsup.eval.segmentation import SegConfusion, dice_score
from selfsup.heads.dense import DenseModel, FPNDecoder, LinearSegHead, UNetDecoder


def _check_specs(bb: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """forward_dense gives one (B, C, H / stride, W / stride) map per spec."""
    feats = bb.forward_dense(x)
    specs = bb.dense_specs()
    assert len(feats) == len(specs)
    for f, s in zip(feats, specs, strict=True):
        assert isinstance(s, DenseSpec)
        assert f.shape == (x.shape[0], s.channels, x.shape[2] // s.stride, x.shape[3] // s.stride)
    return feats


# --- backbones -------------------------------------------------------------------------


@pytest.mark.parametrize(("small", "strides"), [(True, [1, 2, 4, 8]), (False, [4, 8, 16, 32])])
def test_resnet_dense(small: bool, strides: list[int]) -> None:
    bb = create_backbone(BackboneConfig(name="resnet18", small_stem=small))
    specs = bb.dense_specs()
    assert [s.stride for s in specs] == strides
    assert [s.channels for s in specs] == [64, 128, 256, 512]
    assert [s.name for s in specs] == ["layer1", "layer2", "layer3", "layer4"]
    bb.eval()
    x = torch.randn(2, 3, 64, 96)
    feats = _check_specs(bb, x)
    # The last map, pooled, is what forward returns: forward is unchanged.
    torch.testing.assert_close(feats[-1].mean((2, 3)), bb(x))


def test_resnet50_dense_channels() -> None:
    bb = create_backbone(BackboneConfig(name="resnet50", small_stem=False))
    assert [s.channels for s in bb.dense_specs()] == [256, 512, 1024, 2048]
    _check_specs(bb, torch.randn(1, 3, 64, 64))


needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs timm")


def _tiny_vit_cfg() -> BackboneConfig:
    return BackboneConfig(name="timm:vit_tiny_patch16_224", kwargs={"depth": 3})


@needs_timm
def test_timm_vit_dense_any_size() -> None:
    from selfsup.backbones.vit import ViTBackbone

    bb = create_backbone(_tiny_vit_cfg())  # built for 224 px
    assert isinstance(bb, ViTBackbone)
    assert bb.dense_specs() == [DenseSpec("block2", 192, 16)]
    feats = _check_specs(bb, torch.randn(2, 3, 64, 96))
    assert feats[0].shape == (2, 192, 4, 6)
    bb.set_dense_blocks(2)
    assert [s.name for s in bb.dense_specs()] == ["block1", "block2"]
    _check_specs(bb, torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        bb.forward_dense(torch.randn(1, 3, 40, 32))


@needs_timm
def test_small_image_vit_dense_matches_tokens() -> None:
    """The selfsup ViT for 32 px images (4 px patches): at its native size the last map is
    the final-normed patch tokens of forward_tokens."""
    from selfsup.backbones.vit import ViTBackbone

    bb = create_backbone(_tiny_vit_cfg(), image_size=32)
    assert isinstance(bb, ViTBackbone)
    bb.eval()
    x = torch.randn(2, 3, 32, 32)
    (dense,) = _check_specs(bb, x)
    tokens = bb.forward_tokens(x)[:, bb.num_prefix_tokens :]
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), tokens)
    assert _check_specs(bb, torch.randn(1, 3, 32, 48))[0].shape == (1, 192, 8, 12)
    bb.set_dense_blocks(3, evenly_spaced=True)
    assert bb.dense_blocks == (0, 1, 2)


@needs_timm
def test_vit_registers_removed() -> None:
    from timm.models.vision_transformer import VisionTransformer

    from selfsup.backbones.vit import ViTBackbone

    net = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, reg_tokens=2, num_classes=0
    )
    bb = ViTBackbone(net, "ours")
    assert bb.num_prefix_tokens == 3
    bb.set_dense_blocks(2, evenly_spaced=True)
    assert bb.dense_blocks == (1, 3)
    feats = _check_specs(bb, torch.randn(2, 3, 32, 48))
    assert [f.shape for f in feats] == [(2, 32, 4, 6)] * 2


@needs_timm
def test_timm_cnn_dense() -> None:
    bb = create_backbone(BackboneConfig(name="timm:resnet18"))
    assert [s.stride for s in bb.dense_specs()] == [2, 4, 8, 16, 32]
    _check_specs(bb, torch.randn(1, 3, 64, 96))


class _Hooked(nn.Module):
    """A network with timm's feature_info but no forward_intermediates."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.feature_info = [
            {"num_chs": 4, "reduction": 2, "module": "a"},
            {"num_chs": 8, "reduction": 4, "module": "b"},
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)).mean((2, 3))


def test_feature_info_hooks_and_clear_error() -> None:
    _check_specs(Backbone(_Hooked(), 8, "hooked"), torch.randn(2, 3, 16, 24))
    plain = Backbone(nn.Sequential(nn.Flatten(), nn.LazyLinear(4)), 4, "plain-mlp")
    with pytest.raises(TypeError, match="plain-mlp"):
        plain.dense_specs()
    with pytest.raises(TypeError, match="forward_dense"):
        DenseModel(nn.Linear(2, 2), nn.Identity())


# --- heads -----------------------------------------------------------------------------


def test_heads_shapes() -> None:
    specs = [DenseSpec("a", 8, 4), DenseSpec("b", 16, 8), DenseSpec("c", 32, 16)]
    feats = [torch.randn(2, s.channels, 64 // s.stride, 48 // s.stride) for s in specs]
    assert LinearSegHead(32, 5)(feats).shape == (2, 5, 4, 3)  # int: the last map only
    assert LinearSegHead([8, 16, 32], 5)(feats).shape == (2, 5, 16, 12)
    assert LinearSegHead([16, 32], 5)(feats).shape == (2, 5, 8, 6)
    for fuse in ("sum", "concat"):
        assert FPNDecoder(specs, 3, width=16, fuse=fuse)(feats).shape == (2, 3, 16, 12)
    # ViT levels: equal strides.
    vit = [DenseSpec(f"block{i}", 8, 16) for i in range(2)]
    assert FPNDecoder(vit, 3, width=16)([torch.randn(1, 8, 2, 3)] * 2).shape == (1, 3, 2, 3)
    with pytest.raises(ValueError, match="fine to coarse"):
        FPNDecoder(specs[::-1], 3)
    with pytest.raises(ValueError, match="channels"):
        LinearSegHead([8, 8], 5)(feats)


def test_unet_decoder_reaches_full_resolution() -> None:
    specs = [DenseSpec("a", 8, 4), DenseSpec("b", 16, 8), DenseSpec("c", 32, 16)]
    # Sizes that are not multiples of the strides (ceil-sized maps, as a ResNet gives).
    image = torch.randn(2, 3, 50, 37)
    feats = [torch.randn(2, s.channels, -(-50 // s.stride), -(-37 // s.stride)) for s in specs]
    head = UNetDecoder(specs, 3, width=32, min_width=8)
    assert len(head.below) == 2  # strides 2 and 1 below the finest map's 4
    assert head(feats, image).shape == (2, 3, 50, 37)
    with pytest.raises(ValueError, match="FPN decoder"):
        UNetDecoder([DenseSpec("block0", 8, 16), DenseSpec("block1", 8, 16)], 3)
    # DenseModel hands the image to a decoder that reads it.
    bb = create_backbone(BackboneConfig(name="resnet18", small_stem=False))
    model = DenseModel(bb, UNetDecoder(bb.dense_specs(), 2, width=32))
    assert model(torch.randn(1, 3, 40, 56)).shape == (1, 2, 40, 56)


def _lines(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 images with one bright vertical line a pixel wide at a random column, under
    noise; masks (n, 32, 32): 1 on the line."""
    cols = torch.randint(4, 28, (n, 1, 1), generator=g)
    y = (torch.arange(32).view(1, 1, 32) == cols).expand(n, 32, 32).long()
    x = 2.0 * y.unsqueeze(1).float() + 0.3 * torch.randn(n, 3, 32, 32, generator=g)
    return x, y


def _fit_lines(head: nn.Module, bb: nn.Module, steps: int = 60) -> float:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = DenseModel(bb, head)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    weight = torch.tensor([1.0, 10.0])  # the line is 1 pixel in 32
    model.train()
    for _ in range(steps):
        x, y = _lines(8, g)
        loss = nn.functional.cross_entropy(model(x), y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _lines(16, g)
    with torch.no_grad():
        pred = model(x).argmax(1)
    conf = SegConfusion(2, ignore_index=255)
    conf.update(pred, y)
    return conf.dice(1)


def test_unet_draws_one_pixel_lines_that_fpn_at_stride_4_cannot() -> None:
    """What the U-Net decoder is for: structures a pixel wide. The FPN predicts at stride 4
    and upsamples, so its line is at least ~4 pixels wide (Dice <= ~2/5 of a perfect one)."""
    torch.manual_seed(0)
    bb = create_backbone(BackboneConfig(name="resnet18", small_stem=False))
    unet = _fit_lines(UNetDecoder(bb.dense_specs(), 2, width=32), bb)
    torch.manual_seed(0)
    bb = create_backbone(BackboneConfig(name="resnet18", small_stem=False))
    fpn = _fit_lines(FPNDecoder(bb.dense_specs(), 2, width=32), bb)
    assert unet > 80 and fpn < 60, (unet, fpn)


def test_dense_model_frozen_backbone() -> None:
    bb = create_backbone(BackboneConfig(name="resnet18", small_stem=True))
    model = DenseModel(bb, LinearSegHead(512, 3), freeze_backbone=True)
    stats = bb.net.bn1.running_mean.clone()  # type: ignore[union-attr,operator]
    model.train()
    assert not bb.training and model.head.training
    x = torch.randn(2, 3, 16, 24)
    logits = model(x)
    assert logits.shape == (2, 3, 16, 24)
    logits.sum().backward()
    assert all(p.grad is None for p in bb.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    torch.testing.assert_close(bb.net.bn1.running_mean, stats)  # type: ignore[union-attr]
    assert model.trainable_modules() == [model.head]


@needs_timm
def test_dense_model_levels_on_vit() -> None:
    from selfsup.backbones.vit import ViTBackbone

    bb = create_backbone(_tiny_vit_cfg(), image_size=32)
    assert isinstance(bb, ViTBackbone)
    bb.set_dense_blocks(2)  # DINOv2 "+ms": the last blocks concatenated
    model = DenseModel(bb, LinearSegHead([192, 192], 2), freeze_backbone=True)
    assert model(torch.randn(2, 3, 32, 48)).shape == (2, 2, 32, 48)
    one = DenseModel(bb, LinearSegHead([192], 2), levels=[1])
    assert one(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def _halves(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 images whose right part (from a random column, a multiple of 4: the finest
    stride of the ImageNet stem) is brighter, under noise that makes single pixels
    ambiguous; masks (n, 32, 32) of 0 left, 1 right."""
    cols = 4 * torch.randint(2, 7, (n, 1, 1), generator=g)
    y = (torch.arange(32).view(1, 1, 32) >= cols).expand(n, 32, 32).long()
    x = y.unsqueeze(1).float() + 0.6 * torch.randn(n, 3, 32, 32, generator=g)
    return x, y


def test_fpn_overfits_synthetic_halves() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # The ImageNet stem (strides 4..32) keeps this a few seconds on a CPU.
    bb = create_backbone(BackboneConfig(name="resnet18", small_stem=False))
    model = DenseModel(bb, FPNDecoder(bb.dense_specs(), 2, width=32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(30):
        x, y = _halves(4, g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _halves(8, g)
    with torch.no_grad():
        pred = model(x).argmax(1)
    conf = SegConfusion(2, ignore_index=255)
    conf.update(pred, y)
    assert conf.pixel_accuracy() > 90


# --- metrics ---------------------------------------------------------------------------


def _pct(f: Fraction) -> float:
    return float(f) * 100


def test_two_class_metrics_by_hand() -> None:
    # pixels (target, pred): TN (0,0) x3, FP (0,1) x2, TP (1,1) x2, FN (1,0) x1
    target = torch.tensor([[[0, 0, 0, 0], [0, 1, 1, 1]]])
    pred = torch.tensor([[[0, 0, 0, 1], [1, 1, 1, 0]]])
    conf = SegConfusion(2, ignore_index=255)
    conf.update(pred, target)
    assert conf.matrix.tolist() == [[3, 2], [1, 2]]
    iou0, iou1 = Fraction(3, 3 + 2 + 1), Fraction(2, 2 + 2 + 1)  # 1/2, 2/5
    torch.testing.assert_close(conf.iou(), torch.tensor([float(iou0), float(iou1)]).double())
    assert conf.miou() == pytest.approx(_pct((iou0 + iou1) / 2))  # 45
    assert conf.dice(1) == pytest.approx(_pct(Fraction(2 * 2, 2 * 2 + 2 + 1)))  # 4/7
    assert conf.pixel_accuracy() == pytest.approx(_pct(Fraction(5, 8)))
    res = conf.result(["background", "lesion"])
    assert res["per_class_iou"] == pytest.approx({"background": 50.0, "lesion": 40.0})
    assert res["dice"] == pytest.approx(_pct(Fraction(4, 7)))
    assert res["miou"] == pytest.approx(45.0) and res["pixel_acc"] == pytest.approx(62.5)

    # An ignored pixel and a pixel outside the valid mask, both mispredicted: no change.
    t2 = torch.cat([target, torch.tensor([[[255], [1]]])], dim=2)
    p2 = torch.cat([pred, torch.tensor([[[1], [0]]])], dim=2)
    valid = torch.ones_like(t2, dtype=torch.bool)
    valid[0, 1, 4] = False
    conf2 = SegConfusion(2, ignore_index=255)
    conf2.update(p2, t2, valid)
    assert conf2.matrix.tolist() == conf.matrix.tolist()


def test_three_class_metrics_by_hand() -> None:
    # (t, p): (0,0) (1,2) (2,2) / (2,1) (2,2) (1,1)
    target = torch.tensor([[[0, 1, 2], [2, 2, 1]]])
    pred = torch.tensor([[[0, 2, 2], [1, 2, 1]]])
    conf = SegConfusion(3, ignore_index=-1)
    conf.update(pred, target)
    assert conf.matrix.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 2]]
    ious = [Fraction(1, 1), Fraction(1, 2 + 2 - 1), Fraction(2, 3 + 3 - 2)]  # 1, 1/3, 1/2
    torch.testing.assert_close(conf.iou(), torch.tensor([float(i) for i in ious]).double())
    assert conf.miou() == pytest.approx(_pct(sum(ious, Fraction(0)) / 3))  # 11/18
    assert conf.dice(2) == pytest.approx(_pct(Fraction(2 * 2, 2 * 2 + 1 + 1)))  # 2/3
    assert conf.pixel_accuracy() == pytest.approx(_pct(Fraction(4, 6)))
    res = conf.result(["a", "b", "c"])
    assert res["dice"] is None and res["miou"] == pytest.approx(_pct(Fraction(11, 18)))


def test_absent_class_is_nan_and_skipped() -> None:
    conf = SegConfusion(3, ignore_index=255)
    conf.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    iou = conf.iou()
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2])
    assert conf.miou() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="outside"):
        conf.update(torch.tensor([[[0]]]), torch.tensor([[[3]]]))


def test_dice_score_two_observers() -> None:
    a = torch.tensor([1, 1, 0, 0])
    b = torch.tensor([1, 0, 1, 0])
    assert dice_score(a, b) == pytest.approx(50.0)  # 2*1 / (2 + 2)
    valid = torch.tensor([True, True, False, True])
    assert dice_score(a, b, valid) == pytest.approx(_pct(Fraction(2, 3)))  # 2*1 / (2 + 1)
    assert math.isnan(dice_score(torch.zeros(3), torch.zeros(3)))


def test_observer_agreement_by_hand(tmp_path: object) -> None:
    """A second observer scored against the first inside the field of view; an
    all-foreground export (as the shared DRIVE test masks_2nd are) is left out, named."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from selfsup.data.segmentation import open_segmentation
    from selfsup.tasks.segmentation import observer_agreement

    root = Path(str(tmp_path))

    def save(sub: str, name: str, arr: np.ndarray) -> None:
        (root / sub).mkdir(exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(root / sub / f"{name}.png")

    first = np.array([[255, 255, 0, 0], [0, 0, 0, 255]])
    second = np.array([[255, 0, 255, 0], [0, 0, 255, 0]])
    fov = np.array([[255, 255, 255, 255], [255, 255, 0, 0]])  # the last two not scored
    for name in ("a", "b"):
        save("images", name, np.zeros((2, 4, 3)))
        save("masks", name, first)
        save("fov", name, fov)
    save("masks_2nd", "a", second)
    save("masks_2nd", "b", np.full((2, 4), 255))  # every pixel foreground: suspect
    folder = open_segmentation(root)
    assert observer_agreement(folder) is not None
    obs = observer_agreement(folder)
    assert obs is not None and obs["masks"] == "masks_2nd" and obs["images"] == 1
    assert obs["suspect"] == [str(root / "masks_2nd" / "b.png")]
    # Scored pixels of "a": first 1,1,0,0,0,0 vs second 1,0,1,0,0,0: TP 1, FN 1, FP 1.
    assert obs["dice"] == pytest.approx(50.0)
    # IoU foreground 1/3; background: TP 3 (pixels 4, 5, 6), FP 1, FN 1: 3/5.
    assert obs["miou"] == pytest.approx(100 * (1 / 3 + 3 / 5) / 2)
    (root / "masks_2nd" / "a.png").unlink()
    (root / "masks_2nd" / "b.png").unlink()
    (root / "masks_2nd").rmdir()
    assert observer_agreement(open_segmentation(root)) is None
