"""Loss functions: tensors in, scalar out; optional gathering across ranks. One per file."""

from selfsup.losses.barlow_twins import BarlowTwinsLoss
from selfsup.losses.dino import DINOLoss
from selfsup.losses.distill import FeatureDistillLoss
from selfsup.losses.ibot import IBOTPatchLoss
from selfsup.losses.infonce import InfoNCELoss
from selfsup.losses.koleo import KoLeoLoss
from selfsup.losses.mae import MAELoss, TubeMAELoss
from selfsup.losses.negative_cosine import NegativeCosineLoss
from selfsup.losses.ntxent import NTXentLoss
from selfsup.losses.swav import SwAVLoss
from selfsup.losses.vicreg import VICRegLoss

__all__ = [
    "BarlowTwinsLoss",
    "DINOLoss",
    "FeatureDistillLoss",
    "IBOTPatchLoss",
    "InfoNCELoss",
    "KoLeoLoss",
    "MAELoss",
    "NTXentLoss",
    "NegativeCosineLoss",
    "SwAVLoss",
    "TubeMAELoss",
    "VICRegLoss",
]
