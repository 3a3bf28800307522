"""Self-supervised methods. Importing this package registers every built-in method."""

from selfsup.methods import (
    barlowtwins,
    byol,
    dino,
    dinov2,
    distill,
    mae,
    mocov2,
    mocov3,
    simclr,
    simsiam,
    swav,
    vicreg,
    videomae,
)
from selfsup.methods.base import Method, StepInfo

__all__ = [
    "Method",
    "StepInfo",
    "barlowtwins",
    "byol",
    "dino",
    "dinov2",
    "distill",
    "mae",
    "mocov2",
    "mocov3",
    "simclr",
    "simsiam",
    "swav",
    "vicreg",
    "videomae",
]
