"""Augmentations: multi-view wrappers and one preset per method family."""

from selfsup.transforms.base import MultiView, eval_transform, to_uint8_tensor
from selfsup.transforms.views import (
    ClipView,
    ClipViews,
    MaskedViewsConfig,
    MultiCropConfig,
    ViewsConfig,
    byol_views,
    clip_view,
    local_crop_size,
    masked_view,
    multi_crop,
    resolve_byol_blur,
    two_views,
    view_transform,
)

__all__ = [
    "ClipView",
    "ClipViews",
    "MaskedViewsConfig",
    "MultiCropConfig",
    "MultiView",
    "ViewsConfig",
    "byol_views",
    "clip_view",
    "eval_transform",
    "local_crop_size",
    "masked_view",
    "multi_crop",
    "resolve_byol_blur",
    "to_uint8_tensor",
    "two_views",
    "view_transform",
]
