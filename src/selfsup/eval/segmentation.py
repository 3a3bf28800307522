"""Semantic segmentation metrics from a pixel confusion matrix: per-class IoU, mIoU, Dice,
pixel accuracy (all in percent), and the Dice agreement of two binary masks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


class SegConfusion:
    """Accumulates ``matrix`` (K, K) int64: ``matrix[t, p]`` counts pixels of true class t
    predicted as p. Pixels labelled ``ignore_index`` or outside ``valid`` are not counted.

    ``matrix`` is a plain tensor: sum the matrices of several workers or batches and assign
    the sum to merge them.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix = torch.zeros_like(self.matrix)

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        """Count ``pred`` (B, H, W) int class indices against ``target`` (B, H, W) int
        (``ignore_index`` allowed); ``valid`` (B, H, W) bool restricts the pixels counted
        (e.g. a field-of-view mask)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        keep = target != self.ignore_index
        if valid is not None:
            if valid.shape != target.shape:
                raise ValueError(f"valid {tuple(valid.shape)} and target differ in shape")
            keep &= valid.to(torch.bool)
        t, p = target[keep].long(), pred[keep].long()
        k = self.num_classes
        for name, v in (("target", t), ("pred", p)):
            if v.numel() and (int(v.min()) < 0 or int(v.max()) >= k):
                raise ValueError(
                    f"{name} holds class {int(v.min())}..{int(v.max())} outside 0..{k - 1} "
                    f"(ignore index {self.ignore_index}); check num_classes and the masks"
                )
        counts = torch.bincount(t * k + p, minlength=k * k).view(k, k)
        self.matrix = self.matrix.to(counts.device) + counts

    def iou(self) -> torch.Tensor:
        """(K,) float64 TP / (TP + FP + FN) per class, in [0, 1]; NaN for a class absent from
        both prediction and target."""
        m = self.matrix.double()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def miou(self) -> float:
        """Mean IoU over the classes present (NaN-mean), in percent."""
        iou = self.iou()
        present = iou[~iou.isnan()]
        return float(present.mean()) * 100 if present.numel() else math.nan

    def dice(self, cls: int = 1) -> float:
        """Dice of class ``cls``, 2 TP / (2 TP + FP + FN), in percent (NaN if absent)."""
        m = self.matrix.double()
        tp = m[cls, cls]
        denom = m[:, cls].sum() + m[cls, :].sum()  # (TP + FP) + (TP + FN)
        return float(2 * tp / denom) * 100 if denom > 0 else math.nan

    def pixel_accuracy(self) -> float:
        """Correct / counted pixels, in percent (NaN when nothing was counted)."""
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total * 100 if total else math.nan

    def result(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``miou``, ``per_class_iou`` ({name: percent}), ``dice`` (of the foreground class
        1 for two-class tasks, else None), ``pixel_acc``; percents, NaN where undefined."""
        names = [str(i) for i in range(self.num_classes)] if class_names is None else class_names
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        iou = self.iou()
        return {
            "miou": self.miou(),
            "per_class_iou": {n: float(v) * 100 for n, v in zip(names, iou.tolist(), strict=True)},
            "dice": self.dice(1) if self.num_classes == 2 else None,
            "pixel_acc": self.pixel_accuracy(),
        }


def dice_score(
    pred_mask: torch.Tensor, ref_mask: torch.Tensor, valid: torch.Tensor | None = None
) -> float:
    """Dice agreement of two binary masks of one shape (non-zero = foreground), e.g. a second
    human observer against the first: 2 |A and B| / (|A| + |B|) in percent over the ``valid``
    pixels; NaN when both masks are empty."""
    if pred_mask.shape != ref_mask.shape:
        raise ValueError(
            f"masks differ in shape: {tuple(pred_mask.shape)}, {tuple(ref_mask.shape)}"
        )
    a, b = pred_mask != 0, ref_mask != 0
    if valid is not None:
        a, b = a & valid.to(torch.bool), b & valid.to(torch.bool)
    denom = int(a.sum()) + int(b.sum())
    return 200.0 * int((a & b).sum()) / denom if denom else math.nan
