"""The logging window: what happened over the last ``train.log_every`` steps, as one row of
``metrics.csv``, the progress bar's figures, and the collapse checks."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from selfsup import dist
from selfsup.config import Config
from selfsup.train.monitors import CAUSES, collapse_stats, loss_stuck
from selfsup.train.state import TrainState


class LogWindow:
    """Sums of loss terms, probe accuracies, images, time and data wait since the last row."""

    def __init__(self, cfg: Config, chance: float | None, world: int) -> None:
        self.cfg, self.chance, self.world = cfg, chance, world
        self.collapse_warned_at = -(10**9)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.images = 0
        self.time = 0.0
        self.wait = 0.0
        self.probe_sum = 0.0
        self.probe_n = 0

    def add_probe(self, accs: list[float]) -> None:
        self.probe_sum += sum(accs)
        self.probe_n += len(accs)

    def add_logs(self, logs: list[dict[str, torch.Tensor]], accumulate: int) -> None:
        """The log values of one finished (finite) step, averaged over its micro-batches."""
        for one in logs:
            for k, v in one.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(v) / accumulate
        self.steps += 1

    def _means(self) -> dict[str, float]:
        sums = self.sums
        if self.world > 1 and sums:
            # The loss and its terms over the global batch, not rank 0's share of it (every
            # rank logs the same keys at this step).
            keys = sorted(sums)
            means = dist.all_reduce_mean(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
            sums = dict(zip(keys, means.tolist(), strict=True))
        return {k: v / max(self.steps, 1) for k, v in sums.items()}

    def row(self, state: TrainState, lr: float, progress: float,
            features: torch.Tensor | None) -> dict[str, Any]:  # fmt: skip
        """The metrics row for this window (then the window starts again)."""
        row: dict[str, Any] = {
            "step": state.step, "epoch": state.epoch, "images": state.images_seen,
            "elapsed_s": state.elapsed, "lr": lr,
            "img_per_s": self.images / max(self.time, 1e-9),
            "data_wait": self.wait / max(self.time, 1e-9),
        }  # fmt: skip
        row.update(self._means())
        if self.probe_n:
            row["probe_acc"] = self.probe_sum / self.probe_n
        if self.cfg.monitor.collapse and features is not None:
            self._health(row, state.step, progress, features)
        self.reset()
        return row

    def _health(self, row: dict[str, Any], step: int, progress: float,
                features: torch.Tensor) -> None:  # fmt: skip
        cs = collapse_stats(features)
        row["std_ratio"], row["rankme"] = cs.std_ratio, cs.rankme
        reason = cs.reason if cs.collapsed else ""
        if loss_stuck(row.get("loss", float("nan")), self.chance, progress, step):
            reason = (reason + "; " if reason else "") + (
                f"loss {row['loss']:.3f} stuck at chance level {self.chance:.3f}"
            )
        row["collapse"] = int(bool(reason))
        if reason and step - self.collapse_warned_at >= 10 * self.cfg.train.log_every:
            self.collapse_warned_at = step
            tqdm.write(
                f"warning: step {step}: the representation may be collapsing ({reason}); {CAUSES}."
            )


def postfix(row: dict[str, Any], state: TrainState, bad_files: int) -> dict[str, Any]:
    """The figures shown beside the progress bar."""
    post: dict[str, Any] = {
        "loss": f"{row.get('loss', float('nan')):.4f}", "img/s": f"{row['img_per_s']:.1f}",
        "data": f"{row['data_wait']:.0%}", "lr": f"{row['lr']:.3g}", "ep": state.epoch,
    }  # fmt: skip
    if state.skipped_steps:
        post["skipped steps"] = state.skipped_steps
    if bad_files:
        post["bad files"] = bad_files
    if "probe_acc" in row:
        post["probe"] = f"{row['probe_acc']:.1f}%"
    if row.get("collapse"):
        post["health"] = "COLLAPSE?"
    return post
