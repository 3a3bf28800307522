"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. (2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination"), used by InstDisc, MoCo, DINO and lightly's benchmarks: cosine similarity
to a memory bank of training features; each of the k nearest neighbours votes for its class
with weight ``exp(similarity / temperature)``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class KNNResult:
    top1: float
    top5: float
    k: int
    temperature: float
    n_train: int
    n_test: int
    seconds: float = 0.0
    # Set when k is larger than the smallest class of the bank: neighbours of other classes
    # then always vote, whatever the features (k = 200 is the protocol for sets with
    # thousands of images a class, such as CIFAR-10's 5,000).
    note: str | None = None

    def as_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (N_test, C) from the weighted votes of the k nearest training features.

    ``train_features`` (N, D), ``train_labels`` (N,), ``test_features`` (M, D).
    """
    if train_features.shape[0] == 0:
        raise ValueError("kNN needs a non-empty memory bank of training features")
    c = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    scores = []
    for start in range(0, test_features.shape[0], chunk):
        q = F.normalize(test_features[start : start + chunk].float(), dim=1)
        sim = q @ bank.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(q.shape[0], c, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose true label is among the ``k`` highest scores."""
    k = min(k, scores.shape[1])
    pred = scores.topk(k, dim=1).indices
    return float((pred == labels[:, None]).any(dim=1).float().mean() * 100)


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
) -> KNNResult:
    """kNN top-1 / top-5 accuracy (percent) of ``test`` against the ``train`` bank."""
    t0 = time.perf_counter()
    keep = train_labels >= 0
    train_features, train_labels = train_features[keep], train_labels[keep]
    num_classes = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    scores = knn_scores(train_features, train_labels, test_features, k, temperature, num_classes)
    counts = torch.bincount(train_labels, minlength=num_classes)
    smallest = int(counts[counts > 0].min())
    note = None
    if k > smallest:
        note = (f"k = {k} is more than the {smallest} training images of the smallest class, so "
                "neighbours of other classes always vote; for a set this small try "
                f"--k {min(20, smallest)}")  # fmt: skip
    return KNNResult(
        top1=topk_accuracy(scores, test_labels, 1),
        top5=topk_accuracy(scores, test_labels, 5),
        k=min(k, int(train_features.shape[0])),
        temperature=temperature,
        n_train=int(train_features.shape[0]),
        n_test=int(test_features.shape[0]),
        seconds=time.perf_counter() - t0,
        note=note,
    )
