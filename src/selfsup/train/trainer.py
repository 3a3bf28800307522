"""The Trainer: the one place that owns devices, precision, data loading, the optimiser,
schedules, checkpoints, logging, monitors and progress. Methods stay pure modules.

The loop reads top to bottom in :meth:`Trainer.fit` and :meth:`_Run.epoch`; setting up
(:mod:`.setup`), one optimiser step (:mod:`.step`), the logging window (:mod:`.window`),
checkpoints (:mod:`.checkpoint`) and pictures (:mod:`.pictures`) live beside it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from selfsup import dist, schedules
from selfsup.config import Config, parse_duration, to_dict, to_yaml
from selfsup.data import ImageSource
from selfsup.methods.base import Method, StepInfo
from selfsup.runtime import peak_memory_mb
from selfsup.train import checkpoint as ckpt_io
from selfsup.train import distributed, fsdp
from selfsup.train.budget import augment_on_device, budget, fraction_done
from selfsup.train.logger import MetricsLogger
from selfsup.train.monitors import KNNMonitor
from selfsup.train.pictures import Pictures
from selfsup.train.setup import Setup, header, loader, prepare, restore
from selfsup.train.signals import StopSignals
from selfsup.train.state import MAX_BAD_STEPS, FitResult, TrainingError, TrainState
from selfsup.train.step import StepRunner
from selfsup.train.trackers import Tracker, finish_trackers, open_trackers
from selfsup.train.window import LogWindow, postfix

__all__ = ["MAX_BAD_STEPS", "FitResult", "KNNMonitor", "TrainState", "Trainer", "TrainingError"]


class Trainer:
    """Runs a :class:`Method` on an :class:`ImageSource` under a :class:`Config`.

    ``out_dir`` receives ``config.yaml``, ``metrics.csv``, ``tensorboard/``,
    ``checkpoints/last.pt`` (and ``previous.pt``), ``skipped.txt`` and ``summary.json``.
    """

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path | None,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.tensorboard = tensorboard

    # Kept as static methods: callers and tests reach them through the Trainer.
    _augment_on_device = staticmethod(augment_on_device)

    def _budget(self, steps_per_epoch: int) -> tuple[int | None, float | None]:
        return budget(self.cfg.train, steps_per_epoch)

    @staticmethod
    def _progress(state: TrainState, total_steps: int | None, max_time: float | None) -> float:
        return fraction_done(state.step, state.elapsed, total_steps, max_time)

    def fit(
        self,
        method: Method,
        source: ImageSource,
        monitor: KNNMonitor | None = None,
        resume: dict[str, Any] | None = None,
        stop_at_step: int | None = None,
    ) -> FitResult:
        """Train until the budget is used (or ``stop_at_step`` steps are done, as if the run
        were interrupted there: the checkpoint lets a later ``fit`` continue exactly).
        """
        s = prepare(self.cfg, method, source, self.progress)
        ckpts = self.out_dir / ckpt_io.CHECKPOINT_DIR if self.out_dir is not None else None
        state = restore(s, method, resume, ckpts) if resume is not None else TrainState()
        if resume is not None and fraction_done(state.step, state.elapsed, s.total_steps,
                                                s.max_time) >= 1:  # fmt: skip
            # Nothing to train: leave the run folder (summary, curves, trackers) as it was.
            return FitResult(
                out_dir=self.out_dir, state=state, stopped_by="already complete",
                images_per_s=0.0, peak_memory_mb=0.0, final_loss=None,
                precision=s.precision, device=str(s.device),
            )  # fmt: skip
        run = _Run(self, method, s, state, monitor, resumed=resume is not None)
        run_t0 = time.perf_counter()
        images_at_start, time_at_start = state.images_seen, state.elapsed
        signals = StopSignals()
        try:
            with signals.installed():
                sampler, data = loader(s, self.cfg, state)
                while not run.done() and run.stopped_by == "budget":
                    sampler.epoch, sampler.start = state.epoch, state.epoch_pos
                    run.epoch(data, signals, stop_at_step)
                    epoch_end = state.epoch_pos >= sampler.epoch_length()
                    if epoch_end:
                        state.epoch, state.epoch_pos = state.epoch + 1, 0
                    if run.stopped_by != "budget":
                        break
                    if epoch_end and not run.done():
                        run.save()
                        run.pictures.save(state.step)
                        if state.epoch % max(1, self.cfg.monitor.every_epochs) == 0:
                            run.run_monitor()
                state.finished = run.done()
                run.save()
                if state.finished:
                    run.pictures.save(state.step)
                    run.run_monitor()
        except BaseException:
            run.close()
            finish_trackers(run.trackers, self.out_dir or Path("."), "failed")
            raise
        run.close()
        trained = state.elapsed - time_at_start
        result = FitResult(
            out_dir=self.out_dir, state=state,
            stopped_by=run.stopped_by if not state.finished else "budget",
            images_per_s=(state.images_seen - images_at_start) / max(trained, 1e-9),
            peak_memory_mb=peak_memory_mb(s.device), final_loss=run.last_loss,
            monitor=run.monitor_results, precision=s.precision, device=str(s.device),
        )  # fmt: skip
        if run.main and self.out_dir is not None:
            summary = result.as_dict() | {
                "wall_s": time.perf_counter() - run_t0, "config": to_dict(self.cfg),
            }  # fmt: skip
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if run.trackers and self.out_dir is not None:
            model = _export_for_trackers(self.out_dir) if self.cfg.logging.log_backbone else None
            status = "finished" if state.finished else "stopped"
            finish_trackers(run.trackers, self.out_dir, status, model=model)
        return result


def _export_for_trackers(out: Path) -> Path | None:
    """The trained backbone as safetensors + preprocessing.json in ``<run>/export``, the
    model artifact trackers receive (a failed export is a warning: the run itself is done)."""
    from selfsup.export import export_backbone

    try:
        res = export_backbone(out, "safetensors", out / "export" / "safetensors",
                              overwrite=True)  # fmt: skip
    except Exception as err:  # the run is saved; only the artifact is missing
        import warnings

        warnings.warn(f"backbone not exported for the trackers: {err}", stacklevel=2)
        return None
    return res.out_dir


class _Run:
    """One call of :meth:`Trainer.fit`: the state it updates and the outputs it writes."""

    def __init__(self, trainer: Trainer, method: Method, s: Setup, state: TrainState,
                 monitor: KNNMonitor | None, resumed: bool) -> None:  # fmt: skip
        cfg = self.cfg = trainer.cfg
        self.method, self.s, self.state, self.monitor = method, s, state, monitor
        self.main = dist.is_main()
        self.out = out = trainer.out_dir if self.main else None
        # Every rank writes its shards of a sharded (fsdp) checkpoint.
        self.ckpt_dir = (trainer.out_dir / ckpt_io.CHECKPOINT_DIR
                         if trainer.out_dir is not None else None)  # fmt: skip
        self.logger: MetricsLogger | None = None
        self.trackers: list[Tracker] = []
        # The step the run's checkpoint holds (for the message when a save fails).
        self.saved_step: int | None = state.step if resumed else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(to_yaml(cfg))
            self.trackers = open_trackers(cfg, out, resumed)
            self.logger = MetricsLogger(
                out, resume_step=state.step if resumed else None,
                tensorboard=trainer.tensorboard and "tensorboard" in cfg.logging.backends,
                trackers=self.trackers,
            )  # fmt: skip
        # Sharded, a model runs on all ranks together: pictures (rank 0 alone) are not drawn.
        self.pictures = Pictures(method, s.source, cfg, out if s.sharded is None else None,
                                 s.device, s.precision)  # fmt: skip
        self.monitor_results: dict[str, float] = {}
        self.stopped_by = "budget"
        self.last_loss: float | None = None
        self.window = LogWindow(cfg, method.chance_loss(s.global_batch), s.world)
        self.runner = StepRunner(cfg, method, s, out / "skipped.txt" if out else None)
        self.next_ckpt = state.elapsed + parse_duration(cfg.train.checkpoint_every)
        if self.main:
            tqdm.write(header(cfg, s))
        self.bar = tqdm(
            total=s.total_steps or None, initial=state.step,
            disable=not (trainer.progress and self.main), unit="step", dynamic_ncols=True,
            desc=cfg.method.name,
            # In a log file (not a terminal) a line every 30 s, not every step.
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )  # fmt: skip

    def done(self) -> bool:
        s = self.s
        return fraction_done(self.state.step, self.state.elapsed, s.total_steps, s.max_time) >= 1

    def epoch(self, data: Any, signals: StopSignals, stop_at_step: int | None) -> None:
        """Optimiser steps until the epoch's data runs out, the budget is used, or a stop."""
        s, state, t = self.s, self.state, self.cfg.train
        it = iter(data)
        self.runner.tick = step_start = time.perf_counter()
        while True:
            p = fraction_done(state.step, state.elapsed, s.total_steps, s.max_time)
            info = StepInfo(step=state.step, progress=p, epoch=state.epoch)
            opt = self.cfg.optim
            lr = s.base_lr * schedules.warmup_cosine(
                p, 1.0, peak=1.0, warmup=opt.warmup, end=opt.min_lr
            )
            for g in s.optimizer.param_groups:
                g["lr"] = lr
            res = self.runner.run(it, info, state)
            self.window.add_probe(res.probe_accs)
            self.window.wait += res.wait
            if res.exhausted:
                break
            if math.isfinite(res.loss):
                self.last_loss = res.loss
                self.window.add_logs(res.logs, s.accumulate)
            step_start = self._count_step(step_start, signals)
            if state.step % t.log_every == 0 or self.done():
                self._log(lr, p)
            if not s.total_steps and s.max_time and state.elapsed > 0:
                self.bar.total = max(state.step, int(state.step * s.max_time / state.elapsed))
            self.bar.update(1)
            if signals.received is not None:
                self.stopped_by = f"signal {signals.received}"
                break
            if stop_at_step is not None and state.step >= stop_at_step:
                self.stopped_by = "stop_at_step"
                break
            if self.done():
                break
            if state.elapsed >= self.next_ckpt:
                self.save()
                self.next_ckpt = state.elapsed + parse_duration(t.checkpoint_every)
                self.runner.tick = step_start = time.perf_counter()

    def _count_step(self, step_start: float, signals: StopSignals) -> float:
        """Advance the state by one step; its clock is shared by all ranks."""
        s, state = self.s, self.state
        state.step += 1
        state.epoch_pos += s.step_batch
        state.images_seen += s.step_batch
        now = time.perf_counter()
        state.elapsed += now - step_start
        if s.world > 1:
            # One clock and one stop decision for all ranks (rank 0's view is not special:
            # the slowest rank sets the pace anyway).
            shared = dist.all_reduce_max(
                torch.tensor([state.elapsed, float(signals.received is not None)])
            )
            state.elapsed = float(shared[0])
            if shared[1] > 0 and signals.received is None:
                signals.received = "SIGTERM (another rank)"
        self.window.time += now - step_start
        self.window.images += s.step_batch
        self.runner.tick = now
        return now

    def _log(self, lr: float, p: float) -> None:
        row = self.window.row(self.state, lr, p, self.runner.last_features)
        if self.logger is not None:
            self.logger.log(row)
        self.bar.set_postfix(postfix(row, self.state, self.runner.skipped_files), refresh=False)

    def save(self) -> None:
        # Every rank calls save() at the same steps (decisions are synchronised), so the
        # random states of all ranks can be gathered into rank 0's checkpoint.
        s = self.s
        rng_ranks = distributed.gather_objects(ckpt_io.capture_rng()) if s.world > 1 else None
        full = None
        if self.cfg.train.strategy == "fsdp" and self.ckpt_dir is not None:
            full = fsdp.save(self.ckpt_dir, self.method, s.optimizer, self.state.step)
        if self.out is None:
            return
        obj = ckpt_io.training_checkpoint(
            self.cfg, self.method, s.optimizer, s.scaler, asdict(self.state), rng_ranks,
            s.probe.full_state() if s.probe is not None else None,
        )  # fmt: skip
        if full is not None:  # the sharded tensors in obj are replaced, not copied
            obj |= fsdp.sharded_fields(full, self.state.step)
        ckpt_io.save_atomic(obj, self.out / ckpt_io.CHECKPOINT_DIR / ckpt_io.LAST,
                            last_step=self.saved_step)  # fmt: skip
        self.saved_step = self.state.step

    def run_monitor(self) -> None:
        # Sharded, every rank runs the monitor (the model runs on all ranks together).
        if self.monitor is None or not (self.main or self.s.sharded is not None):
            return
        s, d, state = self.s, self.cfg.data, self.state
        with fsdp.gathered(s.sharded):
            res = self.monitor(
                self.method.feature_extractor(), s.image_size, d.mean, d.std,
                self.cfg.backbone.in_chans, s.device, s.precision, s.channels_last,
            )  # fmt: skip
        if not self.main:
            return
        self.monitor_results.update(res)
        msg = f"epoch {state.epoch} step {state.step}: kNN top-1 {res['knn_top1']:.2f}%"
        tqdm.write(msg + f" (top-5 {res['knn_top5']:.2f}%)")
        if self.logger is not None:
            self.logger.log({"step": state.step, "epoch": state.epoch,
                             "images": state.images_seen, "elapsed_s": state.elapsed, **res})  # fmt: skip

    def close(self) -> None:
        self.bar.close()
        if self.s.features_hook is not None:
            self.s.features_hook.remove()
        if self.logger is not None:
            self.logger.close()
