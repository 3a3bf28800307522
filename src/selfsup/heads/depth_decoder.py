"""The two networks of self-supervised monocular depth beside the encoder (Godard et al.,
Monodepth2, ICCV 2019):

- :class:`DispDecoder`: U-Net's expanding path on the encoder's levels
  (:class:`~selfsup.heads.dense.UNetDecoder`, carried to full resolution) with a 3x3 conv +
  sigmoid disparity at the ``scales`` finest levels (strides 8, 4, 2, 1 for four);
- :class:`PoseNet`: a ResNet-18 on two frames stacked along channels, global average
  pooled, to a 6-DoF motion (rotation vector, translation) scaled by 0.01 so training starts
  near the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from selfsup.backbones.dense import DenseSpec
from selfsup.heads.dense import UNetDecoder


class DispDecoder(nn.Module):
    """``forward(feats, image)`` -> disparities in [0, 1], finest first: a list of
    ``(B, 1, H / s, W / s)`` for the strides ``s`` of :attr:`strides`."""

    uses_image = True

    def __init__(self, specs: Sequence[DenseSpec], in_chans: int = 3, width: int = 256,
                 scales: int = 4, init_disp: float | None = None) -> None:  # fmt: skip
        """``init_disp``: the sigmoid output every head starts at on average (its bias is
        set to the logit); ``None`` keeps PyTorch's default (an average of 0.5)."""
        super().__init__()
        self.unet = UNetDecoder(specs, 1, in_chans=in_chans, width=width)
        self.unet.classifier = nn.Identity()  # type: ignore[assignment]
        n = len(self.unet.level_channels)
        if not 1 <= scales <= n:
            raise ValueError(f"scales must be 1..{n} for this encoder, got {scales}")
        self.scales = scales
        chans = self.unet.level_channels[n - scales :]
        self.strides = self.unet.level_strides[n - scales :][::-1]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 3, padding=1) for c in chans)
        if init_disp is not None:
            if not 0 < init_disp < 1:
                raise ValueError(f"init_disp must be in (0, 1), got {init_disp}")
            logit = math.log(init_disp / (1 - init_disp))
            for h in self.heads:
                nn.init.constant_(h.bias, logit)  # type: ignore[arg-type]

    def forward(self, feats: Sequence[torch.Tensor], image: torch.Tensor) -> list[torch.Tensor]:
        levels = self.unet.levels(feats, image)[-self.scales :]
        disps = [torch.sigmoid(h(x).float()) for h, x in zip(self.heads, levels, strict=True)]
        return disps[::-1]


class PoseNet(nn.Module):
    """Two frames ``(B, 3, H, W)`` each (normalised) -> ``(rotation vector (B, 3),
    translation (B, 3))`` of the motion from the first's camera to the second's."""

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(2 * in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.encoder = net
        self.head = nn.Linear(512, 6)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=1e-3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = 0.01 * self.head(self.encoder(torch.cat([a, b], dim=1)).float())
        return out[:, :3], out[:, 3:]
