"""Dense (per-location) features of the backbones, for segmentation and detection heads.

Every backbone offers ``dense_specs()`` and ``forward_dense(x)`` (see
:class:`~selfsup.backbones.factory.Backbone`): feature maps ordered fine to coarse, each
described by a :class:`DenseSpec`. This module holds the network-specific halves for
torchvision ResNets and for any timm model with ``feature_info``; ViTs are handled in
:mod:`selfsup.backbones.vit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class DenseSpec:
    """One feature map of ``forward_dense``: its ``channels`` and its ``stride`` in input
    pixels (a map of a (H, W) input is (H / stride, W / stride), rounded up for sizes that
    are not multiples of the stride)."""

    name: str
    channels: int
    stride: int


def is_torchvision_resnet(net: nn.Module) -> bool:
    """True for ``torchvision.models.ResNet`` (also ResNeXt / wide ResNets)."""
    import torchvision

    return isinstance(net, torchvision.models.ResNet)


def _stride(module: nn.Module) -> int:
    s = getattr(module, "stride", 1)
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def resnet_dense_specs(net: nn.Module) -> list[DenseSpec]:
    """The outputs of layer1..layer4, with strides read off the network's own convolutions:
    4, 8, 16, 32 with the ImageNet stem (7x7/2 conv + max-pool), 1, 2, 4, 8 with the
    small-image stem (3x3/1 conv, no max-pool)."""
    stride = _stride(getattr(net, "conv1"))  # noqa: B009
    pool = getattr(net, "maxpool")  # noqa: B009
    if isinstance(pool, nn.MaxPool2d):
        stride *= _stride(pool)
    specs = []
    for name in RESNET_LAYERS:
        layer: Any = getattr(net, name)
        # The first block downsamples (conv1 of a BasicBlock, conv2 of a Bottleneck); the
        # shortcut's stride equals the main path's, so it is not counted.
        for m in layer[0].children():
            if isinstance(m, nn.Conv2d):
                stride *= _stride(m)
        convs = [m for m in layer[-1].children() if isinstance(m, nn.Conv2d)]
        specs.append(DenseSpec(name, int(convs[-1].out_channels), stride))
    return specs


def resnet_forward_dense(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """(B, C, H, W) -> [layer1, ..., layer4] maps, as ``torchvision.models.ResNet`` computes
    them (stem, then the four stages)."""
    n: Any = net
    x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
    out = []
    for name in RESNET_LAYERS:
        x = getattr(n, name)(x)
        out.append(x)
    return out


def timm_feature_info(net: nn.Module) -> list[dict[str, Any]] | None:
    """timm's ``feature_info`` (the ``features_only`` contract: ``num_chs``, ``reduction``,
    ``module`` per level), or None for a network without it."""
    info = getattr(net, "feature_info", None)
    info = getattr(info, "info", info)  # a FeatureInfo object (features_only nets) or a list
    if not isinstance(info, Sequence) or not info:
        return None
    if not all(isinstance(d, dict) and {"num_chs", "reduction"} <= set(d) for d in info):
        return None
    return [dict(d) for d in info]


def timm_dense_specs(info: list[dict[str, Any]]) -> list[DenseSpec]:
    """One spec per ``feature_info`` level (already ordered fine to coarse by timm)."""
    return [
        DenseSpec(str(d.get("module", f"level{i}")), int(d["num_chs"]), int(d["reduction"]))
        for i, d in enumerate(info)
    ]


def timm_forward_dense(
    net: nn.Module, x: torch.Tensor, specs: list[DenseSpec], name: str
) -> list[torch.Tensor]:
    """The ``feature_info`` levels of a timm model: by ``forward_intermediates`` (timm's
    feature contract, which also turns token outputs into NCHW maps) where the model has
    it, else by forward hooks on the levels' modules (what ``features_only`` does)."""
    fwd = getattr(net, "forward_intermediates", None)
    if fwd is not None:
        try:
            outs = list(fwd(x, indices=len(specs), intermediates_only=True))
        except NotImplementedError:
            outs = []
        if _fits(outs, specs):
            return outs
    return _hooked_features(net, x, specs, name)


def _fits(outs: list[torch.Tensor], specs: list[DenseSpec]) -> bool:
    return len(outs) == len(specs) and all(
        o.ndim == 4 and o.shape[1] == s.channels for o, s in zip(outs, specs, strict=True)
    )


def _hooked_features(
    net: nn.Module, x: torch.Tensor, specs: list[DenseSpec], name: str
) -> list[torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for spec in specs:

        def grab(module: nn.Module, args: Any, output: Any, key: str = spec.name) -> None:
            captured[key] = output

        handles.append(net.get_submodule(spec.name).register_forward_hook(grab))
    try:
        forward_features = getattr(net, "forward_features", net)
        forward_features(x)
    finally:
        for h in handles:
            h.remove()
    outs = []
    for spec in specs:
        o = captured[spec.name]
        if o.ndim == 4 and o.shape[1] != spec.channels and o.shape[-1] == spec.channels:
            o = o.permute(0, 3, 1, 2)  # NHWC stages (e.g. Swin)
        if o.ndim != 4 or o.shape[1] != spec.channels:
            raise TypeError(
                f"backbone {name}: feature level {spec.name!r} gives a tensor of shape "
                f"{tuple(o.shape)}, not a (B, {spec.channels}, h, w) map, so it has no dense "
                "features; use a ResNet, a timm VisionTransformer or a timm CNN."
            )
        outs.append(o.contiguous())
    return outs
