"""A ResNet for clips: torchvision's ResNet run on every frame, with temporal shift modules
(TSM, Lin et al., "TSM: Temporal Shift Module for Efficient Video Understanding", ICCV 2019)
so that frames exchange information, and the frame features averaged over time.

TSM moves a fraction of each residual block's input channels one frame forward and the same
fraction one frame back before the block's first convolution ("residual shift", Sec. 3.2 of
the paper). It costs no parameters and almost no FLOPs, so the network has exactly
ResNet-18's weights (an export loads into a stock ``torchvision.models.resnet18``) and the
FLOPs of one ResNet-18 a frame, while its features can encode motion: the paper's Table 1
puts TSM on a 2-D ResNet-50 at the accuracy of 3-D CNNs on Something-Something.
``shift_div`` = 0 turns the shift off: frame features averaged over time (temporal average
pooling, the TSN baseline).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet

from selfsup.backbones.factory import TORCHVISION_RESNETS, Backbone, _resnet
from selfsup.config import ConfigError

VIDEO_RESNETS = tuple(f"video_{n}" for n in ("resnet18", "resnet34", "resnet50"))
assert all(n[len("video_") :] in TORCHVISION_RESNETS for n in VIDEO_RESNETS)


def temporal_shift(x: torch.Tensor, frames: int, shift_div: int) -> torch.Tensor:
    """``(N * T, C, H, W)`` -> the same with channels ``[0, C/div)`` taken from the next frame
    and ``[C/div, 2C/div)`` from the previous one (zeros past either end of the clip)."""
    nt, c, h, w = x.shape
    fold = c // shift_div
    v = x.view(nt // frames, frames, c, h, w)
    out = torch.zeros_like(v)
    out[:, :-1, :fold] = v[:, 1:, :fold]  # from the future
    out[:, 1:, fold : 2 * fold] = v[:, :-1, fold : 2 * fold]  # from the past
    out[:, :, 2 * fold :] = v[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class VideoResNetBackbone(Backbone):
    """The backbone contract for clips: ``forward`` maps clips ``(B, C, T, H, W)`` to
    ``(B, D)``, the mean over time of the frames' pooled features. An image batch ``(B, C, H,
    W)`` is a batch of one-frame clips (no shift: nothing to exchange), so image tools (the
    kNN monitor, ``embed`` on images, dense features) see a plain ResNet. ``is_video`` tells
    evaluations to feed whole clips of ``frames`` frames."""

    is_video = True

    def __init__(self, net: nn.Module, embed_dim: int, name: str, frames: int,
                 shift_div: int) -> None:  # fmt: skip
        super().__init__(net, embed_dim, name)
        self.frames, self.shift_div = frames, shift_div
        self._t = 1  # frames of the clip going through now (the shift hooks read it)
        if shift_div:
            assert isinstance(net, ResNet)
            for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
                for block in stage:
                    # A pre-hook, not a wrapper module: the state dict keeps torchvision's keys.
                    block.conv1.register_forward_pre_hook(self._shift)

    def _shift(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
        if self._t <= 1:
            return None
        return (temporal_shift(args[0], self._t, self.shift_div),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return super().forward(x)
        if x.ndim != 5:
            raise ValueError(f"{self.name} takes (B, C, T, H, W) clips, got {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        conv1 = self.net.conv1
        assert isinstance(conv1, nn.Conv2d)
        if conv1.weight.is_contiguous(memory_format=torch.channels_last):
            frames = frames.contiguous(memory_format=torch.channels_last)
        self._t = t
        try:
            out = super().forward(frames)
        finally:
            self._t = 1
        return out.view(b, t, -1).mean(1)


def video_resnet(name: str, small_stem: bool, in_chans: int,
                 kwargs: dict[str, Any]) -> VideoResNetBackbone:  # fmt: skip
    """``video_resnet18`` (34, 50) with ``backbone.kwargs`` ``frames`` (clip length, 8) and
    ``shift_div`` (1/shift_div of the channels move each way, 8 as in TSM; 0: no shift)."""
    known = {"frames", "shift_div"}
    unknown = set(kwargs) - known
    if unknown:
        raise ConfigError(
            f"backbone.kwargs {sorted(unknown)} are not options of {name}; it takes "
            f"{', '.join(sorted(known))}."
        )
    frames, shift_div = int(kwargs.get("frames", 8)), int(kwargs.get("shift_div", 8))
    if frames < 1 or shift_div < 0 or shift_div == 1 or shift_div == 2:
        raise ConfigError(
            f"{name} needs backbone.kwargs.frames >= 1 and shift_div 0 (off) or >= 3 (a share "
            f"of channels moved each way), got frames={frames}, shift_div={shift_div}."
        )
    base = _resnet(name[len("video_") :], small_stem, in_chans)
    bb = VideoResNetBackbone(base.net, base.embed_dim, name, frames, shift_div)
    bb.build_kwargs = {**base.build_kwargs, "frames": frames, "shift_div": shift_div}
    return bb
