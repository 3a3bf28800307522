"""Build a backbone by name: torchvision ResNets (with a small-image stem) or any timm model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.backbones.dense import (
    DenseSpec,
    is_torchvision_resnet,
    resnet_dense_specs,
    resnet_forward_dense,
    timm_dense_specs,
    timm_feature_info,
    timm_forward_dense,
)
from selfsup.config import BackboneConfig, ConfigError
from selfsup.registry import UnknownNameError, closest

TORCHVISION_RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
)

# Images at or below this size get the small-image ResNet stem when small_stem is None, and
# ViTs get SMALL_IMAGE_PATCH px patches unless backbone.kwargs.patch_size is given.
SMALL_STEM_MAX_SIZE = 64
SMALL_IMAGE_PATCH = 4


def _is_vit(name: str) -> bool:
    return name.startswith(("vit_", "deit_", "deit3_"))


class Backbone(nn.Module):
    """Wraps a feature network: ``forward(x: (B, C, H, W)) -> (B, embed_dim)``.

    Dense features for segmentation and detection: ``dense_specs()`` describes the maps that
    ``forward_dense(x: (B, C, H, W))`` returns, ordered fine to coarse, each
    ``(B, spec.channels, H / spec.stride, W / spec.stride)``.
    """

    embed_dim: int

    def __init__(self, net: nn.Module, embed_dim: int, name: str) -> None:
        super().__init__()
        self.net = net
        self.embed_dim = embed_dim
        self.name = name
        # How `net` was built (timm.create_model keyword arguments; the ResNet stem), so that
        # an export can name the stock model its weights load into.
        self.build_kwargs: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        if out.ndim != 2:  # e.g. timm models built with global_pool="" by the user
            out = out.flatten(2).mean(-1) if out.ndim == 4 else out.mean(1)
        return out

    def dense_specs(self) -> list[DenseSpec]:
        """Channels and strides of the ``forward_dense`` maps: layer1..layer4 of a ResNet,
        the ``feature_info`` levels of a timm model."""
        if is_torchvision_resnet(self.net):
            return resnet_dense_specs(self.net)
        info = timm_feature_info(self.net)
        if info is None:
            raise TypeError(
                f"backbone {self.name} ({type(self.net).__name__}) has no dense features: it is "
                "neither a torchvision ResNet nor a timm model with feature_info. Use one of "
                f"{', '.join(TORCHVISION_RESNETS)} or a timm CNN / VisionTransformer."
            )
        return timm_dense_specs(info)

    def forward_dense(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> feature maps [(B, C_i, H / s_i, W / s_i)], fine to coarse, as
        ``dense_specs()`` describes them."""
        if is_torchvision_resnet(self.net):
            return resnet_forward_dense(self.net, x)
        return timm_forward_dense(self.net, x, self.dense_specs(), self.name)


def _resnet(name: str, small_stem: bool, in_chans: int) -> Backbone:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if small_stem:
        # CIFAR-style stem (He et al. 2016, Sec. 4.2; SimCLR Appendix B.9): a 3x3 stride-1
        # convolution and no max-pool, so 32 px inputs keep enough spatial resolution.
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    bb = Backbone(net, dim, name)
    bb.build_kwargs = {"small_stem": small_stem, "in_chans": in_chans}
    return bb


def _timm(name: str, in_chans: int, image_size: int | None, kwargs: dict[str, Any]) -> Backbone:
    import timm

    if not timm.list_models(name) and not timm.is_model(name):
        hint = closest(name, timm.list_models())
        did = f" Did you mean {', '.join('timm:' + h for h in hint)}?" if hint else ""
        raise UnknownNameError(
            f"unknown timm model {name!r}.{did} List them with python -c "
            "\"import timm; print(timm.list_models('vit*'))\"."
        )
    args: dict[str, Any] = {"pretrained": False, "num_classes": 0, "in_chans": in_chans}
    if image_size is not None and image_size <= SMALL_STEM_MAX_SIZE and _is_vit(name):
        # The ViT analogue of the small-image stem: 16 px patches would leave a 32 px image
        # with 4 tokens, so small images get 4 px patches (64 tokens at 32 px).
        args["patch_size"] = SMALL_IMAGE_PATCH
    args.update(kwargs)
    if image_size is not None and "img_size" not in args:
        try:  # ViT-like models need to know the input size for their position embeddings.
            net = timm.create_model(name, img_size=image_size, **args)
            args["img_size"] = image_size
        except TypeError:
            net = timm.create_model(name, **args)
    else:
        net = timm.create_model(name, **args)
    from timm.models.vision_transformer import VisionTransformer

    bb: Backbone
    if isinstance(net, VisionTransformer):
        from selfsup.backbones.vit import ViTBackbone

        bb = ViTBackbone(net, "timm:" + name)
    else:
        # Models with a pre-logits layer after pooling (MobileNetV3: 576 -> 1024) return
        # head_hidden_size features when built with num_classes=0, not num_features.
        dim = getattr(net, "head_hidden_size", None) or net.num_features
        assert isinstance(dim, int)
        bb = Backbone(net, dim, "timm:" + name)
    bb.build_kwargs = {k: v for k, v in args.items() if k != "pretrained"}
    return bb


def _video_vits() -> list[str]:
    from selfsup.backbones.video_vit import VIDEO_VITS

    return list(VIDEO_VITS)


def _video_resnets() -> list[str]:
    from selfsup.backbones.video_resnet import VIDEO_RESNETS

    return list(VIDEO_RESNETS)


def list_backbones() -> list[str]:
    """Torchvision names, the clip ResNets and the space-time ViTs built in; any
    ``timm:<name>`` works too."""
    return [*TORCHVISION_RESNETS, *_video_resnets(), *_video_vits(), "timm:<any timm model>"]


def create_backbone(cfg: BackboneConfig, image_size: int | None = None) -> Backbone:
    """Build the backbone described by ``cfg`` for images of ``image_size`` pixels."""
    name = cfg.name
    if name.startswith("timm:"):
        bb = _timm(name[5:], cfg.in_chans, image_size, dict(cfg.kwargs))
    elif name in TORCHVISION_RESNETS or name in _video_resnets():
        small = cfg.small_stem
        if small is None:
            small = image_size is not None and image_size <= SMALL_STEM_MAX_SIZE
        if name in _video_resnets():
            from selfsup.backbones.video_resnet import video_resnet

            bb = video_resnet(name, small, cfg.in_chans, dict(cfg.kwargs))
        elif cfg.kwargs:
            raise ConfigError(
                f"backbone.kwargs is for timm models; {name} takes none (got {dict(cfg.kwargs)})."
            )
        else:
            bb = _resnet(name, small, cfg.in_chans)
    elif name in _video_vits():
        from selfsup.backbones.video_vit import video_vit

        bb = video_vit(name, cfg.in_chans, image_size, dict(cfg.kwargs))
    else:
        names = [*TORCHVISION_RESNETS, *_video_resnets(), *_video_vits()]
        hint = closest(name, names)
        did = f" Did you mean {', '.join(hint)}?" if hint else ""
        raise UnknownNameError(
            f"unknown backbone {name!r}.{did} Use one of {', '.join(names)} "
            "or any timm model as timm:<name> (e.g. timm:vit_tiny_patch16_224)."
        )
    if cfg.weights:
        load_weights(bb, cfg.weights)
    return bb


def load_weights(bb: Backbone, path: str) -> None:
    """Load a local state dict (``.pt``/``.pth`` without code execution, or ``.safetensors``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"backbone.weights file {path!r} does not exist.")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"backbone.weights file {path!r} does not hold a state dict.")
    target = bb.net
    own = target.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not set(state) & set(own) and all(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head."))}
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing:
        raise ConfigError(
            f"backbone.weights {path!r} does not fit {bb.name}: {len(missing)} missing keys "
            f"(first: {missing[:3]}); unexpected: {unexpected[:3]}."
        )
