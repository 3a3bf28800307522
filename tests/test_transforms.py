from __future__ import annotations

import pytest
import torch

import selfsup
from selfsup.config import IMAGENET_MEAN, IMAGENET_STD
from selfsup.transforms import ViewsConfig, eval_transform, view_transform


def _img(c: int = 3, h: int = 40, w: int = 50) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("size", [16, 32, 96])
def test_simclr_views_shape_dtype_and_normalisation(size: int) -> None:
    method = selfsup.create_method("simclr", image_size=size)
    t = method.default_transform(size, IMAGENET_MEAN, IMAGENET_STD)
    views = t(_img())
    assert len(views) == 2
    for v in views:
        assert v.shape == (3, size, size) and v.dtype == torch.float32
        # Normalised: values of a uint8 image mapped by (x/255 - mean)/std.
        assert v.min() >= (0 - max(IMAGENET_MEAN)) / min(IMAGENET_STD) - 1e-4
        assert v.max() <= (1 - min(IMAGENET_MEAN)) / min(IMAGENET_STD) + 1e-4
    assert not torch.equal(views[0], views[1])  # two different augmentations


def test_views_are_seeded() -> None:
    t = view_transform(ViewsConfig(), 32, IMAGENET_MEAN, IMAGENET_STD)
    img = _img()
    torch.manual_seed(5)
    a = t(img)
    torch.manual_seed(5)
    b = t(img)
    assert torch.equal(a, b)


def test_grayscale_single_channel() -> None:
    t = view_transform(ViewsConfig(), 28, [0.5], [0.25], channels=1)
    v = t(_img(c=1, h=28, w=28))
    assert v.shape == (1, 28, 28)


def test_augmentation_statistics() -> None:
    # With everything but the crop disabled, a constant image stays constant; with
    # grayscale forced, the three channels of a colour image become equal.
    cfg = ViewsConfig(cj_prob=0.0, gray_prob=1.0, hflip_prob=0.0)
    t = view_transform(cfg, 16, [0.0] * 3, [1.0] * 3)
    v = t(_img())
    assert torch.allclose(v[0], v[1], atol=1e-2) and torch.allclose(v[1], v[2], atol=1e-2)
    const = torch.full((3, 20, 20), 128, dtype=torch.uint8)
    v = view_transform(ViewsConfig(cj_prob=0.0, gray_prob=0.0), 16, [0.0] * 3, [1.0] * 3)(const)
    assert torch.allclose(v, torch.full_like(v, 128 / 255), atol=1e-3)


def test_eval_transform_is_deterministic_and_sized() -> None:
    t = eval_transform(32, IMAGENET_MEAN, IMAGENET_STD)
    img = _img(h=40, w=50)
    assert torch.equal(t(img), t(img))
    assert t(img).shape == (3, 32, 32)
    assert eval_transform(224, IMAGENET_MEAN, IMAGENET_STD)(_img(h=300, w=400)).shape == (
        3,
        224,
        224,
    )
