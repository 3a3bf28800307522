"""Few-shot evaluation on frozen features: k labelled images a class, several seeded draws.

Two classifiers are fitted on the k-shot support set of each draw:

- **linear**: multinomial logistic regression on L2-normalised features (full batch,
  L-BFGS). Its L2 penalty is chosen by stratified cross-validation *on the support set
  itself* when there are at least 2 shots a class (no other labels are touched), and fixed
  at :data:`DEFAULT_L2` for 1 shot.
- **centroid**: nearest class mean of the L2-normalised features (cosine similarity).

The test set is touched once per draw. Results are means and standard deviations over the
draws.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from selfsup.eval.metrics import classification_metrics
from selfsup.progress import progress_bar

DEFAULT_L2 = 1e-3
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


class FewShotError(ValueError):
    """A class has fewer labelled images than the requested shots."""


def sample_shots(
    labels: Sequence[int], shots: int, seed: int, exclude: Sequence[int] = ()
) -> list[int]:
    """Exactly ``shots`` indices of every class present in ``labels`` (sorted), drawn
    without replacement, reproducibly from ``seed``; ``exclude`` indices are never drawn."""
    if shots < 1:
        raise FewShotError(f"shots must be at least 1, got {shots}")
    banned = set(exclude)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(labels):
        if t >= 0 and i not in banned:
            by_class.setdefault(int(t), []).append(i)
    rng = random.Random(seed)
    out: list[int] = []
    for c in sorted(by_class):
        members = by_class[c]
        if len(members) < shots:
            raise FewShotError(
                f"class {c} has only {len(members)} labelled images available, fewer than "
                f"{shots} shots; use fewer shots or more labelled data."
            )
        out += rng.sample(members, shots)
    return sorted(out)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = DEFAULT_L2, iters: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (weights (D, C), bias (C,)) by L-BFGS; the loss is
    mean cross-entropy + ``l2 / 2 * ||W||^2``."""
    d = x.shape[1]
    w = torch.zeros(d, num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def choose_l2(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, folds: int = 5
) -> float:
    """The L2 penalty of :data:`L2_GRID` with the best stratified cross-validated accuracy on
    the support set (ties: the larger penalty). 1 shot a class: :data:`DEFAULT_L2`."""
    counts = torch.bincount(y, minlength=num_classes)
    per_class = int(counts[counts > 0].min())
    if per_class < 2:
        return DEFAULT_L2
    k = min(folds, per_class)
    rng = random.Random(seed)
    fold = torch.empty(len(y), dtype=torch.long)
    for c in range(num_classes):
        idx = (y == c).nonzero().flatten().tolist()
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            fold[i] = j % k
    best, best_acc = DEFAULT_L2, -1.0
    for l2 in sorted(L2_GRID, reverse=True):
        correct = 0
        for f in range(k):
            tr, va = fold != f, fold == f
            w, b = fit_logistic(x[tr], y[tr], num_classes, l2, iters=50)
            correct += int(((x[va] @ w + b).argmax(1) == y[va]).sum())
        acc = correct / len(y)
        if acc > best_acc + 1e-9:
            best, best_acc = l2, acc
    return best


def centroid_scores(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                    num_classes: int) -> torch.Tensor:  # fmt: skip
    """Cosine similarity of each test feature to each class mean (of normalised features)."""
    xn = F.normalize(x_train, dim=1)
    centers = torch.zeros(num_classes, x_train.shape[1]).index_add_(0, y_train, xn)
    centers = F.normalize(centers, dim=1)
    return F.normalize(x_test, dim=1) @ centers.T


@dataclass
class ShotResult:
    shots: int
    labels_used: int
    linear_top1_mean: float
    linear_top1_std: float
    linear_balanced_mean: float
    centroid_top1_mean: float
    centroid_top1_std: float
    centroid_balanced_mean: float
    linear_top1: list[float] = field(default_factory=list)
    centroid_top1: list[float] = field(default_factory=list)
    l2: list[float] = field(default_factory=list)


@dataclass
class FewShotResult:
    results: list[ShotResult]
    seeds: int
    n_test: int
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _mean_std(v: list[float]) -> tuple[float, float]:
    t = torch.tensor(v, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(v) > 1 else 0.0


def fewshot_eval(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    shots: Sequence[int] = (1, 5, 10, 30, 100),
    seeds: int = 5,
    progress: bool | None = None,
) -> FewShotResult:
    """Few-shot linear and nearest-centroid accuracy for each number of ``shots`` a class.
    ``progress``: a bar over the draws (``None``: the process default)."""
    t0 = time.perf_counter()
    c = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    xtr = F.normalize(train_features.float(), dim=1)
    xte = F.normalize(test_features.float(), dim=1)
    labels = train_labels.tolist()
    results = []
    with progress_bar(total=len(shots) * seeds, desc="few-shot draws", unit="draw",
                      enabled=progress) as bar:  # fmt: skip
        for k in shots:
            lin, cen, lin_bal, cen_bal, l2s = [], [], [], [], []
            for s in range(seeds):
                idx = torch.tensor(sample_shots(labels, k, seed=s))
                x, y = xtr[idx], train_labels[idx]
                l2 = choose_l2(x, y, c, seed=s)
                w, b = fit_logistic(x, y, c, l2)
                m = classification_metrics(xte @ w + b, test_labels)
                mc = classification_metrics(centroid_scores(x, y, xte, c), test_labels)
                lin.append(m.top1)
                lin_bal.append(m.balanced)
                cen.append(mc.top1)
                cen_bal.append(mc.balanced)
                l2s.append(l2)
                bar.update()
            lm, ls = _mean_std(lin)
            cm, cs = _mean_std(cen)
            results.append(ShotResult(
                shots=k, labels_used=k * len(set(t for t in labels if t >= 0)),
                linear_top1_mean=lm, linear_top1_std=ls,
                linear_balanced_mean=_mean_std(lin_bal)[0],
                centroid_top1_mean=cm, centroid_top1_std=cs,
                centroid_balanced_mean=_mean_std(cen_bal)[0],
                linear_top1=lin, centroid_top1=cen, l2=l2s,
            ))  # fmt: skip
    return FewShotResult(results, seeds, int(test_features.shape[0]), time.perf_counter() - t0)
