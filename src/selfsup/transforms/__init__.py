"""Augmentations: multi-view wrappers and one preset per method."""

from selfsup.transforms.base import MultiView, eval_transform, to_uint8_tensor
from selfsup.transforms.simclr import SimCLRViewsConfig, simclr_view

__all__ = [
    "MultiView",
    "SimCLRViewsConfig",
    "eval_transform",
    "simclr_view",
    "to_uint8_tensor",
]
