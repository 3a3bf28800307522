"""Training: the Trainer (devices, precision, checkpoints, logging) and its helpers."""

from selfsup.train.trainer import FitResult, KNNMonitor, Trainer, TrainingError, TrainState

__all__ = ["FitResult", "KNNMonitor", "TrainState", "Trainer", "TrainingError"]
