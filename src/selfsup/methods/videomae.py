"""VideoMAE: masked autoencoding of video clips with tube masking (Tong et al., "VideoMAE:
Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video Pre-Training",
NeurIPS 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from selfsup.backbones import Backbone
from selfsup.backbones.video_vit import VideoViTBackbone
from selfsup.config import ConfigError, MethodConfig
from selfsup.heads.mae_decoder import MAEDecoder
from selfsup.losses.mae import TubeMAELoss, patch_stats
from selfsup.methods.base import Method, StepInfo
from selfsup.modules.tubes import (
    patchify_video,
    sincos_pos_embed_3d,
    tube_masking,
    unpatchify_video,
)
from selfsup.registry import register_method
from selfsup.transforms.views import ClipView, MaskedViewsConfig, clip_view

VISUALIZE_SEED = 0


@dataclass
class VideoMAEConfig(MethodConfig):
    name: str = "videomae"
    # Share of spatial positions hidden in every frame slot. The paper's 0.9 (Table 1a:
    # 0.9 > 0.75 > 0.5 on Something-Something v2): video is redundant in time, so a
    # harder task is needed than MAE's 0.75 on images.
    mask_ratio: float = 0.9
    # Frames between the frames of a clip (the paper's temporal stride: 2 on SSv2, 4 on
    # Kinetics). The clip's length in frames is backbone.kwargs.frames.
    clip_stride: int = 2
    # Decoder width and depth (paper: 384 x 4 for ViT-B); narrow and shallow for CPU.
    decoder_dim: int = 96
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 4.0
    # Regress each tube's pixels normalised by its own mean and variance (paper: on).
    norm_pix_loss: bool = True
    # One random resized crop and flip for the whole clip (the paper: multi-scale crop).
    views: MaskedViewsConfig = field(
        default_factory=lambda: MaskedViewsConfig(min_scale=0.4, max_scale=1.0)
    )


@register_method("videomae")
class VideoMAE(Method):
    """VideoMAE: cut a clip into tubes (2 frames x p x p pixels), hide 90% of the spatial
    positions in every frame slot (tube masking: a hidden patch cannot be copied from the
    next frames), encode the visible tubes with a space-time ViT and let a light decoder
    predict the pixels of the hidden ones.

    Pretrain it on a folder of videos (each sample a clip of ``backbone.kwargs.frames``
    frames ``method.clip_stride`` apart from a random start). The representation is the
    mean of the encoder's tokens over the whole, unmasked clip; evaluations feed it whole
    clips (``selfsup eval video``), and a still image counts as a still clip.
    """

    Config = VideoMAEConfig
    cfg: VideoMAEConfig
    backbone: VideoViTBackbone
    needs_video = True
    batch_coupled = False
    default_backbone = "video_vit_tiny"

    def __init__(self, cfg: VideoMAEConfig, backbone: Backbone) -> None:
        if not isinstance(backbone, VideoViTBackbone):
            raise ConfigError(
                f"videomae needs a space-time ViT backbone, got {backbone.name!r}. Use "
                "backbone.name=video_vit_tiny (backbone.kwargs: frames, tubelet, patch_size, "
                "depth)."
            )
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in (0, 1), got {cfg.mask_ratio}.")
        if cfg.clip_stride < 1:
            raise ConfigError(f"method.clip_stride must be >= 1, got {cfg.clip_stride}.")
        if cfg.decoder_dim % 6 or cfg.decoder_dim % cfg.decoder_heads:
            raise ConfigError(
                f"method.decoder_dim ({cfg.decoder_dim}) must be divisible by 6 (space-time "
                f"positions) and by method.decoder_heads ({cfg.decoder_heads})."
            )
        super().__init__(cfg, backbone)
        self.decoder_dim = cfg.decoder_dim
        net = backbone.net
        self.decoder = MAEDecoder(
            backbone.embed_dim, (1, 1), backbone.patch_size, net.in_chans,
            decoder_dim=cfg.decoder_dim, depth=cfg.decoder_depth, num_heads=cfg.decoder_heads,
            mlp_ratio=cfg.decoder_mlp_ratio, num_prefix_tokens=0,
            pos_embed=torch.zeros(1, cfg.decoder_dim),
            out_dim=backbone.tubelet * backbone.patch_size**2 * net.in_chans,
        )  # fmt: skip
        self.criterion = TubeMAELoss(backbone.patch_size, backbone.tubelet, cfg.norm_pix_loss)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips (B, C, T, H, W) -> predicted tubes (B, N, tubelet*p*p*C) and the mask (B, N),
        1 = hidden. ``generator`` (on the CPU) draws the mask."""
        grid = self.backbone.grid(x)
        b = x.shape[0]
        if generator is None:
            keep, mask, restore = tube_masking(b, grid, self.cfg.mask_ratio, x.device)
        else:
            keep, mask, restore = (
                t.to(x.device) for t in tube_masking(b, grid, self.cfg.mask_ratio, "cpu", generator)
            )
        tokens = self.backbone.forward_tokens(x, keep=keep)  # (B, n_keep, D)
        # The decoder's positions follow the clip's grid (any length and size).
        pos = sincos_pos_embed_3d(self.decoder_dim, grid)
        return self.decoder(tokens, restore, pos), mask

    def training_step(
        self, views: Sequence[torch.Tensor], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 1 or views[0].ndim != 5:
            raise ValueError(
                "VideoMAE takes one view of clips (B, C, T, H, W), got "
                f"{[tuple(v.shape) for v in views]}"
            )
        x = views[0]
        pred, mask = self(x)
        loss = self.criterion(pred, x, mask)
        return loss, {"loss": loss.detach()}

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.decoder]

    def default_transform(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3
    ) -> ClipView:
        return clip_view(self.cfg.views, image_size, mean, std, self.backbone.frames,
                         self.cfg.clip_stride)  # fmt: skip

    @torch.no_grad()
    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``reconstruction``: three rows of B images, the first frame of each still clip
        made from ``images``: masked (hidden tubes at 0), reconstructed, original."""
        clips = self.backbone.as_clip(images.float())
        grid = self.backbone.grid(clips)
        p, u = self.backbone.patch_size, self.backbone.tubelet
        pred, mask = self(clips, generator=torch.Generator().manual_seed(VISUALIZE_SEED))
        target = patchify_video(clips, p, u)
        pred = pred.float()
        if self.cfg.norm_pix_loss:
            mean, var = patch_stats(target)
            pred = pred * (var + self.criterion.eps).sqrt() + mean
        hidden = mask.unsqueeze(-1).bool()
        masked = unpatchify_video(target.masked_fill(hidden, 0.0), p, u, grid)[:, :, 0]
        recon = unpatchify_video(torch.where(hidden, pred, target), p, u, grid)[:, :, 0]
        return {"reconstruction": torch.cat([masked, recon, images.float()])}
