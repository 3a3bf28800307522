"""Evaluation of any feature extractor: kNN, linear probe (more protocols build on these)."""

from selfsup.eval.features import extract_features
from selfsup.eval.knn import KNNResult, knn_classify, knn_scores, topk_accuracy
from selfsup.eval.linear import LinearResult, linear_probe

__all__ = [
    "KNNResult",
    "LinearResult",
    "extract_features",
    "knn_classify",
    "knn_scores",
    "linear_probe",
    "topk_accuracy",
]
