"""Self-supervised methods. Importing this package registers every built-in method."""

from selfsup.methods import simclr
from selfsup.methods.base import Method, StepInfo

__all__ = ["Method", "StepInfo", "simclr"]
