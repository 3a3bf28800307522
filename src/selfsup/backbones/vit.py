"""Token-level access to timm Vision Transformers, for masked-image methods (MAE, iBOT)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup.backbones.factory import Backbone


class ViTBackbone(Backbone):
    """A timm ``VisionTransformer`` with the token interface of the backbone contract.

    - ``forward(x)``: (B, C, H, W) -> (B, D), the class token (or mean of patch tokens) after
      the final norm: the representation used by evaluations.
    - ``forward_tokens(x, keep=None, mask=None, mask_token=None)``: (B, C, H, W) ->
      (B, P + N', D) with the P prefix tokens (class token) first. ``keep`` (B, N') keeps only
      those patch indices (MAE encoder); ``mask`` (B, N) bool with ``mask_token`` (D,)
      replaces hidden patch embeddings before position embeddings are added (iBOT).
    """

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__(net, int(getattr(net, "embed_dim")), name)  # noqa: B009
        self.num_prefix_tokens = int(getattr(net, "num_prefix_tokens", 1))
        pe = getattr(net, "patch_embed")  # noqa: B009
        self.patch_size = int(pe.patch_size[0])
        self.grid_size = (int(pe.grid_size[0]), int(pe.grid_size[1]))
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward_tokens(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        net: Any = self.net
        tokens = net.patch_embed(x)  # (B, N, D), or (B, H, W, D) with dynamic sizes
        if tokens.ndim == 4:
            tokens = tokens.flatten(1, 2)
        if mask is not None:
            if mask_token is None:
                raise ValueError("mask needs a mask_token to put in place of hidden patches")
            tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        tokens = net._pos_embed(tokens)  # adds position embeddings, prepends prefix tokens
        if keep is not None:
            p = self.num_prefix_tokens
            idx = keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.cat([tokens[:, :p], torch.gather(tokens[:, p:], 1, idx)], dim=1)
        tokens = net.norm_pre(tokens)
        tokens = net.blocks(tokens)
        out: torch.Tensor = net.norm(tokens)
        return out

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D) tokens -> (B, D) as ``forward`` pools them."""
        if getattr(self.net, "global_pool", "token") == "avg":
            return tokens[:, self.num_prefix_tokens :].mean(1)
        return tokens[:, 0]
