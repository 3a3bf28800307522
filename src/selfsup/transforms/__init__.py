"""Augmentations: multi-view wrappers and one preset per method family."""

from selfsup.transforms.base import MultiView, eval_transform, to_uint8_tensor
from selfsup.transforms.views import (
    MaskedViewsConfig,
    MultiCropConfig,
    ViewsConfig,
    local_crop_size,
    masked_view,
    multi_crop,
    two_views,
    view_transform,
)

__all__ = [
    "MaskedViewsConfig",
    "MultiCropConfig",
    "MultiView",
    "ViewsConfig",
    "eval_transform",
    "local_crop_size",
    "masked_view",
    "multi_crop",
    "to_uint8_tensor",
    "two_views",
    "view_transform",
]
