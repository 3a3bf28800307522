"""A small space-time Vision Transformer for clips (the encoder of VideoMAE).

Clips ``(B, C, T, H, W)`` are cut into tubes of ``tubelet`` frames x ``p`` x ``p`` pixels,
each embedded linearly (the same map as a 3-D convolution with stride = kernel), given a
fixed space-time sine-cosine position and run through joint space-time attention blocks
(timm's ``Block``), as in VideoMAE (Tong et al., 2022) and ViViT's "joint" model. The clip
representation is the mean of the final-normed tokens (VideoMAE has no class token).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup.backbones.factory import Backbone
from selfsup.config import ConfigError
from selfsup.modules.tubes import patchify_video, sincos_pos_embed_3d

# name -> (width, depth, heads): ViT-Tiny and ViT-Small widths.
VIDEO_VITS = {"video_vit_tiny": (192, 12, 3), "video_vit_small": (384, 12, 6)}


class SpaceTimeViT(nn.Module):
    """Tube embedding, fixed 3-D sine-cosine positions, joint space-time blocks, a norm.

    ``forward_tokens(x, keep)``: (B, C, T, H, W) -> (B, N', D) final-normed tokens, only the
    tubes ``keep`` (B, N') when given (the MAE encoder sees the visible ones only).
    ``forward(x)``: their mean, (B, D). T must be a multiple of ``tubelet`` and H, W of ``p``;
    any such clip works (positions are a function of the grid), though ``frames`` is the
    length the model is trained and evaluated at.
    """

    def __init__(self, frames: int = 8, tubelet: int = 2, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 192, depth: int = 12, num_heads: int = 3,
                 mlp_ratio: float = 4.0) -> None:  # fmt: skip
        super().__init__()
        from timm.layers.norm import LayerNorm
        from timm.models.vision_transformer import Block

        if embed_dim % 6:
            raise ConfigError(f"a video ViT's embed_dim must be divisible by 6, got {embed_dim}")
        if frames % tubelet:
            raise ConfigError(f"frames ({frames}) must be a multiple of tubelet ({tubelet})")
        self.frames, self.tubelet, self.patch_size = frames, tubelet, patch_size
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.patch_embed = nn.Linear(tubelet * patch_size * patch_size * in_chans, embed_dim)
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
                for _ in range(depth)
            ]
        )
        self.norm = LayerNorm(embed_dim)
        self._pos: dict[tuple[int, int, int], torch.Tensor] = {}
        for m in self.modules():  # ViT / MAE initialisation
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        t, h, w = x.shape[-3:]
        u, p = self.tubelet, self.patch_size
        if t % u or h % p or w % p:
            raise ValueError(
                f"a clip of {t} frames of {h}x{w} does not tile into tubes of {u} frames x "
                f"{p}x{p} px; use clips of a multiple of {u} frames and sizes a multiple of {p}"
            )
        return t // u, h // p, w // p

    def pos_embed(self, grid: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
        if grid not in self._pos:
            self._pos[grid] = sincos_pos_embed_3d(self.embed_dim, grid)
        return self._pos[grid].to(like.device, like.dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, D) tube embeddings with their positions."""
        grid = self.grid(x)
        tokens: torch.Tensor = self.patch_embed(patchify_video(x, self.patch_size, self.tubelet))
        return tokens + self.pos_embed(grid, tokens)

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.embed(x)
        if keep is not None:
            idx = keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, idx)
        out: torch.Tensor = self.norm(self.blocks(tokens))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.forward_tokens(x).mean(1)
        return out


class VideoViTBackbone(Backbone):
    """The backbone contract for a :class:`SpaceTimeViT`.

    ``forward`` takes clips (B, C, T, H, W) -> (B, D); an image batch (B, C, H, W) is taken as
    a still clip of ``frames`` frames, so everything that feeds images (the kNN monitor,
    ``embed`` on a folder of images) works too. ``is_video`` tells evaluations to feed whole
    clips of ``frames`` frames rather than single frames.
    """

    is_video = True
    net: SpaceTimeViT

    def __init__(self, net: SpaceTimeViT, name: str) -> None:
        super().__init__(net, net.embed_dim, name)
        self.frames, self.tubelet, self.patch_size = net.frames, net.tubelet, net.patch_size
        self.num_prefix_tokens = 0

    def as_clip(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return x.unsqueeze(2).expand(-1, -1, self.frames, -1, -1)
        if x.ndim != 5:
            raise ValueError(f"{self.name} takes (B, C, T, H, W) clips, got {tuple(x.shape)}")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(self.as_clip(x))
        return out

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.forward_tokens(self.as_clip(x), keep)

    def grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        return self.net.grid(self.as_clip(x))


def video_vit(name: str, in_chans: int, image_size: int | None,
              kwargs: dict[str, Any]) -> VideoViTBackbone:  # fmt: skip
    """``video_vit_tiny`` / ``video_vit_small`` with ``backbone.kwargs`` (frames, tubelet,
    patch_size, embed_dim, depth, num_heads, mlp_ratio) overriding the defaults; images of
    64 px or less get 8 px patches unless ``patch_size`` is given."""
    width, depth, heads = VIDEO_VITS[name]
    args: dict[str, Any] = {"embed_dim": width, "depth": depth, "num_heads": heads,
                            "patch_size": 8 if image_size and image_size <= 64 else 16}  # fmt: skip
    known = {"frames", "tubelet", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio"}
    unknown = set(kwargs) - known
    if unknown:
        raise ConfigError(
            f"backbone.kwargs {sorted(unknown)} are not options of {name}; it takes "
            f"{', '.join(sorted(known))}."
        )
    args.update(kwargs)
    bb = VideoViTBackbone(SpaceTimeViT(in_chans=in_chans, **args), name)
    bb.build_kwargs = {**args, "in_chans": in_chans}
    return bb
