"""Linear probe on frozen, cached features, with a learning-rate sweep trained in parallel.

Protocol: features are computed once. A validation split is carved from the training
features (stratified). One linear classifier per (learning rate, weight decay) pair is
trained at the same time, as one batched matrix product; each epoch every classifier is
scored on the validation split. The pair and epoch with the best validation top-1 are
chosen, and only that classifier is applied to the test set, once.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from selfsup import schedules
from selfsup.data import stratified_split
from selfsup.eval.knn import topk_accuracy
from selfsup.eval.metrics import classification_metrics
from selfsup.progress import progress_bar

DEFAULT_LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_WDS = (0.0, 1e-4)


@dataclass
class LinearResult:
    top1: float
    top5: float
    val_top1: float
    lr: float
    weight_decay: float
    epoch: int
    epochs: int
    n_train: int
    n_val: int
    n_test: int
    seconds: float = 0.0
    sweep: list[dict[str, float]] = field(default_factory=list)
    balanced: float = float("nan")  # mean per-class recall on the test set, percent

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    lrs: Sequence[float] = DEFAULT_LRS,
    weight_decays: Sequence[float] = DEFAULT_WDS,
    epochs: int = 30,
    batch_size: int = 512,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool | None = None,
) -> LinearResult:
    """Train the sweep on ``train`` minus a validation split; report test accuracy of the
    best validated classifier. Features (N, D) float; labels (N,) int64 (>= 0).
    ``progress``: a bar over the epochs (``None``: the process default)."""
    t0 = time.perf_counter()
    keep = train_labels >= 0
    x_all, y_all = train_features[keep].float(), train_labels[keep]
    n = x_all.shape[0]
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 2:
        raise ValueError(f"need more labelled training features for a linear probe (have {n})")
    val_idx, tr_idx = stratified_split(y_all.tolist(), n, n_val, seed)
    x_tr, y_tr = x_all[tr_idx], y_all[tr_idx]
    x_val, y_val = x_all[val_idx], y_all[val_idx]
    # Standardise with training statistics (the BatchNorm-without-affine of MAE's probe).
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x - mu) / sd

    x_tr, x_val, x_te = norm(x_tr), norm(x_val), norm(test_features.float())
    c = int(max(int(y_all.max()), int(test_labels.max())) + 1)
    grid = list(itertools.product(lrs, weight_decays))
    h, d = len(grid), x_tr.shape[1]
    lr_vec = torch.tensor([g[0] for g in grid])
    wd_vec = torch.tensor([g[1] for g in grid])

    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(h, d, c, requires_grad=True)
    b = torch.zeros(h, 1, c, requires_grad=True)
    # Per-head learning rates are folded into the gradients so that one SGD serves all heads.
    opt = torch.optim.SGD([w, b], lr=1.0, momentum=0.9)
    steps_per_epoch = max(1, x_tr.shape[0] // min(batch_size, x_tr.shape[0]))
    total = epochs * steps_per_epoch
    best_acc = torch.full((h,), -1.0)
    best_epoch = torch.zeros(h, dtype=torch.long)
    best_w, best_b = w.detach().clone(), b.detach().clone()
    step = 0
    for epoch in progress_bar(range(epochs), desc="linear probe", unit="epoch",
                              enabled=progress):  # fmt: skip
        perm = torch.randperm(x_tr.shape[0], generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb, yb = x_tr[idx], y_tr[idx]
            logits = torch.baddbmm(b, xb.expand(h, -1, -1), w)  # (H, B, C)
            loss = F.cross_entropy(logits.reshape(-1, c), yb.repeat(h), reduction="sum") / len(yb)
            loss = loss + 0.5 * (wd_vec[:, None, None] * w.pow(2)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            scale = schedules.cosine(step, total, 1.0, 0.0)
            assert w.grad is not None and b.grad is not None
            w.grad.mul_(lr_vec[:, None, None] * scale)
            b.grad.mul_(lr_vec[:, None, None] * scale)
            opt.step()
            step += 1
        with torch.no_grad():
            val_logits = torch.baddbmm(b, x_val.expand(h, -1, -1), w)
            acc = (val_logits.argmax(-1) == y_val).float().mean(1) * 100
            better = acc > best_acc
            best_acc = torch.where(better, acc, best_acc)
            best_epoch = torch.where(better, torch.full_like(best_epoch, epoch + 1), best_epoch)
            best_w[better] = w.detach()[better]
            best_b[better] = b.detach()[better]
    j = int(best_acc.argmax())
    with torch.no_grad():
        test_scores = x_te @ best_w[j] + best_b[j]
    sweep = [{"lr": lr, "weight_decay": wd, "val_top1": float(acc), "epoch": int(e)}
             for (lr, wd), acc, e in zip(grid, best_acc, best_epoch, strict=True)]  # fmt: skip
    return LinearResult(
        top1=topk_accuracy(test_scores, test_labels, 1),
        top5=topk_accuracy(test_scores, test_labels, 5),
        val_top1=float(best_acc[j]),
        lr=grid[j][0],
        weight_decay=grid[j][1],
        epoch=int(best_epoch[j]),
        epochs=epochs,
        n_train=int(x_tr.shape[0]),
        n_val=int(x_val.shape[0]),
        n_test=int(test_features.shape[0]),
        seconds=time.perf_counter() - t0,
        sweep=sweep,
        balanced=classification_metrics(test_scores, test_labels).balanced,
    )
