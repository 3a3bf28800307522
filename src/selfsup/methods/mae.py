"""MAE: masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from selfsup.backbones import Backbone
from selfsup.backbones.vit import ViTBackbone
from selfsup.config import ConfigError, MethodConfig
from selfsup.heads.mae_decoder import MAEDecoder
from selfsup.losses.mae import MAELoss, patch_stats, patchify, unpatchify
from selfsup.methods.base import Method, StepInfo
from selfsup.modules import random_masking
from selfsup.registry import register_method
from selfsup.transforms import MultiView
from selfsup.transforms.views import MaskedViewsConfig, masked_view

# Seed of the mask drawn by `visualize`: the same patches are hidden at every epoch, so the
# pictures of successive epochs show the same task.
VISUALIZE_SEED = 0


@dataclass
class MAEConfig(MethodConfig):
    name: str = "mae"
    # Fraction of patches hidden from the encoder, drawn uniformly per image. The paper's
    # 0.75 is best for both fine-tuning and linear probing (Table 1a); 0.6-0.8 works well.
    # Lower ratios make the task easier and the encoder slower (it sees more tokens).
    mask_ratio: float = 0.75
    # Decoder width. Paper: 512 on ImageNet (ViT-B/L/H). 128 keeps the decoder at ~30% of
    # the cost of a ViT-Tiny encoder on 64 patches, about the paper's ratio (ViT-L + 512x8).
    # Must be divisible by 4 (sine-cosine position embeddings) and by decoder_heads.
    decoder_dim: int = 128
    # Decoder blocks. Paper: 8; a deeper decoder helps linear probing (Table 1a: 1 -> 8
    # blocks gives +8%) at little cost to fine-tuning. 2 suits short CPU runs; raise it to
    # 4 when time allows.
    decoder_depth: int = 2
    # Decoder attention heads (paper: 16 at width 512, i.e. 32 dimensions per head).
    decoder_heads: int = 4
    # MLP hidden size of the decoder blocks, as a multiple of decoder_dim.
    decoder_mlp_ratio: float = 4.0
    # Regress pixels normalised per patch (mean 0, variance 1). Better representations in
    # the paper (Table 1d); turn off only to reconstruct raw colours.
    norm_pix_loss: bool = True
    # Light augmentation: random resized crop (scale 0.2-1) and horizontal flip, as in MAE.
    views: MaskedViewsConfig = field(default_factory=MaskedViewsConfig)


@register_method("mae")
class MAE(Method):
    """MAE: hide a random 75% of the patches, encode only the visible ones (with the class
    token) through the ViT, and let a light decoder predict the pixels of the hidden ones.

    The representation is what the backbone pools on the whole, unmasked image: the class
    token by default (the paper's linear-probing protocol), or the mean of the normalised
    patch tokens with timm's ``global_pool="avg", fc_norm=False`` (configs/mae_cifar10.yaml:
    much better for kNN after short runs, see docs/benchmarks.md). The encoder keeps the timm ViT's learned position embeddings
    (the paper's encoder uses fixed sine-cosine ones; its decoder's are fixed here too).
    """

    Config = MAEConfig
    cfg: MAEConfig
    backbone: ViTBackbone
    needs_vit = True
    # Each image's loss depends on that image alone (LayerNorm, no batch statistics), so
    # gradient accumulation reproduces a large batch exactly.
    batch_coupled = False

    def __init__(self, cfg: MAEConfig, backbone: Backbone) -> None:
        if not isinstance(backbone, ViTBackbone):
            raise ConfigError(
                f"mae needs a Vision Transformer backbone, got {backbone.name!r}. Use e.g. "
                "backbone.name=timm:vit_tiny_patch16_224 with backbone.kwargs={patch_size: 4} "
                "for 32 px images."
            )
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in (0, 1), got {cfg.mask_ratio}.")
        if cfg.decoder_dim % 4 or cfg.decoder_dim % cfg.decoder_heads:
            raise ConfigError(
                f"method.decoder_dim ({cfg.decoder_dim}) must be divisible by 4 and by "
                f"method.decoder_heads ({cfg.decoder_heads})."
            )
        super().__init__(cfg, backbone)
        net: Any = backbone.net
        in_chans = int(net.patch_embed.proj.in_channels)
        self.decoder = MAEDecoder(
            backbone.embed_dim,
            backbone.grid_size,
            backbone.patch_size,
            in_chans,
            decoder_dim=cfg.decoder_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_heads,
            mlp_ratio=cfg.decoder_mlp_ratio,
            num_prefix_tokens=backbone.num_prefix_tokens,
        )
        self.criterion = MAELoss(backbone.patch_size, norm_pix_loss=cfg.norm_pix_loss)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> predicted patches (B, N, p*p*C) and the mask (B, N), 1 = hidden.

        ``generator`` (on the CPU) draws the mask; unset, the global random state does.
        """
        b = x.shape[0]
        n = self.backbone.num_patches
        if generator is None:
            keep, mask, restore = random_masking(b, n, self.cfg.mask_ratio, device=x.device)
        else:
            keep, mask, restore = (
                t.to(x.device) for t in random_masking(b, n, self.cfg.mask_ratio, "cpu", generator)
            )
        tokens = self.backbone.forward_tokens(x, keep=keep)  # (B, P + n_keep, D)
        return self.decoder(tokens, restore), mask

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 1:
            raise ValueError(f"MAE takes one view per image, got {len(views)}")
        x = views[0]
        pred, mask = self(x)
        loss = self.criterion(pred, x, mask)
        return loss, {"loss": loss.detach()}

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.decoder]

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> MultiView:
        return masked_view(self.cfg.views, image_size, mean, std)

    @torch.no_grad()
    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``reconstruction``: (3B, C, H, W), three rows of B images: the masked input
        (hidden patches at 0, the data mean), the reconstruction (visible patches from the
        input, hidden ones predicted) and the original."""
        x = images.float()
        p = self.backbone.patch_size
        grid = self.backbone.grid_size
        g = torch.Generator().manual_seed(VISUALIZE_SEED)
        pred, mask = self(x, generator=g)
        pred = pred.float()
        target = patchify(x, p)
        if self.cfg.norm_pix_loss:
            # Predictions are normalised patches: give them back each true patch's mean and
            # variance, as the MAE demo does, to show them in the input's colours.
            mean, var = patch_stats(target)
            pred = pred * (var + self.criterion.eps).sqrt() + mean
        hidden = mask.unsqueeze(-1).bool()
        masked = unpatchify(target.masked_fill(hidden, 0.0), p, grid)
        recon = unpatchify(torch.where(hidden, pred, target), p, grid)
        return {"reconstruction": torch.cat([masked, recon, x])}
