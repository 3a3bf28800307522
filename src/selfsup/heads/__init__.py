"""Projection and prediction heads: one MLP builder plus the papers' presets."""

from selfsup.heads.dino import DINOHead
from selfsup.heads.mae_decoder import MAEDecoder
from selfsup.heads.mlp import MLP, SimCLRProjectionHead

__all__ = ["MLP", "DINOHead", "MAEDecoder", "SimCLRProjectionHead"]
