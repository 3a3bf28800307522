"""Downstream tasks: each a model, a loss and a metric handed to the one supervised loop
(:class:`selfsup.train.supervised.SupervisedLoop`), never a loop of its own."""

from selfsup.tasks.classification import (
    ClassificationTask,
    Classifier,
    FinetuneConfig,
    TrainReport,
    carve_validation,
    predict,
    select_pseudo_labels,
    train_classifier,
)

__all__ = [
    "ClassificationTask",
    "Classifier",
    "FinetuneConfig",
    "TrainReport",
    "carve_validation",
    "predict",
    "select_pseudo_labels",
    "train_classifier",
]
