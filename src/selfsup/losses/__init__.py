"""Loss functions: tensors in, scalar out; optional gathering across ranks."""

from selfsup.losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss"]
