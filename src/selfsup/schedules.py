"""Per-step values as pure functions of ``(step, total)``.

``step`` and ``total`` may be floats: under a time budget the trainer passes
``(elapsed seconds, budget seconds)``, so schedules follow the budget exactly as they
follow a step count.
"""

from __future__ import annotations

import math


def cosine(step: float, total: float, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step >= total)."""
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def linear(step: float, total: float, start: float, end: float) -> float:
    """Linear interpolation from ``start`` (step 0) to ``end`` (step >= total)."""
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return start + (end - start) * t


def warmup_cosine(
    step: float, total: float, peak: float, warmup: float, end: float = 0.0, start: float = 0.0
) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup`` steps, then cosine to ``end``.

    This is the learning-rate schedule of SimCLR, MoCo v3, DINO and MAE.
    """
    if warmup > 0 and step < warmup:
        return linear(step, warmup, start, peak)
    return cosine(step - warmup, total - warmup, peak, end)


def momentum(step: float, total: float, base: float = 0.996, end: float = 1.0) -> float:
    """EMA momentum for a teacher: cosine from ``base`` to ``end`` (BYOL, DINO)."""
    return cosine(step, total, base, end)


def progressive_size(
    progress: float, full: int, start: float, until: float, multiple: int = 4
) -> int:
    """Progressive resizing (FFCV's ResNet recipes; Touvron et al., "FixRes", NeurIPS 2019,
    on why a network trained on smaller views does well at full size): a view of ``full``
    pixels is made ``start`` times as large at the beginning of the budget, growing
    linearly to full size at fraction ``until`` of it, in steps of ``multiple`` pixels (few
    distinct shapes). ``progress`` is the fraction of the budget done, in [0, 1]."""
    frac = linear(progress, until, start, 1.0) if until > 0 else 1.0
    size = round(full * frac / multiple) * multiple
    return max(multiple, min(full, size))
