"""Monitors during pretraining: collapse signals, an online linear probe (both on the
features of the method's own forward pass) and kNN accuracy on a labelled split.

Both read the backbone features of the first view, taken from the method's own forward
pass (a hook on the backbone; no extra compute), detached so they never affect training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import MonitorConfig
from selfsup.data import ImageSource
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_classify

# A representation whose normalised features vary this little (relative to an isotropic
# one) or whose effective rank is this low has collapsed.
STD_RATIO_MIN = 0.05
RANK_MIN = 2.0
# Contrastive losses within this fraction of chance level are "stuck".
CHANCE_MARGIN = 0.02

CAUSES = (
    "likely causes: a learning rate too high (optim.lr) or too low; a batch too small for "
    "in-batch negatives; a missing predictor or stop-gradient (BYOL/SimSiam); a temperature "
    "too high (contrastive) or too low (DINO teacher); too weak augmentations"
)


@dataclass
class CollapseStats:
    """``std_ratio``: mean per-dimension std of the L2-normalised features times sqrt(d)
    (about 1 for well-spread features, 0 when collapsed; SimSiam, Chen & He 2021, Sec. 4.1).
    ``rankme``: effective rank exp(entropy of the normalised singular values) (RankMe,
    Garrido et al., 2023): 1 for a rank-1 embedding, up to min(batch, d)."""

    std_ratio: float
    rankme: float
    collapsed: bool
    reason: str = ""


def collapse_stats(features: torch.Tensor) -> CollapseStats:
    """Collapse signals of a batch of features (B, D), B >= 2."""
    z = features.detach().float()
    z = z[torch.isfinite(z).all(1)]
    b, d = z.shape
    if b < 2:
        return CollapseStats(float("nan"), float("nan"), False)
    zn = F.normalize(z, dim=1)
    std_ratio = float(zn.std(0).mean() * math.sqrt(d))
    s = torch.linalg.svdvals(z - z.mean(0) if b > 1 else z)
    total = s.sum()
    if total <= 1e-12 * max(1.0, float(z.abs().max())):
        rankme = 1.0  # every row identical: no spread at all
    else:
        p = s / total + 1e-7
        rankme = float(torch.exp(-(p * p.log()).sum()))
    reasons = []
    if std_ratio < STD_RATIO_MIN:
        reasons.append(f"feature std {std_ratio:.3f} of an isotropic spread")
    if rankme < RANK_MIN:
        reasons.append(f"effective rank {rankme:.2f}")
    return CollapseStats(std_ratio, rankme, bool(reasons), "; ".join(reasons))


# Contrastive losses leave chance level within their first hundred steps when learning.
STUCK_MIN_STEPS = 200
# A short run (a 15-minute multi-crop run on a CPU has ~150 steps) is judged once half its
# budget has gone and it has made at least this many steps.
STUCK_MIN_STEPS_SHORT = 50


def loss_stuck(loss: float, chance: float | None, progress: float, step: int) -> bool:
    """A contrastive loss still within CHANCE_MARGIN of its chance level (log of the number
    of candidates) after the first 10% of the budget and STUCK_MIN_STEPS steps, or after
    half the budget and STUCK_MIN_STEPS_SHORT steps."""
    if chance is None or progress < 0.1 or not math.isfinite(loss):
        return False
    if step < STUCK_MIN_STEPS and not (progress >= 0.5 and step >= STUCK_MIN_STEPS_SHORT):
        return False
    return abs(loss - chance) <= CHANCE_MARGIN * chance


class OnlineProbe(nn.Module):
    """A linear classifier trained on detached features with its own optimiser; its accuracy
    on each batch *before* updating is the online probe accuracy (solo-learn's protocol)."""

    def __init__(self, dim: int, num_classes: int, lr: float = 1e-3) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.linear = nn.Linear(dim, num_classes)
        self.opt = torch.optim.AdamW(self.linear.parameters(), lr=lr, weight_decay=1e-4)

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> float | None:
        """Score then train on the labelled rows (labels >= 0); returns accuracy in %."""
        keep = labels >= 0
        if int(keep.sum()) < 2:
            return None
        x = features.detach().float()[keep]
        y = labels[keep].to(x.device)
        self.train()
        logits = self.linear(self.norm(x))
        acc = float((logits.argmax(1) == y).float().mean() * 100)
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        return acc

    def full_state(self) -> dict[str, object]:
        return {"module": self.state_dict(), "opt": self.opt.state_dict()}

    def load_full_state(self, state: dict[str, object]) -> None:
        self.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.opt.load_state_dict(state["opt"])  # type: ignore[arg-type]


class FirstCall:
    """Forward hook keeping the output of a module's first call since ``reset()``."""

    def __init__(self, module: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: object, output: object) -> None:
        if self.value is None and isinstance(output, torch.Tensor) and output.ndim == 2:
            self.value = output.detach()

    def reset(self) -> None:
        self.value = None

    def remove(self) -> None:
        self.handle.remove()


class KNNMonitor:
    """Online kNN accuracy of the current representation on a labelled split."""

    def __init__(
        self,
        bank: ImageSource,
        queries: ImageSource,
        cfg: MonitorConfig,
        batch_size: int = 256,
        num_workers: int = -1,
    ) -> None:
        if bank.labels is None or queries.labels is None:
            raise ValueError("the kNN monitor needs labelled bank and query images")
        self.bank, self.queries, self.cfg = bank, queries, cfg
        self.batch_size, self.num_workers = batch_size, num_workers

    def __call__(
        self,
        model: nn.Module,
        image_size: int,
        mean: list[float],
        std: list[float],
        channels: int,
        device: torch.device,
        precision: str,
        channels_last: bool,
    ) -> dict[str, float]:
        kw: dict[str, Any] = dict(
            image_size=image_size, mean=mean, std=std, channels=channels,
            batch_size=self.batch_size, device=device, precision=precision,
            channels_last=channels_last, num_workers=self.num_workers, progress=False,
        )  # fmt: skip
        fb, lb = extract_features(model, self.bank, **kw)
        fq, lq = extract_features(model, self.queries, **kw)
        res = knn_classify(fb, lb, fq, lq, k=self.cfg.k, temperature=self.cfg.temperature)
        return {"knn_top1": res.top1, "knn_top5": res.top5}
