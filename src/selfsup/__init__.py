"""selfsup: self-supervised learning for vision, from unlabeled images to few-label results."""

__version__ = "0.1.0"

from selfsup import methods as methods  # registers the built-in methods
from selfsup.api import (
    Evaluation,
    build_method,
    create_method,
    evaluate,
    evaluate_knn,
    evaluate_linear,
    extract,
    list_methods,
    load_config,
    load_method,
    make_config,
    pretrain,
)
from selfsup.config import Config, ConfigError
from selfsup.curation import CurationReport, curate, restore_quarantine
from selfsup.embeddings import EmbedResult, embed, read_embeddings
from selfsup.export import ExportResult, export_backbone
from selfsup.hub import load_backbone
from selfsup.methods.base import Method, StepInfo
from selfsup.registry import register_method
from selfsup.train import Trainer

__all__ = [
    "Config",
    "ConfigError",
    "CurationReport",
    "EmbedResult",
    "Evaluation",
    "ExportResult",
    "Method",
    "StepInfo",
    "Trainer",
    "__version__",
    "build_method",
    "create_method",
    "curate",
    "embed",
    "evaluate",
    "evaluate_knn",
    "evaluate_linear",
    "export_backbone",
    "extract",
    "list_methods",
    "load_backbone",
    "load_config",
    "load_method",
    "make_config",
    "pretrain",
    "read_embeddings",
    "register_method",
    "restore_quarantine",
]
