"""Shared transform pieces: decoding to uint8 tensors, multi-view, evaluation resize."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from selfsup.transforms.batched import ViewSpec

Transform = Callable[[torch.Tensor], torch.Tensor]


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> (C, H, W) uint8 tensor, without copying pixel data twice."""
    t: torch.Tensor = v2.functional.pil_to_tensor(img)
    return t


class MultiView:
    """Apply several view transforms to one image: ``(C, H, W) -> [view_0, view_1, ...]``.

    The image is decoded once and every view is cropped from the same uint8 tensor.
    """

    def __init__(
        self, transforms: Sequence[Transform], specs: Sequence[ViewSpec] | None = None
    ) -> None:
        if not transforms:
            raise ValueError("MultiView needs at least one transform")
        if specs is not None and len(specs) != len(transforms):
            raise ValueError("MultiView: one spec per transform")
        self.transforms = list(transforms)
        # The random parameters of each view, when the views come from specs: then the
        # same augmentation can also run batched on the device (transforms.batched).
        self.specs = list(specs) if specs is not None else None

    def __call__(self, img: torch.Tensor) -> list[torch.Tensor]:
        """``(C, H, W)``: every view from the image; ``(T, C, H, W)`` (moments of a video):
        view k from frame k mod T."""
        if img.dim() == 4:
            return [t(img[k % img.shape[0]]) for k, t in enumerate(self.transforms)]
        return [t(img) for t in self.transforms]

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"MultiView(\n  {inner}\n)"


def to_float() -> v2.ToDtype:
    """uint8 -> float32 in [0, 1]; float images (deep data) pass unchanged."""
    return v2.ToDtype(torch.float32, scale=True)


def normalize(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """(C, H, W) uint8 or float in [0, 1] -> float32 normalised."""
    return v2.Compose([to_float(), v2.Normalize(list(mean), list(std))])


def eval_resize(image_size: int) -> int:
    """The short side images are resized to before the centre crop of ``image_size``.

    Small images (<= 64 px) are resized to exactly ``image_size``; larger ones follow the
    ImageNet convention of resizing to ``image_size / 0.875`` and centre-cropping.
    """
    return image_size if image_size <= 64 else round(image_size / 0.875)


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Deterministic view for features: resize the short side to
    :func:`eval_resize` ``(image_size)``, centre crop, normalise."""
    resize = eval_resize(image_size)
    return v2.Compose(
        [
            to_float(),
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(image_size),
            normalize(mean, std),
        ]
    )
