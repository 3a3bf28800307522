"""Reaching into a timm Vision Transformer: inputs of any size (resampled position
embeddings) and the class token's last-block self-attention (Caron et al., "Emerging
Properties in Self-Supervised Vision Transformers", ICCV 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup.backbones.factory import Backbone
from selfsup.backbones.vit import ViTBackbone, any_input_size
from selfsup.config import ConfigError


def forward_any_size(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """``backbone(x)`` -> (B, D) at any input size: ViTs built for the global crop size
    take the smaller local crops of multi-crop with interpolated position embeddings (as in
    DINO's ``interpolate_pos_encoding``); other backbones pool over any size already."""
    if isinstance(backbone, ViTBackbone):
        net: Any = backbone.net
        native = getattr(net.patch_embed, "img_size", None)
        dynamic = bool(getattr(net, "dynamic_img_size", False))
        if native is not None and not dynamic and tuple(x.shape[-2:]) != tuple(native):
            p = backbone.patch_size
            if x.shape[-2] % p or x.shape[-1] % p:
                # The config key is named for the user: local crops are the usual cause.
                raise ConfigError(
                    f"crops of {x.shape[-2]}x{x.shape[-1]} px do not tile into the ViT's "
                    f"{p} px patches; set method.views.local_size to a multiple of {p}."
                )
            with any_input_size(net):
                out: torch.Tensor = backbone(x)
            return out
    out = backbone(x)
    return out


def last_block_attention(backbone: ViTBackbone, images: torch.Tensor) -> torch.Tensor:
    """Self-attention of the class token to the patches in the last block, averaged over
    heads: (B, C, H, W) -> (B, H / patch, W / patch) (DINO, Fig. 1 and Sec. 4.2.1)."""
    return last_block_head_attention(backbone, images).mean(dim=1)


def last_block_head_attention(backbone: ViTBackbone, images: torch.Tensor) -> torch.Tensor:
    """Self-attention of the class token to the patches in the last block, one map per
    head: (B, C, H, W) -> (B, heads, H / patch, W / patch) (DINO, Fig. 3)."""
    net: Any = backbone.net
    block = net.blocks[-1]
    attn = getattr(block, "attn", None)
    if not hasattr(block, "norm1") or attn is None or not hasattr(attn, "qkv"):
        raise TypeError(
            f"{backbone.name}: the last block has no norm1/attn.qkv (a timm ViT Block), so its "
            "attention cannot be read"
        )
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0])

    handle = block.register_forward_pre_hook(grab)
    try:
        forward_any_size(backbone, images)
    finally:
        handle.remove()
    x = block.norm1(captured[-1])
    b, n, _ = x.shape
    heads = int(attn.num_heads)
    qkv = attn.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    q, k = attn.q_norm(q), attn.k_norm(k)
    a = ((q.float() * float(attn.scale)) @ k.float().transpose(-2, -1)).softmax(dim=-1)
    cls = a[:, :, 0, backbone.num_prefix_tokens :]  # (B, heads, N)
    p = backbone.patch_size
    out: torch.Tensor = cls.reshape(b, heads, images.shape[-2] // p, images.shape[-1] // p)
    return out
