"""Projection and prediction heads: one MLP builder plus the papers' presets."""

from selfsup.heads.mlp import MLP, SimCLRProjectionHead

__all__ = ["MLP", "SimCLRProjectionHead"]
