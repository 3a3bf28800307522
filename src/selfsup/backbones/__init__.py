"""Backbones: one contract for every network.

A backbone is an ``nn.Module`` with an ``embed_dim`` attribute whose ``forward`` maps images
``(B, C, H, W)`` to features ``(B, embed_dim)``, and whose ``forward_dense`` maps them to
feature maps described by ``dense_specs()`` (fine to coarse). Backbones know nothing about
methods.
"""

from selfsup.backbones.dense import DenseSpec
from selfsup.backbones.factory import Backbone, create_backbone, list_backbones

__all__ = ["Backbone", "DenseSpec", "create_backbone", "list_backbones"]
