"""Backbones: one contract for every network.

A backbone is an ``nn.Module`` with an ``embed_dim`` attribute whose ``forward`` maps images
``(B, C, H, W)`` to features ``(B, embed_dim)``. Backbones know nothing about methods.
"""

from selfsup.backbones.factory import Backbone, create_backbone, list_backbones

__all__ = ["Backbone", "create_backbone", "list_backbones"]
