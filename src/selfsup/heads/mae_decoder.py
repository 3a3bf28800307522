"""The light Transformer decoder of MAE and its fixed 2-D sine-cosine position embeddings."""

from __future__ import annotations

import torch
from torch import nn


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], base: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (Vaswani et al., 2017, extended to 2-D as in
    MAE), (gh * gw, dim) for patches in raster order.

    For the patch at row ``r`` and column ``c`` (index ``r * gw + c``), with ``q = dim / 4``
    and frequencies ``w_k = base ** (-k / q)``, k = 0..q-1, the embedding is

        [sin(c w_0..w_{q-1}), cos(c w_0..w_{q-1}), sin(r w_0..w_{q-1}), cos(r w_0..w_{q-1})]

    (the column half first, the layout of the MAE reference code).
    """
    if dim % 4:
        raise ValueError(f"2-D sine-cosine embeddings need a dimension divisible by 4, got {dim}")
    gh, gw = grid
    q = dim // 4
    omega = base ** (-torch.arange(q, dtype=torch.float64) / q)  # (q,)
    rows = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)  # (N,)
    cols = torch.arange(gw, dtype=torch.float64).repeat(gh)  # (N,)
    ac = cols[:, None] * omega[None]  # (N, q)
    ar = rows[:, None] * omega[None]
    emb = torch.cat([ac.sin(), ac.cos(), ar.sin(), ar.cos()], dim=1)
    return emb.float()


def unshuffle(visible: torch.Tensor, restore: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Put visible tokens back at their patch positions and ``fill`` everywhere else.

    ``visible`` (B, n_keep, D) in the order of ``keep`` from
    :func:`~selfsup.modules.random_masking`, ``restore`` (B, N) its inverse permutation,
    ``fill`` (D,) the mask token -> (B, N, D) in patch order.
    """
    b, n = restore.shape
    hidden = fill.to(visible.dtype).expand(b, n - visible.shape[1], -1)
    seq = torch.cat([visible, hidden], dim=1)  # [visible, hidden], the shuffled order
    return torch.gather(seq, 1, restore.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))


class MAEDecoder(nn.Module):
    """MAE decoder (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners",
    Sec. 3 "MAE decoder"): only used during pre-training, so it can be narrow and shallow.

    Encoder tokens of the visible patches are projected to ``decoder_dim``, a shared learned
    mask token fills the hidden positions, the patch order is restored, fixed 2-D sine-cosine
    position embeddings are added (a buffer: never trained) and ``depth`` Transformer blocks
    run over prefix (class) tokens + all patches. A linear layer predicts each patch's pixels.

    Shapes: ``forward(tokens (B, P + n_keep, embed_dim), restore (B, N))`` -> (B, N, p*p*C).

    Args:
        embed_dim: the encoder's token width.
        grid: (rows, cols) of patches of the encoder.
        patch_size: p, pixels per patch side.
        in_chans: C, image channels.
        decoder_dim: decoder width (paper: 512 for ViT-B/L/H on ImageNet); divisible by 4
            (sine-cosine embeddings) and by ``num_heads``.
        depth: number of decoder blocks (paper: 8).
        num_heads: attention heads (paper: 16, i.e. 32 dimensions per head).
        mlp_ratio: hidden size of the blocks' MLPs as a multiple of ``decoder_dim``.
        num_prefix_tokens: class (and register) tokens at the start of ``tokens``.
        pos_embed: fixed position embeddings (N, decoder_dim) in place of the 2-D ones of
            ``grid`` (VideoMAE's space-time tubes).
        out_dim: values predicted per token in place of p*p*C (a tube's pixels).
    """

    pos_embed: torch.Tensor

    def __init__(
        self,
        embed_dim: int,
        grid: tuple[int, int],
        patch_size: int,
        in_chans: int = 3,
        decoder_dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_prefix_tokens: int = 1,
        pos_embed: torch.Tensor | None = None,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        from timm.layers.norm import LayerNorm
        from timm.models.vision_transformer import Block

        if decoder_dim % num_heads:
            raise ValueError(f"decoder_dim {decoder_dim} is not divisible by {num_heads} heads")
        self.grid = grid
        self.patch_size = patch_size
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        if pos_embed is None:
            pos_embed = sincos_pos_embed_2d(decoder_dim, grid)
        elif pos_embed.shape[-1] != decoder_dim:
            raise ValueError(f"pos_embed is {pos_embed.shape[-1]} wide, not {decoder_dim}")
        # A pure function of the grid: checkpoints need not hold it.
        self.register_buffer("pos_embed", pos_embed, persistent=False)
        # timm's LayerNorm has MAE's eps of 1e-6 (PyTorch's default is 1e-5).
        self.blocks = nn.Sequential(
            *[
                Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
                for _ in range(depth)
            ]
        )
        self.norm = LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, out_dim or patch_size * patch_size * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE's reference initialisation (timm's Block alone would keep PyTorch's defaults):
        # Xavier-uniform linear layers, zero biases, a small Gaussian mask token.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self, tokens: torch.Tensor, restore: torch.Tensor, pos_embed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``pos_embed`` (N, decoder_dim): positions for this call in place of the buffer
        (clips of another length or size)."""
        x = self.embed(tokens)
        p = self.num_prefix_tokens
        patches = unshuffle(x[:, p:], restore, self.mask_token)
        # Prefix tokens get no position embedding (MAE gives the class token a zero one).
        pos = self.pos_embed if pos_embed is None else pos_embed
        patches = patches + pos.to(patches.device, patches.dtype)
        x = self.norm(self.blocks(torch.cat([x[:, :p], patches], dim=1)))
        out: torch.Tensor = self.pred(x[:, p:])
        return out
