"""Paired transforms for dense tasks: an image and its mask, or its boxes and instance masks,
move together.

Images come in as (C, H, W) uint8 (or float32 in [0, 1] for deep files). Images are
resized bilinearly (antialiased when shrinking); masks with exact nearest neighbour on the
same pixel-centre grid, so a mask pixel keeps the label of the image pixel it covers.

Randomness: each ``__call__`` takes an optional ``torch.Generator``; without one the global
torch RNG is used (a ``DataLoader`` seeds it differently in every worker, so seed it with
``torch.manual_seed`` for a reproducible run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as nnf
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from selfsup.data.coco import CocoDetection
from selfsup.data.segmentation import SegmentationFolder

Size = int | tuple[int, int]
DetTarget = dict[str, Any]


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) uint8 or float -> float32 in [0, 1]."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def normalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(C, H, W) float in [0, 1] -> (C, H, W) normalised with per-channel mean and std."""
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s


def resize_image(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float -> (C, h, w), bilinear (antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == hw:
        return image
    out: torch.Tensor = F.resize(image, list(hw), antialias=True)
    return out


def resize_nearest(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) of any dtype -> (..., h, w): output pixel (i, j) takes the input pixel
    under its centre, ``floor((i + 0.5) * H / h)`` (torch's ``nearest-exact``)."""
    H, W = mask.shape[-2:]
    h, w = hw
    if (h, w) == (H, W):
        return mask
    rows = ((torch.arange(h) + 0.5) * (H / h)).long().clamp_(max=H - 1)
    cols = ((torch.arange(w) + 0.5) * (W / w)).long().clamp_(max=W - 1)
    return mask[..., rows[:, None], cols[None, :]]


def short_side_size(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """(h, w) with the shorter side ``size`` and the aspect ratio kept."""
    h, w = hw
    s = size / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def long_side_size(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """(h, w) with the longer side ``size`` and the aspect ratio kept."""
    h, w = hw
    s = size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(high: int, g: torch.Generator | None) -> int:
    """Uniform in [0, high]."""
    return int(torch.randint(high + 1, (), generator=g)) if high > 0 else 0


class SegTrain:
    """Training view for semantic segmentation: random scale of the whole image (a factor
    drawn uniformly from ``scale``), a random ``size`` x ``size`` crop (padded with 0 in the
    normalised image, i.e. the mean colour, and ``ignore_index`` in the mask where the
    scaled image is smaller), and a random horizontal flip (probability ``hflip``).

    ``base_size``: when set, scales apply to the image with its shorter side first mapped
    to ``base_size`` (in one resize); pair it with ``SegEval(base_size)`` so training and
    evaluation see objects at the same scale. None keeps the native resolution, right when
    the files are already at the working resolution (thin vessels in DRIVE vanish when
    shrunk). Mean and std are for pixels in [0, 1].

    ``(image (C, H, W), mask (H, W)) -> (float32 (C, size, size), int64 (size, size))``.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.5, 2.0),
        ignore_index: int = 255,
        hflip: float = 0.5,
        base_size: int | None = None,
    ) -> None:
        self.size, self.scale, self.hflip = size, scale, hflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index, self.base_size = ignore_index, base_size

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g, size = generator, self.size
        H, W = int(image.shape[-2]), int(image.shape[-1])
        base = 1.0 if self.base_size is None else self.base_size / min(H, W)
        s = base * _uniform(*self.scale, g)
        hw = (max(1, round(H * s)), max(1, round(W * s)))
        img = resize_image(to_unit(image), hw)
        m = resize_nearest(mask.long(), hw)
        top, left = _randint(hw[0] - size, g), _randint(hw[1] - size, g)
        img = normalise(img[:, top : top + size, left : left + size], self.mean, self.std)
        m = m[top : top + size, left : left + size]
        pad = (0, size - img.shape[-1], 0, size - img.shape[-2])
        if pad[1] or pad[3]:
            img = nnf.pad(img, pad, value=0.0)
            m = nnf.pad(m, pad, value=self.ignore_index)
        if float(torch.rand((), generator=g)) < self.hflip:
            img, m = img.flip(-1), m.flip(-1)
        return img.contiguous(), m.contiguous()

    def __repr__(self) -> str:
        return (f"SegTrain(size={self.size}, scale={self.scale}, hflip={self.hflip}, "
                f"base_size={self.base_size}, ignore_index={self.ignore_index})")  # fmt: skip


class SegEval:
    """Evaluation view: the image resized so its shorter side is ``size`` (or to exactly
    ``(h, w)``; None keeps it) and normalised; the mask stays at full resolution, because
    metrics are computed there (upsample the logits to the mask's size).

    ``(image (C, H, W), mask (H, W)) -> (float32 (C, h, w), int64 (H, W))``.
    """

    def __init__(self, size: Size | None, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hw = (int(image.shape[-2]), int(image.shape[-1]))
        if isinstance(self.size, int):
            hw = short_side_size(hw, self.size)
        elif self.size is not None:
            hw = (int(self.size[0]), int(self.size[1]))
        img = normalise(resize_image(to_unit(image), hw), self.mean, self.std)
        return img, mask.long()

    def __repr__(self) -> str:
        return f"SegEval(size={self.size})"


class DetEval:
    """Detection view: resized so the longer side is ``size`` (boxes and masks with it),
    float32 in [0, 1] and not normalised: torchvision's detection models normalise inside;
    pass them :meth:`model_kwargs` so they use ``mean``/``std`` and keep this size.

    ``(image (3, H, W), target) -> (float32 (3, h, w), target)``; the target's ``boxes``
    (N, 4) xyxy are scaled, ``masks`` (N, H, W) resized (nearest), and ``orig_size``
    (int64 [H, W]) added so predictions can be mapped back (:func:`rescale_boxes`).
    """

    hflip = 0.0

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a torchvision detection model (e.g. ``maskrcnn_resnet50_fpn``)
        so that it normalises with our statistics and does not resize again."""
        return {"image_mean": list(self.mean), "image_std": list(self.std),
                "min_size": self.size, "max_size": self.size}  # fmt: skip

    def __call__(
        self, image: torch.Tensor, target: DetTarget, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DetTarget]:
        H, W = int(image.shape[-2]), int(image.shape[-1])
        h, w = long_side_size((H, W), self.size)
        img = resize_image(to_unit(image), (h, w))
        out = dict(target)
        out["orig_size"] = torch.tensor([H, W], dtype=torch.int64)
        out["boxes"] = rescale_boxes(target["boxes"], (H, W), (h, w))
        if "masks" in target:
            out["masks"] = resize_nearest(target["masks"], (h, w))
        if self.hflip and float(torch.rand((), generator=generator)) < self.hflip:
            img = img.flip(-1)
            out["boxes"] = flip_boxes(out["boxes"], w)
            if "masks" in out:
                out["masks"] = out["masks"].flip(-1)
        return img, out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, hflip={self.hflip})"


class DetTrain(DetEval):
    """:class:`DetEval` plus a random horizontal flip (probability ``hflip``)."""

    def __init__(
        self, size: int, mean: Sequence[float], std: Sequence[float], hflip: float = 0.5
    ) -> None:
        super().__init__(size, mean, std)
        self.hflip = hflip


def rescale_boxes(
    boxes: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]
) -> torch.Tensor:
    """(N, 4) xyxy boxes in an image of ``from_hw`` -> the same boxes in ``to_hw``."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return boxes.float() * torch.tensor([sx, sy, sx, sy], dtype=torch.float32)


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """(N, 4) xyxy boxes mirrored in an image ``width`` pixels wide."""
    out = boxes.clone()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def collate_segmentation(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """[(image (C, h, w), mask (H, W))] -> images (B, C, h, w), masks (B, H, W)."""
    shapes = {(tuple(i.shape), tuple(m.shape)) for i, m in batch}
    if len(shapes) > 1:
        raise ValueError(
            f"segmentation batch mixes sizes {sorted(shapes)}; evaluate images of different "
            "sizes with batch size 1, or give SegEval an exact (h, w)"
        )
    return torch.stack([i for i, _ in batch]), torch.stack([m for _, m in batch])


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, DetTarget]],
) -> tuple[list[torch.Tensor], list[DetTarget]]:
    """[(image (3, h, w), target)] -> (images, targets) as lists (sizes differ)."""
    return [i for i, _ in batch], [t for _, t in batch]


class SegDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A :class:`SegmentationFolder` through a paired transform (``SegTrain``/``SegEval``)."""

    def __init__(self, folder: SegmentationFolder, transform: SegTrain | SegEval) -> None:
        if isinstance(transform, SegTrain) and transform.ignore_index != folder.ignore_index:
            raise ValueError(
                f"SegTrain pads masks with ignore_index={transform.ignore_index} but "
                f"{folder.name} ignores {folder.ignore_index}; pass "
                f"SegTrain(..., ignore_index={folder.ignore_index})"
            )
        self.folder, self.transform = folder, transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.folder.load(i)
        return self.transform(s.image, s.mask)


class DetDataset(Dataset[tuple[torch.Tensor, DetTarget]]):
    """A :class:`CocoDetection` through ``DetTrain``/``DetEval``."""

    def __init__(self, folder: CocoDetection, transform: DetEval) -> None:
        self.folder, self.transform = folder, transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, DetTarget]:
        image, target = self.folder.load(i)
        return self.transform(image, target)


class DepthView:
    """A colour frame and its depth map: the image resized so its shorter side is ``size``
    and normalised; the depth (metres, 0 invalid) stays at full resolution, where metrics
    and the loss are computed; both flipped left-right together with probability
    ``hflip`` (training). Depth is not resized or cropped here: rescaling an image changes
    the apparent depth of what it shows.

    ``(image (3, H, W) uint8, depth (H, W)) -> (float32 (3, h, w), float32 (H, W))``.
    """

    def __init__(self, size: int | None, mean: Sequence[float], std: Sequence[float],
                 hflip: float = 0.0) -> None:  # fmt: skip
        self.size, self.hflip = size, hflip
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self, image: torch.Tensor, depth: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hw = (int(image.shape[-2]), int(image.shape[-1]))
        if self.size is not None:
            hw = short_side_size(hw, self.size)
        img = normalise(resize_image(to_unit(image), hw), self.mean, self.std)
        depth = depth.float()
        if self.hflip > 0 and _uniform(0.0, 1.0, generator) < self.hflip:
            img, depth = img.flip(-1), depth.flip(-1)
        return img, depth

    def __repr__(self) -> str:
        return f"DepthView(size={self.size}, hflip={self.hflip})"
