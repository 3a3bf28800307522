"""Depth metrics as the field reports them (Eigen et al., "Depth Map Prediction from a Single
Image using a Multi-Scale Deep Network", NeurIPS 2014; the Monodepth2 evaluation): per image,
over valid pixels within ``[min_depth, max_depth]``, predictions clamped to that range and
optionally median-scaled (monocular self-supervised depth has no scale), then averaged over
images.

- ``abs_rel`` mean |d - d*| / d*, ``sq_rel`` mean (d - d*)^2 / d*
- ``rmse`` sqrt(mean (d - d*)^2) in metres, ``rmse_log`` sqrt(mean (log d - log d*)^2)
- ``delta1..3`` the fraction of pixels with max(d / d*, d* / d) < 1.25, 1.25^2, 1.25^3
  (fractions in [0, 1], as papers print them)

Lower is better for the errors, higher for the deltas.
"""

from __future__ import annotations

from typing import Any

import torch

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


def image_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    min_depth: float = 0.1,
    max_depth: float = 10.0,
    median_scale: bool = False,
) -> dict[str, float] | None:
    """Metrics of one depth map ``pred`` (H, W) against ``gt`` (H, W) (metres, 0 invalid);
    None when the image has no valid pixel. ``median_scale`` multiplies ``pred`` by
    median(gt) / median(pred) over the valid pixels first (the ``scale`` is returned)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and truth {tuple(gt.shape)} differ")
    gt = gt.double()
    valid = torch.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
    if not bool(valid.any()):
        return None
    t = gt[valid]
    p = pred.double()[valid]
    scale = 1.0
    if median_scale:
        scale = float(t.median() / p.median().clamp_min(1e-12))
        p = p * scale
    p = p.clamp(min_depth, max_depth)
    ratio = torch.maximum(t / p, p / t)
    return {
        "abs_rel": float(((p - t).abs() / t).mean()),
        "sq_rel": float(((p - t) ** 2 / t).mean()),
        "rmse": float(((p - t) ** 2).mean().sqrt()),
        "rmse_log": float(((p.log() - t.log()) ** 2).mean().sqrt()),
        "delta1": float((ratio < 1.25).double().mean()),
        "delta2": float((ratio < 1.25**2).double().mean()),
        "delta3": float((ratio < 1.25**3).double().mean()),
        "scale": scale,
    }


class DepthMetrics:
    """Averages :func:`image_metrics` over images (the Monodepth2 / Eigen convention)."""

    def __init__(
        self, min_depth: float = 0.1, max_depth: float = 10.0, median_scale: bool = False
    ) -> None:
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth, self.median_scale = min_depth, max_depth, median_scale
        self.rows: list[dict[str, float]] = []
        self.empty = 0

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add a batch ``(B, H, W)`` (or one ``(H, W)``) of predictions and truths."""
        if pred.dim() == 2:
            pred, gt = pred[None], gt[None]
        for p, g in zip(pred, gt, strict=True):
            m = image_metrics(p, g, self.min_depth, self.max_depth, self.median_scale)
            if m is None:
                self.empty += 1
            else:
                self.rows.append(m)

    def result(self) -> dict[str, Any]:
        """The mean of every metric over images, ``images`` scored, ``empty`` (no valid
        pixel), and, when median-scaled, the spread of the scales (``scale_std`` relative
        to their mean: how consistent the network's own scale is)."""
        if not self.rows:
            raise ValueError("no image with valid depth was scored")
        n = len(self.rows)
        out: dict[str, Any] = {k: sum(r[k] for r in self.rows) / n for k in METRICS}
        out |= {"images": n, "empty": self.empty}
        if self.median_scale:
            s = torch.tensor([r["scale"] for r in self.rows], dtype=torch.float64)
            out["scale_mean"] = float(s.mean())
            out["scale_std"] = float(s.std() / s.mean()) if n > 1 else 0.0
        return out
