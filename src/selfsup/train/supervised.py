"""The one supervised loop: every downstream task (classification fine-tuning, dense
prediction, depth, video) hands it a model, a loss and a metric instead of writing a loop.

The loop owns the system concerns: device and precision, seeding, the optimiser and its
warm-up + cosine schedule (per-group ``lr_scale``), the step / epoch / time budget, gradient
clipping, evaluation on a validation set with early stopping and best-weights selection,
progress, logging, and optional checkpoints that resume to the same weights. A task
(:class:`SupervisedTask`) owns only what is particular to it.

Usage::

    loop = SupervisedLoop(lambda: MyTask(...), LoopConfig(epochs=10, lr=0.05))
    report = loop.fit(train_dataset, val_dataset)  # loop.task.model holds the kept weights
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from selfsup import schedules
from selfsup.data import default_workers, loader_kwargs
from selfsup.progress import progress_bar
from selfsup.runtime import autocast, resolve_device, resolve_precision
from selfsup.train.checkpoint import LAST, capture_rng, restore_rng, save_atomic

OPTIMIZERS = ("sgd", "adamw")


@runtime_checkable
class SupervisedTask(Protocol):
    """What a task gives the loop.

    - ``model``: the network trained (the loop moves it to the device).
    - ``param_groups()``: optimiser groups; each may set ``lr_scale`` (its learning rate is
      ``lr * lr_scale * schedule``, e.g. a lower rate for a pretrained backbone) and
      ``weight_decay`` (else :attr:`LoopConfig.weight_decay`).
    - ``loss(batch)``: ``(scalar loss, logs)`` for a training batch already on the device,
      run under autocast; ``logs`` values (floats or scalar tensors) are averaged per epoch.
    - ``eval_step(batch)``: the outputs of one validation batch (no grad, eval mode,
      autocast), e.g. ``(probabilities, labels)`` on the CPU.
    - ``metrics(outputs)``: metrics of all ``eval_step`` outputs; ``"score"`` (higher is
      better) chooses the weights to keep and drives early stopping.

    Optional: ``train_mode()`` (called at each epoch start instead of ``model.train()``,
    e.g. to keep a frozen backbone in eval mode) and ``collate`` (the DataLoader's
    ``collate_fn`` for batches that are not tensors of equal shape).
    """

    @property
    def model(self) -> nn.Module: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]: ...

    def eval_step(self, batch: Any) -> Any: ...

    def metrics(self, outputs: list[Any]) -> dict[str, float]: ...


T = TypeVar("T", bound=SupervisedTask)


@dataclass
class LoopConfig:
    """Budget, optimiser, schedule and system settings of one supervised run."""

    # Passes over the training data (an upper bound: the step and time budgets and early
    # stopping may end sooner).
    epochs: int = 1
    # Cap on optimiser steps; the schedule spans min(epochs x steps an epoch, max_steps), so
    # a capped run still decays fully.
    max_steps: int | None = None
    # Wall-clock budget in seconds, checked after each epoch and each evaluation (an epoch
    # in progress finishes). Results then depend on the machine; max_steps is reproducible.
    max_seconds: float | None = None
    # Capped at the dataset size; a last partial batch is dropped unless it is the only one.
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 0.05
    # For parameter groups that do not set their own.
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    # Linear warm-up from 0, then cosine decay to min_lr_ratio x lr.
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    # Clip the gradient norm of all parameters to this value (None: no clipping).
    grad_clip: float | None = None
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = -1
    # Evaluate every this many steps (and after the last); None: after every epoch.
    eval_every: int | None = None
    # Stop after this many evaluations without a better score (None: never).
    patience: int | None = None
    # Restore the weights of the best evaluation at the end (without validation data the
    # last weights are kept).
    keep_best: bool = True
    seed: int = 0
    # Progress bar (None: the process default, see selfsup.progress).
    progress: bool | None = None
    desc: str = "supervised"
    # Checkpoints (model, optimiser, RNG and loop state) go to checkpoint_dir/last.pt every
    # checkpoint_every steps and at the end; resume continues from there. Resumed runs end
    # with the same weights as uninterrupted ones when num_workers=0 (worker processes
    # draw their own augmentations afresh).
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 0
    resume: bool = False


@dataclass
class LoopReport:
    """What :meth:`SupervisedLoop.fit` did. ``evaluations`` and ``epochs`` are logs: one
    dict per evaluation (metrics, step, epoch) and per epoch (mean loss and task logs, lr)."""

    steps: int
    total_steps: int
    epochs_run: int
    # Best validation score and where it was reached (without validation: nan, last epoch).
    best_score: float
    best_epoch: int
    best_step: int
    # "epochs", "steps", "time" or "patience".
    stopped: str
    seconds: float
    evaluations: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    resumed_at: int | None = None


@dataclass
class _State:
    """The loop's position, saved in checkpoints (``batch``: batches done this epoch)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    epochs_run: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    best_step: int = 0
    best_eval: int = 0
    stopped: str = ""
    evaluations: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and Python's ``random``."""
    torch.manual_seed(seed)
    random.seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a batch (nested in tuples, lists and dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class _SkippableBatches(Sampler[list[int]]):
    """Batches of indices whose next pass can start after ``skip`` batches (resume)."""

    def __init__(self, batches: BatchSampler) -> None:
        self.batches = batches
        self.skip = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for i, b in enumerate(self.batches):
            if i >= skip:
                yield b


class SupervisedLoop(Generic[T]):
    """Trains ``task.model`` on a dataset with ``task.loss``; scores it with ``task.metrics``.

    ``task`` may be a factory: it is then called after seeding, so the model's
    initialisation is part of the seeded run. Construction resolves device and precision,
    seeds, moves the model to the device and builds the optimiser.
    """

    def __init__(self, task: T | Callable[[], T], cfg: LoopConfig,
                 log: Callable[[dict[str, float]], None] | None = None) -> None:  # fmt: skip
        if cfg.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {cfg.optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
        self.cfg, self.log = cfg, log
        self._t0 = time.perf_counter()
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        seed_everything(cfg.seed)
        self.task: T = task if isinstance(task, SupervisedTask) else task()
        self.model = self.task.model.to(self.device)
        self.optimizer = self._optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self._epoch_rng: torch.Tensor | None = None  # the shuffle's state at epoch start
        self._lr_factor = 1.0

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg, groups = self.cfg, self.task.param_groups()
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)  # fmt: skip

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the whole run: the span of the schedule."""
        total = self.cfg.epochs * max(1, steps_per_epoch)
        if self.cfg.max_steps is not None:
            total = max(1, min(total, self.cfg.max_steps))
        return total

    def fit(self, train_data: Dataset[Any], val_data: Dataset[Any] | None = None) -> LoopReport:
        """Train on ``train_data``; evaluate on ``val_data`` (if any) to keep the best weights
        and stop early. The kept weights are left in ``task.model`` (on the device)."""
        cfg = self.cfg
        loader, batches, gen = self._train_loader(train_data)
        val = None if val_data is None else self.eval_loader(val_data)
        total = self.total_steps(len(loader))
        s = _State()
        best = copy.deepcopy(self.model.state_dict()) if val is not None and cfg.keep_best else None
        resumed_at = None
        if cfg.resume:
            s, best, resumed_at = self._resume(s, best)
            if s.stopped == "steps" and s.step < total:
                # Resumed under a larger step budget: go on (the schedule spans the new total).
                s.stopped = ""
        bar = progress_bar(total=total, initial=s.step, desc=cfg.desc, unit="step",
                           enabled=cfg.progress)  # fmt: skip
        try:
            for epoch in range(s.epoch, cfg.epochs):
                if s.stopped:
                    break
                s.epoch = epoch
                best = self._epoch(loader, batches, gen, val, s, best, total, bar)
        finally:
            bar.close()
        s.stopped = s.stopped or "epochs"
        if cfg.checkpoint_dir is not None:
            self._save(s, best)
        if best is not None and s.evaluations:
            self.model.load_state_dict(best)
        no_val = not s.evaluations
        return LoopReport(
            steps=s.step, total_steps=total, epochs_run=s.epochs_run,
            best_score=math.nan if no_val else s.best_score,
            best_epoch=s.epochs_run if no_val else s.best_epoch,
            best_step=s.step if no_val else s.best_step, stopped=s.stopped,
            seconds=time.perf_counter() - self._t0, evaluations=s.evaluations, epochs=s.epochs,
            resumed_at=resumed_at,
        )  # fmt: skip

    def _epoch(self, loader: DataLoader[Any], batches: _SkippableBatches, gen: torch.Generator,
               val: DataLoader[Any] | None, s: _State, best: dict[str, Any] | None, total: int,
               bar: Any) -> dict[str, Any] | None:  # fmt: skip
        """One pass (or its rest, after a resume); returns the best weights so far."""
        train_mode = getattr(self.task, "train_mode", None)
        train_mode() if callable(train_mode) else self.model.train()
        if s.batch:  # resumed mid-epoch: the same shuffle, minus the batches done
            assert self._epoch_rng is not None
            gen.set_state(self._epoch_rng)
            batches.skip = s.batch
        else:
            self._epoch_rng = gen.get_state()
        sums, best = self._train_pass(loader, val, s, best, total, bar)
        n = max(1, sums.pop("_n", 0))
        record = {"epoch": float(s.epoch + 1), "step": float(s.step),
                  "lr": self.cfg.lr * self._lr_factor}  # fmt: skip
        record |= {k: float(v) / n for k, v in sums.items()}
        s.epochs.append(record)
        self._emit(record)
        s.epochs_run, s.batch = s.epoch + 1, 0
        if val is not None and not self.cfg.eval_every:
            best = self._evaluate(val, s, best)
        postfix = {"loss": f"{record.get('loss', math.nan):.4f}"}
        if s.evaluations:
            postfix |= {"score": f"{s.evaluations[-1]['score']:.2f}", "best": f"{s.best_score:.2f}"}
        bar.set_postfix(postfix, refresh=False)
        s.stopped = s.stopped or self._stop_reason(s, total, epoch_end=True)
        return best

    def _train_pass(self, loader: DataLoader[Any], val: DataLoader[Any] | None, s: _State,
                    best: dict[str, Any] | None, total: int, bar: Any
                    ) -> tuple[dict[str, Any], dict[str, Any] | None]:  # fmt: skip
        """The steps of one epoch, with evaluations and checkpoints every N steps; returns the
        sums of the logged values (and their count ``_n``) and the best weights so far."""
        cfg = self.cfg
        sums: dict[str, Any] = {}
        # The budget is checked before a batch is fetched, so none is loaded in vain.
        it = iter(loader) if s.step < total else None
        while it is not None and s.step < total and not s.stopped:
            batch = next(it, None)
            if batch is None:
                break
            for k, v in self._step(batch, s.step, total).items():
                sums[k] = sums.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v)
            s.step, s.batch = s.step + 1, s.batch + 1
            bar.update(1)
            every = cfg.eval_every
            if val is not None and every and (s.step % every == 0 or s.step == total):
                best = self._evaluate(val, s, best)
                s.stopped = self._stop_reason(s, total, epoch_end=False)
            every = cfg.checkpoint_every
            if cfg.checkpoint_dir is not None and every and s.step % every == 0:
                self._save(s, best)
        return sums, best

    def _step(self, batch: Any, step: int, total: int) -> dict[str, Any]:
        """One optimiser step; returns the loss and the task's logs (with a count ``_n``)."""
        cfg, opt = self.cfg, self.optimizer
        f = schedules.warmup_cosine(step, total, 1.0, cfg.warmup_steps, end=cfg.min_lr_ratio)
        self._lr_factor = f
        for g in opt.param_groups:
            g["lr"] = cfg.lr * float(g.get("lr_scale", 1.0)) * f
        batch = to_device(batch, self.device)
        with autocast(self.device, self.precision):
            loss, logs = self.task.loss(batch)
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        else:
            loss.backward()  # type: ignore[no-untyped-call]
        if cfg.grad_clip:
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        return {"loss": loss.detach(), **logs, "_n": 1}

    @torch.no_grad()
    def evaluate(self, data: DataLoader[Any] | Dataset[Any]) -> dict[str, float]:
        """``task.metrics`` of the model on ``data`` (a Dataset or a ready DataLoader)."""
        loader = data if isinstance(data, DataLoader) else self.eval_loader(data)
        self.model.eval()
        outputs = []
        for batch in loader:
            with autocast(self.device, self.precision):
                outputs.append(self.task.eval_step(to_device(batch, self.device)))
        metrics = self.task.metrics(outputs)
        if "score" not in metrics:
            raise KeyError(f"{type(self.task).__name__}.metrics() must return a 'score' (higher "
                           "is better): the loop keeps the weights that score best.")  # fmt: skip
        return metrics

    def _evaluate(self, val: DataLoader[Any], s: _State, best: dict[str, Any] | None
                  ) -> dict[str, Any] | None:  # fmt: skip
        metrics = self.evaluate(val)
        record = {**metrics, "step": float(s.step), "epoch": float(s.epoch + 1)}
        s.evaluations.append(record)
        self._emit(record)
        if metrics["score"] > s.best_score:
            s.best_score, s.best_epoch, s.best_step = metrics["score"], s.epoch + 1, s.step
            s.best_eval = len(s.evaluations)
            if best is not None:
                best = copy.deepcopy(self.model.state_dict())
        return best

    def _stop_reason(self, s: _State, total: int, epoch_end: bool) -> str:
        cfg = self.cfg
        stale = len(s.evaluations) - s.best_eval
        if cfg.patience is not None and stale >= cfg.patience:
            return "patience"
        if epoch_end and s.step >= total:  # the budget (not the last epoch) ended it
            return "steps" if s.epochs_run < cfg.epochs else "epochs"
        if cfg.max_seconds is not None and time.perf_counter() - self._t0 > cfg.max_seconds:
            return "time"
        return ""

    def _emit(self, record: dict[str, float]) -> None:
        if self.log is not None:
            self.log(record)

    def _train_loader(
        self, data: Dataset[Any]
    ) -> tuple[DataLoader[Any], _SkippableBatches, torch.Generator]:
        n = len(data)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("no training examples: the training set given to fit() is empty.")
        bs = min(self.cfg.batch_size, n)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        batches = _SkippableBatches(BatchSampler(RandomSampler(data, generator=gen), bs, n > bs))  # type: ignore[arg-type]
        workers = default_workers(self.cfg.num_workers)
        loader = DataLoader(data, batch_sampler=batches, generator=gen,
                            collate_fn=getattr(self.task, "collate", None),
                            **loader_kwargs(workers, persistent=True))  # fmt: skip
        return loader, batches, gen

    def eval_loader(self, data: Dataset[Any]) -> DataLoader[Any]:
        """Batches of ``data`` in order, as evaluation reads them."""
        return DataLoader(data, batch_size=self.cfg.eval_batch_size,
                          collate_fn=getattr(self.task, "collate", None),
                          **loader_kwargs(default_workers(self.cfg.num_workers)))  # fmt: skip

    def _checkpoint_path(self) -> Path:
        if self.cfg.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir: the folder of last.pt.")
        return Path(self.cfg.checkpoint_dir) / LAST

    def _save(self, s: _State, best: dict[str, Any] | None) -> None:
        save_atomic({
            "kind": "supervised", "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "state": asdict(s), "best_model": best, "epoch_rng": self._epoch_rng,
            "rng": capture_rng(), "elapsed": time.perf_counter() - self._t0,
        }, self._checkpoint_path())  # fmt: skip

    def _resume(self, s: _State, best: dict[str, Any] | None
                ) -> tuple[_State, dict[str, Any] | None, int | None]:  # fmt: skip
        """The saved state when checkpoint_dir holds one, else ``s`` and ``best`` unchanged."""
        path = self._checkpoint_path()
        if not path.is_file():
            return s, best, None
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
        except Exception as err:
            raise ValueError(f"cannot resume from {str(path)!r}: {err}. Is it a checkpoint of "
                             "this task and model? Delete it to start afresh.") from None  # fmt: skip
        if self.scaler is not None and ck["scaler"] is not None:
            self.scaler.load_state_dict(ck["scaler"])
        s = _State(**ck["state"])
        self._epoch_rng = ck["epoch_rng"]
        restore_rng(ck["rng"])
        self._t0 = time.perf_counter() - float(ck["elapsed"])
        return s, ck["best_model"] if best is not None else None, s.step
