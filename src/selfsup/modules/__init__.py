"""Building blocks shared by several methods: EMA teachers, memory queues, Sinkhorn-Knopp,
patch masking, multi-crop passes. Pure PyTorch, no training-loop code."""

from selfsup.modules.ema import ema_update, frozen_copy
from selfsup.modules.masking import block_mask, random_masking
from selfsup.modules.multi_crop import forward_multi_crop, vit_local_size
from selfsup.modules.queue import FeatureQueue
from selfsup.modules.sinkhorn import sinkhorn_knopp
from selfsup.modules.tubes import patchify_video, tube_masking, unpatchify_video

__all__ = [
    "FeatureQueue",
    "block_mask",
    "ema_update",
    "forward_multi_crop",
    "frozen_copy",
    "patchify_video",
    "random_masking",
    "sinkhorn_knopp",
    "tube_masking",
    "unpatchify_video",
    "vit_local_size",
]
