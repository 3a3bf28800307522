"""Token-level access to timm Vision Transformers, for masked-image methods (MAE, iBOT),
and their patch tokens as dense feature maps (segmentation, detection)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from selfsup.backbones.dense import DenseSpec
from selfsup.backbones.factory import Backbone


@contextlib.contextmanager
def any_input_size(net: Any) -> Iterator[None]:
    """Let a timm ViT built for one image size take any size (a multiple of the patch
    size) by resampling its position embeddings, as timm's ``dynamic_img_size`` does; the
    model's settings are restored afterwards. Inside, ``patch_embed`` gives (B, h, w, D)."""
    from timm.layers.format import Format

    pe = net.patch_embed
    saved = (net.dynamic_img_size, pe.strict_img_size, pe.flatten, pe.output_fmt)
    net.dynamic_img_size, pe.strict_img_size, pe.flatten = True, False, False
    pe.output_fmt = Format.NHWC
    try:
        yield
    finally:
        net.dynamic_img_size, pe.strict_img_size, pe.flatten, pe.output_fmt = saved


class ViTBackbone(Backbone):
    """A timm ``VisionTransformer`` with the token interface of the backbone contract.

    - ``forward(x)``: (B, C, H, W) -> (B, D), the class token (or mean of patch tokens) after
      the final norm: the representation used by evaluations.
    - ``forward_tokens(x, keep=None, mask=None, mask_token=None)``: (B, C, H, W) ->
      (B, P + N', D) with the P prefix tokens (class token) first. ``keep`` (B, N') keeps only
      those patch indices (MAE encoder); ``mask`` (B, N) bool with ``mask_token`` (D,)
      replaces hidden patch embeddings before position embeddings are added (iBOT).
    - ``forward_dense(x)``: (B, C, H, W) -> [(B, D, H / patch, W / patch)] per block in
      ``dense_blocks`` (the last one by default): final-normed patch tokens, prefix tokens
      (class, registers) removed, at any input size that the patches tile.
    """

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__(net, int(getattr(net, "embed_dim")), name)  # noqa: B009
        self.num_prefix_tokens = int(getattr(net, "num_prefix_tokens", 1))
        pe = getattr(net, "patch_embed")  # noqa: B009
        self.patch_size = int(pe.patch_size[0])
        self.grid_size = (int(pe.grid_size[0]), int(pe.grid_size[1]))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.depth = len(getattr(net, "blocks"))  # noqa: B009
        # Blocks whose patch tokens forward_dense returns (0-based, ascending).
        self.dense_blocks: tuple[int, ...] = (self.depth - 1,)

    def set_dense_blocks(self, n: int = 1, evenly_spaced: bool = False) -> None:
        """Return the patch tokens of ``n`` blocks from ``forward_dense``: the last ``n``
        (DINOv2's "+ms" linear segmentation probe concatenates the last 4; Oquab et al.,
        2023, Sec. 7.4) or ``n`` evenly spaced ones ending at the last (blocks 3, 6, 9, 12 of
        12, as DPT takes them; Ranftl et al., 2021)."""
        if not 1 <= n <= self.depth:
            raise ValueError(f"{self.name} has {self.depth} blocks; cannot take {n} of them")
        if evenly_spaced:
            self.dense_blocks = tuple(round((i + 1) * self.depth / n) - 1 for i in range(n))
        else:
            self.dense_blocks = tuple(range(self.depth - n, self.depth))

    def dense_specs(self) -> list[DenseSpec]:
        """One (embed_dim, patch size) map per block of ``dense_blocks``."""
        return [DenseSpec(f"block{i}", self.embed_dim, self.patch_size) for i in self.dense_blocks]

    def forward_dense(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> [(B, D, H / p, W / p)] for each block of ``dense_blocks``, shallow
        to deep; the final norm is applied to every block's tokens (as DINOv2's
        ``get_intermediate_layers(norm=True)``). H and W must be multiples of the patch size p;
        position embeddings are resampled to the grid."""
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"{self.name}: a {x.shape[-2]}x{x.shape[-1]} input does not tile into {p} px "
                f"patches; resize or crop the images to a multiple of {p}."
            )
        net: Any = self.net
        wanted, last = set(self.dense_blocks), max(self.dense_blocks)
        out = []
        with any_input_size(net):
            tokens = net.patch_embed(x)  # (B, h, w, D)
            b, h, w, d = tokens.shape
            tokens = net.norm_pre(net._pos_embed(tokens))  # prepends the prefix tokens
            for i, block in enumerate(net.blocks[: last + 1]):
                tokens = block(tokens)
                if i in wanted:
                    patches = net.norm(tokens)[:, self.num_prefix_tokens :]
                    out.append(patches.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous())
        return out

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
