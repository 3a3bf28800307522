"""One optimiser step: its micro-batches (gradient accumulation), batched augmentation on
the device, the online probe, and what to do when the loss is not finite."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from selfsup import dist, schedules
from selfsup.config import Config
from selfsup.methods.base import Method, StepInfo
from selfsup.runtime import autocast
from selfsup.train.setup import Setup
from selfsup.train.state import MAX_BAD_STEPS, TrainingError, TrainState


@dataclass
class StepResult:
    """``exhausted``: the epoch's data ran out before the step; ``loss``: the mean over its
    micro-batches (NaN when skipped); ``logs``: each micro-batch's log values;
    ``probe_accs``: online-probe accuracies; ``wait``: seconds blocked on the loader."""

    exhausted: bool = False
    loss: float = float("nan")
    logs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    probe_accs: list[float] = field(default_factory=list)
    wait: float = 0.0


class StepRunner:
    """Runs optimiser steps for :class:`~selfsup.train.Trainer`; counts bad files and
    consecutive non-finite steps, and keeps the last features seen (for collapse checks)."""

    def __init__(self, cfg: Config, method: Method, s: Setup, skipped_file: Path | None) -> None:
        self.cfg, self.method, self.s = cfg, method, s
        self.skipped_file = skipped_file
        self.skipped_files = 0
        self.bad_run = 0
        self.last_features: torch.Tensor | None = None
        self.tick = time.perf_counter()

    def _size(self, full: int, progress: float) -> int:
        """A view's side now: ``full``, or smaller early on under progressive resizing."""
        d = self.cfg.data
        if d.progressive_start is None:
            return full
        return schedules.progressive_size(progress, full, d.progressive_start,
                                          d.progressive_until)  # fmt: skip

    def _views(self, batch: Any, progress: float) -> tuple[list[torch.Tensor], torch.Tensor]:
        s = self.s
        if s.batched is not None:
            # Each sample's views come from its own seed (run, epoch, position):
            # independent of workers, ranks and resuming.
            canvas, sizes, seeds, labels, skipped = batch
            out = [self._size(spec.size, progress) for spec in s.batched.specs]
            with torch.no_grad():
                views = s.batched(canvas.to(s.device, non_blocking=True), sizes, seeds, out)
        else:
            views, labels, skipped = batch
            if self.cfg.data.progressive_start is not None:
                views = [self._shrink(v, progress) for v in views]
        self.skipped_files += len(skipped)
        if skipped and self.skipped_file is not None:
            with open(self.skipped_file, "a") as f:
                f.write("".join(x + "\n" for x in skipped))
        # Clips (B, C, T, H, W) of video methods have no channels-last layout.
        views = [
            v.to(s.device, non_blocking=True).contiguous(
                memory_format=s.mem_format if v.ndim == 4 else torch.contiguous_format
            )
            for v in views
        ]
        return views, labels

    def _shrink(self, view: torch.Tensor, progress: float) -> torch.Tensor:
        """A per-image view resized to its progressive size (antialiased bilinear)."""
        h, w = view.shape[-2:]
        size = (self._size(h, progress), self._size(w, progress))
        if size == (h, w):
            return view
        with torch.no_grad():
            return F.interpolate(view.float(), size=size, mode="bilinear", antialias=True,
                                 align_corners=False)  # fmt: skip

    def _grad_sync(self, last_micro: bool) -> contextlib.AbstractContextManager[Any]:
        # Reduce gradients across ranks only on the last micro-batch.
        if self.s.ddp is not None and not last_micro:
            return self.s.ddp.no_sync()
        return contextlib.nullcontext()

    def _micro(self, batch: Any, info: StepInfo, last: bool, out: StepResult) -> float:
        """Forward and backward on one micro-batch; its loss (not finite: no backward)."""
        s = self.s
        views, labels = self._views(batch, info.progress)
        hook = s.features_hook
        if hook is not None:
            hook.reset()
        with self._grad_sync(last), autocast(s.device, s.precision):
            loss, logs = s.step_fn(views, info)
        feats = hook.value if hook is not None else None
        if feats is not None:
            feats = feats[: views[0].shape[0]]
            if s.probe is not None:
                acc = s.probe.step(feats, labels)
                if acc is not None:
                    out.probe_accs.append(acc)
            self.last_features = feats
        value = float(loss.detach())
        out.logs.append(logs)
        finite = math.isfinite(value)
        if s.world > 1:  # every rank must skip, or none (DDP reduces together)
            finite = bool(dist.all_reduce_min(torch.tensor(float(finite))) > 0)
        if not finite:  # the whole step is skipped (another rank's loss may be the bad one)
            return value if not math.isfinite(value) else float("nan")
        scaled = loss / s.accumulate if s.accumulate > 1 else loss
        with self._grad_sync(last):
            if s.scaler is not None:
                s.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        return value

    def run(self, it: Iterator[Any], info: StepInfo, state: TrainState) -> StepResult:
        """One optimiser step = ``accumulate`` micro-batches from ``it`` (usually one)."""
        s, out, losses = self.s, StepResult(), []
        for micro in range(s.accumulate):
            try:
                batch = next(it)
            except StopIteration:
                s.optimizer.zero_grad(set_to_none=True)
                out.exhausted = True
                return out
            # Data wait: time blocked on the loader only. Batched augmentation is device
            # work and counts with the step.
            out.wait += time.perf_counter() - self.tick
            losses.append(self._micro(batch, info, micro == s.accumulate - 1, out))
            if math.isfinite(losses[-1]):
                self.tick = time.perf_counter()
        out.loss = sum(losses) / len(losses)
        if math.isfinite(out.loss):
            self.bad_run = 0
            self._update(info)
        else:
            self._skip(out.loss, state)
        return out

    def _update(self, info: StepInfo) -> None:
        s, method, optim = self.s, self.method, self.cfg.optim
        if s.scaler is not None:
            s.scaler.unscale_(s.optimizer)
        method.on_after_backward(info)
        if optim.grad_clip:
            params = [q for m in method.trainable_modules() for q in m.parameters()]
            nn.utils.clip_grad_norm_(params, optim.grad_clip)
        if s.scaler is not None:
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        method.on_step_end(info)

    def _skip(self, loss: float, state: TrainState) -> None:
        self.s.optimizer.zero_grad(set_to_none=True)
        state.skipped_steps += 1
        self.bad_run += 1
        tqdm.write(
            f"step {state.step}: loss is {loss}; step skipped "
            f"({self.bad_run}/{MAX_BAD_STEPS} in a row)."
        )
        if self.bad_run >= MAX_BAD_STEPS:
            raise TrainingError(
                f"the loss was not finite for {self.bad_run} steps in a row "
                f"(step {state.step}). Likely causes: a learning rate too "
                f"high for this batch size (optim.lr={self.cfg.optim.lr}), fp16 "
                "overflow (use precision=bf16 or fp32), or a temperature "
                "too low. The last checkpoint holds the last finite weights."
            )
