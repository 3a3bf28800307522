"""Space-time patches ("tubes") of video clips: cutting clips into tubes and back, their
fixed sine-cosine position embeddings, and VideoMAE's tube masking."""

from __future__ import annotations

import torch


def patchify_video(clips: torch.Tensor, patch_size: int, tubelet: int) -> torch.Tensor:
    """Cut clips into non-overlapping tubes of ``tubelet`` frames x ``p`` x ``p`` pixels.

    (B, C, T, H, W) -> (B, N, tubelet*p*p*C), N = (T/tubelet) * (H/p) * (W/p), tubes in
    (time, row, column) order: tube ``n = (s * gh + r) * gw + c`` covers frames
    ``s*tubelet ..``, rows ``r*p ..`` and columns ``c*p ..``. Inside a tube the values are laid
    out frame, pixel row, pixel column, channel (channel fastest, as MAE's patches).
    """
    if clips.ndim != 5:
        raise ValueError(f"patchify_video expects (B, C, T, H, W) clips, got {tuple(clips.shape)}")
    b, c, t, h, w = clips.shape
    p, u = patch_size, tubelet
    if t % u or h % p or w % p:
        raise ValueError(
            f"a clip of {t} frames of {h}x{w} does not tile into tubes of {u} frames x {p}x{p} px"
        )
    x = clips.reshape(b, c, t // u, u, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, gt, gh, gw, u, p, p, C)
    return x.reshape(b, (t // u) * (h // p) * (w // p), u * p * p * c)


def unpatchify_video(
    tubes: torch.Tensor, patch_size: int, tubelet: int, grid: tuple[int, int, int]
) -> torch.Tensor:
    """Inverse of :func:`patchify_video`: (B, N, tubelet*p*p*C) -> (B, C, T, H, W) for a
    ``grid`` of (gt, gh, gw) tubes."""
    b, n, k = tubes.shape
    gt, gh, gw = grid
    p, u = patch_size, tubelet
    if gt * gh * gw != n or k % (u * p * p):
        raise ValueError(f"{n} tubes of length {k} do not fill a {grid} grid of {u}x{p}x{p}")
    c = k // (u * p * p)
    x = tubes.reshape(b, gt, gh, gw, u, p, p, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, gt, u, gh, p, gw, p)
    return x.reshape(b, c, gt * u, gh * p, gw * p)


def _sincos(positions: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """1-D sine-cosine embedding of ``positions`` (N,) -> (N, dim): [sin(x w), cos(x w)]."""
    half = dim // 2
    omega = base ** (-torch.arange(half, dtype=torch.float64) / half)
    a = positions.double()[:, None] * omega[None]
    return torch.cat([a.sin(), a.cos()], dim=1)


def sincos_pos_embed_3d(
    dim: int, grid: tuple[int, int, int], base: float = 10000.0
) -> torch.Tensor:
    """Fixed space-time sine-cosine position embeddings, (gt * gh * gw, dim) in tube order.

    The width is split in three even parts for time, rows and columns (as the 2-D embedding
    of MAE splits it in two), each a 1-D sine-cosine embedding of that coordinate; ``dim``
    must be divisible by 6. Being a pure function of the grid, it fits clips of any length
    and size (no interpolation of learned tables).
    """
    if dim % 6:
        raise ValueError(f"3-D sine-cosine embeddings need a width divisible by 6, got {dim}")
    gt, gh, gw = grid
    third = dim // 3
    t = torch.arange(gt).repeat_interleave(gh * gw)
    r = torch.arange(gh).repeat_interleave(gw).repeat(gt)
    c = torch.arange(gw).repeat(gt * gh)
    parts = [_sincos(v, third, base) for v in (t, r, c)]
    return torch.cat(parts, dim=1).float()


def tube_masking(
    batch: int,
    grid: tuple[int, int, int],
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VideoMAE's tube masking (Tong et al., 2022, "VideoMAE: Masked Autoencoders are
    Data-Efficient Learners for Self-Supervised Video Pre-Training", Sec. 3.3): one random
    set of spatial positions is hidden in every frame slot, so a hidden patch cannot be
    copied from the same place a few frames away (temporal redundancy).

    Same outputs as :func:`~selfsup.modules.random_masking` over the ``gt * gh * gw`` tubes:
    ``keep`` (B, n_keep) visible tube indices in ascending order of their spatial draw,
    ``mask`` (B, N) with 1 where hidden, ``restore`` (B, N) the inverse permutation.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    gt, gh, gw = grid
    s = gh * gw
    keep_s = max(1, round(s * (1 - mask_ratio)))
    noise = torch.rand(batch, s, device=device, generator=generator)
    # The same draw for every frame slot; the slot breaks ties so that the order is total.
    slot = torch.arange(gt, device=device, dtype=noise.dtype).repeat_interleave(s)
    rank = noise.argsort(dim=1).argsort(dim=1).to(noise.dtype)  # spatial rank 0..s-1
    key = rank.repeat(1, gt) * gt + slot  # visible tubes (low rank) first, all slots
    shuffle = key.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    n_keep = keep_s * gt
    keep = shuffle[:, :n_keep]
    mask = torch.ones(batch, gt * s, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, restore)
    return keep, mask, restore
