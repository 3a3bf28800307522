"""Classification metrics used by every evaluation: top-1, top-k, balanced accuracy,
per-class accuracy and the confusion matrix (with a PNG rendering)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class Metrics:
    """Accuracies in percent. ``confusion[i][j]`` counts true class i predicted as j."""

    top1: float
    topk: float
    k: int
    balanced: float
    per_class: list[float]
    confusion: list[list[int]]
    n: int
    classes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts: rows are true classes, columns predictions."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor,
    k: int = 5,
    classes: Sequence[str] | None = None,
) -> Metrics:
    """Metrics of class ``scores`` (N, C) (logits, probabilities or votes) against ``labels``.

    Balanced accuracy is the mean of per-class recalls over the classes present in
    ``labels`` (so a model that always answers the majority class scores 1/C).
    """
    n, c = scores.shape
    pred = scores.argmax(1)
    conf = confusion_matrix(pred, labels, c)
    support = conf.sum(1)
    present = support > 0
    recall = torch.where(present, conf.diag().float() / support.clamp_min(1), torch.zeros(c))
    kk = min(k, c)
    topk = (scores.topk(kk, dim=1).indices == labels[:, None]).any(1).float().mean()
    return Metrics(
        top1=float((pred == labels).float().mean() * 100) if n else 0.0,
        topk=float(topk * 100) if n else 0.0,
        k=kk,
        balanced=float(recall[present].mean() * 100) if present.any() else 0.0,
        per_class=[float(r * 100) for r in recall],
        confusion=conf.tolist(),
        n=n,
        classes=list(classes) if classes else [str(i) for i in range(c)],
    )


def save_confusion_png(m: Metrics, path: str | Path, title: str = "") -> Path:
    """Render the confusion matrix (row-normalised colours, counts written in cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = torch.tensor(m.confusion, dtype=torch.float32)
    norm = conf / conf.sum(1, keepdim=True).clamp_min(1)
    c = conf.shape[0]
    size = max(4.0, 0.55 * c + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), m.classes, rotation=45, ha="right")
    ax.set_yticks(range(c), m.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(int(conf[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_title(title or f"top-1 {m.top1:.1f}%  balanced {m.balanced:.1f}%")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
