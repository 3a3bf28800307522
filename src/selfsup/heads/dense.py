"""Heads on dense backbone features (``Backbone.forward_dense``) for semantic segmentation.

- :class:`LinearSegHead`: the linear protocol of DINOv2 (Oquab et al., "DINOv2: Learning
  Robust Visual Features without Supervision", 2023, Sec. 7.4): BatchNorm and a 1x1
  convolution on frozen patch features (the last block's, or the last 4 concatenated).
- :class:`FPNDecoder`: a light Feature Pyramid Network (Lin et al., "Feature Pyramid Networks
  for Object Detection", CVPR 2017) with the semantic branch of Panoptic FPN (Kirillov et
  al., "Panoptic Feature Pyramid Networks", CVPR 2019): every level brought to the finest
  stride and fused.
- :class:`UNetDecoder`: U-Net's expanding path (Ronneberger et al., "U-Net: Convolutional
  Networks for Biomedical Image Segmentation", MICCAI 2015) over the backbone's levels, carried
  on to full resolution with skips from a shallow branch on the image itself, for structures
  a pixel or two wide (retinal vessels) that a stride-4 prediction cannot draw.
- :class:`DenseModel`: backbone + head, logits upsampled to the input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.dense import DenseSpec


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, *size); a no-op when already that size."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _finest(feats: Sequence[torch.Tensor]) -> tuple[int, int]:
    h, w = max((f.shape[-2], f.shape[-1]) for f in feats)
    return int(h), int(w)


class LinearSegHead(nn.Module):
    """DINOv2's linear segmentation probe: maps upsampled to the finest one, concatenated,
    BatchNorm, 1x1 convolution (Oquab et al., 2023, Sec. 7.4; their "+ms" variant
    concatenates the patch tokens of the last 4 blocks).

    ``in_channels``: an int uses only the last map it is given; a list of k channel counts
    uses the last k maps. Shapes: ``[(B, C_i, h_i, w_i)] -> (B, num_classes, h, w)`` at the
    finest (h, w) among the maps used.
    """

    def __init__(self, in_channels: int | Sequence[int], num_classes: int) -> None:
        super().__init__()
        chans = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        if not chans or min(chans) < 1 or num_classes < 1:
            raise ValueError(
                f"LinearSegHead needs channels >= 1 and classes >= 1, got {chans}, {num_classes}"
            )
        self.in_channels = chans
        self.bn = nn.BatchNorm2d(sum(chans))
        self.conv = nn.Conv2d(sum(chans), num_classes, kernel_size=1)
        # As DINOv2's BNHead (mmseg's conv_seg): small normal weights, zero bias.
        nn.init.normal_(self.conv.weight, std=0.01)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, feats: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        maps = [feats] if isinstance(feats, torch.Tensor) else list(feats)
        k = len(self.in_channels)
        if len(maps) < k:
            raise ValueError(f"LinearSegHead expects {k} feature maps, got {len(maps)}")
        maps = maps[-k:]
        got = [int(m.shape[1]) for m in maps]
        if got != self.in_channels:
            raise ValueError(f"LinearSegHead built for channels {self.in_channels}, got {got}")
        size = _finest(maps)
        x = torch.cat([_resize(m, size) for m in maps], dim=1)
        out: torch.Tensor = self.conv(self.bn(x))
        return out


def _conv_gn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv, GroupNorm (Panoptic FPN's choice: batch-size independent), ReLU."""
    groups = math.gcd(32, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
    )


class FPNDecoder(nn.Module):
    """A light FPN segmentation decoder (Lin et al., 2017; Kirillov et al., 2019).

    Lateral 1x1 convolutions to ``width`` channels, a top-down pathway (each level plus its
    coarser neighbour upsampled), a 3x3 smoothing convolution per level, then Panoptic FPN's
    semantic branch: a 3x3 conv-GN-ReLU per level, all upsampled to the finest stride and
    fused (``"sum"`` as in the paper, or ``"concat"``), and a 1x1 classifier.

    ``specs`` are the backbone's ``dense_specs()`` (fine to coarse; levels of equal stride,
    as a ViT's, are fine). Shapes: ``[(B, C_i, h_i, w_i)] -> (B, num_classes, h_0, w_0)``.
    """

    def __init__(
        self,
        specs: Sequence[DenseSpec],
        num_classes: int,
        width: int = 128,
        fuse: Literal["sum", "concat"] = "sum",
    ) -> None:
        super().__init__()
        specs = list(specs)
        if not specs:
            raise ValueError("FPNDecoder needs at least one feature level")
        strides = [s.stride for s in specs]
        if strides != sorted(strides):
            raise ValueError(f"FPNDecoder needs levels ordered fine to coarse, got {strides}")
        if fuse not in ("sum", "concat"):
            raise ValueError(f"fuse must be 'sum' or 'concat', got {fuse!r}")
        self.specs, self.fuse = specs, fuse
        self.lateral = nn.ModuleList(nn.Conv2d(s.channels, width, kernel_size=1) for s in specs)
        self.smooth = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, padding=1) for _ in specs
        )
        self.branch = nn.ModuleList(_conv_gn_relu(width, width) for _ in specs)
        fused = width if fuse == "sum" else width * len(specs)
        self.classifier = nn.Conv2d(fused, num_classes, kernel_size=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.specs):
            raise ValueError(f"FPNDecoder built for {len(self.specs)} levels, got {len(feats)}")
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 2, -1, -1):  # top-down: coarse to fine
            size = (int(lat[i].shape[-2]), int(lat[i].shape[-1]))
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=size, mode="nearest")
        levels = [
            branch(smooth(p))
            for branch, smooth, p in zip(self.branch, self.smooth, lat, strict=True)
        ]
        size = _finest(levels)
        up = [_resize(p, size) for p in levels]
        x = torch.stack(up).sum(0) if self.fuse == "sum" else torch.cat(up, dim=1)
        out: torch.Tensor = self.classifier(x)
        return out


class UNetDecoder(nn.Module):
    """U-Net's expanding path over a backbone's levels, continued to full resolution.

    From the coarsest level up: upsample to the next finer level, concatenate its lateral
    (1x1-projected) map, two 3x3 conv-GN-ReLU. Below the backbone's finest stride, each
    halving of the stride takes a skip from a shallow branch on the image (two 3x3
    conv-GN-ReLU at stride 1, then strided copies), so the classifier sees full-resolution
    edges however deep the backbone's finest map is. Widths halve with the stride, from
    ``width`` at the coarsest level down to ``min_width``.

    ``forward(feats, image)``: ``[(B, C_i, h_i, w_i)], (B, C, H, W) -> (B, K, H, W)``.
    """

    uses_image = True

    def __init__(
        self,
        specs: Sequence[DenseSpec],
        num_classes: int,
        in_chans: int = 3,
        width: int = 256,
        min_width: int = 16,
    ) -> None:
        super().__init__()
        specs = list(specs)
        if not specs:
            raise ValueError("UNetDecoder needs at least one feature level")
        strides = [s.stride for s in specs]
        if strides != sorted(strides) or len(set(strides)) != len(strides):
            raise ValueError(
                f"UNetDecoder needs levels of strictly growing stride (a CNN's), got {strides}; "
                "use the FPN decoder for a ViT's single-stride maps"
            )
        if any(s & (s - 1) for s in strides):
            raise ValueError(f"UNetDecoder needs power-of-two strides, got {strides}")
        self.specs = specs
        n = len(specs)
        widths = [max(min_width, width >> (n - 1 - i)) for i in range(n)]  # fine .. coarse
        self.lateral = nn.ModuleList(
            nn.Conv2d(s.channels, w, kernel_size=1) for s, w in zip(specs, widths, strict=True)
        )
        self.up = nn.ModuleList(
            nn.Sequential(_conv_gn_relu(widths[i + 1] + widths[i], widths[i]),
                          _conv_gn_relu(widths[i], widths[i]))
            for i in range(n - 1)
        )  # fmt: skip
        # Below the finest backbone stride: strides finest/2, ..., 1, skips from the image.
        fine = strides[0].bit_length() - 1  # log2 of the finest stride
        self.shallow_width = min_width
        self.shallow = nn.Sequential(_conv_gn_relu(in_chans, min_width),
                                     _conv_gn_relu(min_width, min_width))  # fmt: skip
        prev = widths[0]
        self.below = nn.ModuleList()
        for _ in range(fine):
            self.below.append(nn.Sequential(_conv_gn_relu(prev + min_width, min_width),
                                            _conv_gn_relu(min_width, min_width)))  # fmt: skip
            prev = min_width
        self.classifier = nn.Conv2d(prev, num_classes, kernel_size=1)
        # What levels() returns: channels and strides of each map, coarse to fine.
        self.level_channels = [widths[i] for i in range(n - 2, -1, -1)] + [min_width] * fine
        self.level_strides = [strides[i] for i in range(n - 2, -1, -1)] + [
            2 ** (fine - 1 - j) for j in range(fine)
        ]

    def levels(self, feats: Sequence[torch.Tensor], image: torch.Tensor) -> list[torch.Tensor]:
        """The decoder's maps after each block, coarse to fine (the last at full
        resolution): for heads that predict at several scales (Monodepth2's disparities)."""
        if len(feats) != len(self.specs):
            raise ValueError(f"UNetDecoder built for {len(self.specs)} levels, got {len(feats)}")
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        x, out = lat[-1], []
        for i in range(len(lat) - 2, -1, -1):
            x = _resize(x, (int(lat[i].shape[-2]), int(lat[i].shape[-1])))
            x = self.up[i](torch.cat([x, lat[i]], dim=1))
            out.append(x)
        skip = self.shallow(image)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        for j, block in enumerate(self.below):
            s = 2 ** (len(self.below) - 1 - j)  # the stride this block works at
            size = (-(-h // s), -(-w // s))
            x = _resize(x, size)
            side = skip if s == 1 else F.avg_pool2d(skip, s, ceil_mode=True)
            x = block(torch.cat([x, _resize(side, size)], dim=1))
            out.append(x)
        return out

    def forward(self, feats: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.levels(feats, image)[-1])
        return out


class DenseModel(nn.Module):
    """A backbone's ``forward_dense`` maps into a dense head, logits upsampled (bilinear) to
    the input: ``(B, C, H, W) -> (B, num_classes, H, W)``.

    ``freeze_backbone``: the backbone runs without gradients and stays in eval mode (its
    BatchNorm statistics fixed) even under ``train()``, the linear protocol of DINOv2.
    ``levels``: indices of the ``forward_dense`` maps handed to the head (all by default).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        freeze_backbone: bool = False,
        levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone, "forward_dense", None)):
            raise TypeError(
                f"{type(backbone).__name__} has no forward_dense; build the backbone with "
                "selfsup.backbones.create_backbone (ResNets, timm CNNs and ViTs have one)."
            )
        self.backbone, self.head = backbone, head
        self.freeze_backbone = freeze_backbone
        self.levels = None if levels is None else list(levels)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> DenseModel:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def trainable_modules(self) -> list[nn.Module]:
        """The head, and the backbone unless frozen."""
        return [self.head] if self.freeze_backbone else [self.backbone, self.head]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> the backbone's maps selected by ``levels``."""
        forward_dense = getattr(self.backbone, "forward_dense")  # noqa: B009
        if self.freeze_backbone:
            with torch.no_grad():
                feats: list[torch.Tensor] = forward_dense(x)
        else:
            feats = forward_dense(x)
        return feats if self.levels is None else [feats[i] for i in self.levels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        # A decoder that reads the image too (U-Net's full-resolution skips) says so.
        logits: torch.Tensor = (
            self.head(feats, x) if getattr(self.head, "uses_image", False) else self.head(feats)
        )
        return _resize(logits, (int(x.shape[-2]), int(x.shape[-1])))
