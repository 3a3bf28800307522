"""The Trainer: the one place that owns devices, precision, data loading, the optimiser,
schedules, checkpoints, logging, monitors and progress. Methods stay pure modules.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from selfsup import __version__, dist, schedules
from selfsup.config import Config, ConfigError, MonitorConfig, parse_duration, to_dict, to_yaml
from selfsup.data import (
    EpochSampler,
    ImageDataset,
    ImageSource,
    ViewDataset,
    collate_canvas,
    collate_views,
    default_workers,
    loader_kwargs,
)
from selfsup.data.cache import open_cache
from selfsup.eval.features import autocast, extract_features
from selfsup.eval.knn import knn_classify
from selfsup.methods.base import Method, StepInfo
from selfsup.modules.sync_batchnorm import convert_sync_batchnorm
from selfsup.train import checkpoint as ckpt_io
from selfsup.train import distributed
from selfsup.train.logger import MetricsLogger
from selfsup.train.monitors import (
    CAUSES,
    FirstCall,
    OnlineProbe,
    collapse_stats,
    loss_stuck,
)
from selfsup.train.optim import build_optimizer, scaled_lr
from selfsup.transforms.batched import BatchedViews

# Consecutive non-finite losses tolerated (each skipped) before training stops.
MAX_BAD_STEPS = 5


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is visible; use device=cpu.")
    return dev


def cpu_has_fast_bf16() -> bool:
    """AVX-512 bf16 or AMX: bf16 matrix products run 2-4x faster than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("train.precision=fp16 needs a GPU; on CPU use bf16 or fp32.")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / (2**20 if sys.platform == "darwin" else 2**10)


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    # Global samples already consumed in the current epoch (where a resumed run restarts).
    epoch_pos: int = 0
    images_seen: int = 0
    # Seconds spent training (monitors and checkpoints excluded); time budgets count these.
    elapsed: float = 0.0
    skipped_steps: int = 0
    finished: bool = False


@dataclass
class FitResult:
    out_dir: Path | None
    state: TrainState
    stopped_by: str
    images_per_s: float
    peak_memory_mb: float
    final_loss: float | None
    monitor: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir) if self.out_dir else None
        return d


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
            channels_last=channels_last, num_workers=self.num_workers,
        )  # fmt: skip
        fb, lb = extract_features(model, self.bank, **kw)
        fq, lq = extract_features(model, self.queries, **kw)
        res = knn_classify(fb, lb, fq, lq, k=self.cfg.k, temperature=self.cfg.temperature)
        return {"knn_top1": res.top1, "knn_top5": res.top5}


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
        self._stop_signal: str | None = None

    # ------------------------------------------------------------------ budget helpers

    @staticmethod
    def _augment_on_device(choice: str, device: torch.device, specs: object) -> bool:
        """Resolve data.augment: batched augmentation needs the method's views as specs."""
        if choice == "cpu":
            return False
        if specs is None:
            if choice == "device":
                raise ConfigError(
                    "data.augment=device: this method's augmentation is not built from view "
                    "specs (selfsup.transforms.ViewSpec), so it can only run per image; use "
                    "data.augment=cpu."
                )
            return False
        return choice == "device" or device.type == "cuda"

    def _budget(self, steps_per_epoch: int) -> tuple[int | None, float | None]:
        t = self.cfg.train
        totals = []
        epochs = t.epochs
        if epochs is None and t.steps is None and t.max_time is None:
            epochs = 100
        if epochs is not None:
            totals.append(epochs * steps_per_epoch)
        if t.steps is not None:
            totals.append(t.steps)
        max_time = parse_duration(t.max_time) if t.max_time is not None else None
        return (min(totals) if totals else None), max_time

    @staticmethod
    def _progress(state: TrainState, total_steps: int | None, max_time: float | None) -> float:
        p = 0.0
        if total_steps:
            p = max(p, state.step / total_steps)
        if max_time:
            p = max(p, state.elapsed / max_time)
        return min(p, 1.0)

    # ------------------------------------------------------------------ signals

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop_signal is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name
            tqdm.write(
                f"received {self._stop_signal}: finishing this step, saving a checkpoint, "
                "then stopping (resume with --resume)."
            )

        old: dict[int, Any] = {}
        try:
            for s in (int(signal.SIGINT), int(signal.SIGTERM)):
                old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
            pass
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ fit

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
        cfg, t = self.cfg, self.cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        # Each rank has its own random stream (e.g. different MAE masks on each rank).
        torch.manual_seed(t.seed + dist.rank())
        device = resolve_device(t.device)
        if dist.world_size() > 1 and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        precision = resolve_precision(t.precision, device)
        image_size = cfg.data.image_size
        if image_size is None:
            raise ConfigError("data.image_size must be resolved before training")
        channels = cfg.backbone.in_chans
        world, rank = dist.world_size(), dist.rank()
        accumulate = t.accumulate
        if accumulate > 1 and method.batch_coupled and not t.force_accumulate:
            raise ConfigError(
                f"train.accumulate={accumulate} cannot emulate a larger batch for "
                f"{cfg.method.name}: its loss couples the samples of a batch (in-batch negatives "
                "or BatchNorm statistics), so accumulated small batches train differently. Use "
                "a larger train.batch_size (or more processes), or set "
                "train.force_accumulate=true to accept the difference."
            )
        global_batch = t.batch_size * world  # images per forward pass, over all ranks
        step_batch = global_batch * accumulate  # images per optimiser step
        n = len(source)
        if t.drop_last and n < step_batch:
            raise ConfigError(
                f"the data set has {n} images, fewer than one batch of {step_batch}; lower "
                "train.batch_size (--batch-size) or add images."
            )

        method.to(device)
        if world > 1 and method.needs_sync_batchnorm:
            # The loss depends on batch statistics: make them those of the global batch.
            convert_sync_batchnorm(method, device)
        if t.channels_last:
            method.to(memory_format=torch.channels_last)
        transform = method.default_transform(image_size, cfg.data.mean, cfg.data.std, channels)
        on_device = self._augment_on_device(cfg.data.augment, device, transform.specs)
        batched: BatchedViews | None = None
        dataset: ImageDataset | ViewDataset
        workers = default_workers(cfg.data.num_workers)
        cap = BatchedViews(transform.specs).decode_cap() if transform.specs else 0
        if cfg.data.cache:
            # The first process of each machine builds the cache (the folder may be local
            # or shared) while the others wait for it on the file system.
            main_rank = int(os.environ.get("LOCAL_RANK", rank)) == 0
            source = open_cache(source, cfg.data.cache, channels, cap, workers,
                                progress=self.progress and main_rank, build=main_rank)  # fmt: skip
        if on_device:
            assert transform.specs is not None
            batched = BatchedViews(transform.specs)
            dataset = ImageDataset(source, channels, cfg.data.bad_files, cap)
        else:
            dataset = ViewDataset(source, transform, channels, cfg.data.bad_files)
        sizing = EpochSampler(n, step_batch, t.seed, 0, drop_last=t.drop_last)
        steps_per_epoch = sizing.epoch_length() // step_batch
        total_steps, max_time = self._budget(steps_per_epoch)
        base_lr = scaled_lr(cfg.optim, step_batch)
        mem_format = torch.channels_last if t.channels_last else torch.contiguous_format
        optimizer = build_optimizer(method.trainable_modules(), cfg.optim, base_lr)
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        if t.compile:
            method.compile()
        ddp: DistributedDataParallel | None = (
            distributed.wrap(method, device) if world > 1 else None
        )
        step_fn: Callable[..., Any] = ddp if ddp is not None else method.training_step

        features_hook = (
            FirstCall(method.backbone) if (cfg.monitor.probe or cfg.monitor.collapse) else None
        )
        probe: OnlineProbe | None = None
        if cfg.monitor.probe and source.labels is not None and max(source.labels) >= 0:
            n_classes = max(source.labels) + 1
            probe = OnlineProbe(method.backbone.embed_dim, n_classes).to(device)
        state = TrainState()
        if resume is not None:
            method.load_state_dict(resume["method"])
            optimizer.load_state_dict(resume["optimizer"])
            if scaler is not None and resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
            state = TrainState(**resume["state"])
            state.finished = False
            rngs = resume.get("rng_ranks")
            if rngs is not None and len(rngs) == world:
                ckpt_io.restore_rng(rngs[rank])
            else:
                ckpt_io.restore_rng(resume["rng"])
            if probe is not None and resume.get("probe"):
                probe.load_full_state(resume["probe"])

        main = dist.is_main()
        out = self.out_dir
        logger = None
        if main and out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(to_yaml(cfg))
            logger = MetricsLogger(
                out, resume_step=state.step if resume else None, tensorboard=self.tensorboard
            )

        def save() -> None:
            # Every rank calls save() at the same steps (decisions are synchronised), so the
            # random states of all ranks can be gathered into rank 0's checkpoint.
            rng_ranks = distributed.gather_objects(ckpt_io.capture_rng()) if world > 1 else None
            if not main or out is None:
                return
            obj = {
                "format": ckpt_io.FORMAT,
                "version": __version__,
                "config": to_dict(cfg),
                "method": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "state": asdict(state),
                "rng": ckpt_io.capture_rng(),
                "rng_ranks": rng_ranks,
                "probe": probe.full_state() if probe is not None else None,
            }
            ckpt_io.save_atomic(obj, out / ckpt_io.CHECKPOINT_DIR / ckpt_io.LAST)

        monitor_results: dict[str, float] = {}
        wants_pictures = type(method).visualize is not Method.visualize and main and out is not None
        fixed_batch = _fixed_batch(source, image_size, cfg, channels) if wants_pictures else None

        def save_pictures() -> None:
            if fixed_batch is None or out is None:
                return
            was = method.training
            method.eval()
            try:
                x = fixed_batch.to(device)
                if t.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, precision):
                    grids = method.visualize(x)
            finally:
                method.train(was)
            _save_grids(grids, out / "figures", state.step, cfg.data.mean, cfg.data.std, len(x))

        def run_monitor() -> None:
            if monitor is None or not main:
                return
            res = monitor(
                method.feature_extractor(), image_size, cfg.data.mean, cfg.data.std, channels,
                device, precision, t.channels_last,
            )  # fmt: skip
            monitor_results.update(res)
            msg = f"epoch {state.epoch} step {state.step}: kNN top-1 {res['knn_top1']:.2f}%"
            tqdm.write(msg + f" (top-5 {res['knn_top5']:.2f}%)")
            if logger is not None:
                logger.log({"step": state.step, "epoch": state.epoch,
                            "images": state.images_seen, "elapsed_s": state.elapsed, **res})  # fmt: skip

        header = (
            f"selfsup {cfg.method.name} | backbone {cfg.backbone.name} | {n} images at "
            f"{image_size}px | batch {step_batch}"
            + (f" ({accumulate} x {global_batch})" if accumulate > 1 else "")
            + f" | lr {base_lr:.4g} | {device} {precision}"
            f" | {workers} workers | augment on {'device' if on_device else 'cpu'}"
        )
        budget = []
        if total_steps:
            budget.append(f"{total_steps} steps ({steps_per_epoch}/epoch)")
        if max_time:
            budget.append(f"{max_time:.0f}s")
        if main:
            tqdm.write(header + " | budget " + " or ".join(budget))

        bar = tqdm(
            total=total_steps or None, initial=state.step, disable=not (self.progress and main),
            unit="step", dynamic_ncols=True, desc=cfg.method.name,
            # In a log file (not a terminal) a line every 30 s, not every step.
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )  # fmt: skip
        window: dict[str, float] = {}
        window_n = 0
        window_images = 0
        window_time = 0.0
        window_wait = 0.0
        last_loss: float | None = None
        bad_run = 0
        skipped_files = 0
        probe_n = 0
        last_features: torch.Tensor | None = None
        collapse_warned_at = -(10**9)
        chance = method.chance_loss(global_batch)
        stopped_by = "budget"
        next_ckpt = state.elapsed + parse_duration(t.checkpoint_every)
        skipped_file = out / "skipped.txt" if (out is not None and main) else None
        run_t0 = time.perf_counter()
        images_at_start = state.images_seen
        train_time_at_start = state.elapsed

        def done() -> bool:
            return self._progress(state, total_steps, max_time) >= 1.0

        try:
            with self._signals():
                sampler = EpochSampler(
                    n, step_batch, t.seed, state.epoch, start=state.epoch_pos,
                    rank=rank, world=world, drop_last=t.drop_last,
                )  # fmt: skip
                loader = DataLoader(
                    dataset, batch_size=t.batch_size, sampler=sampler,
                    collate_fn=collate_canvas if on_device else collate_views,
                    pin_memory=device.type == "cuda",
                    **loader_kwargs(workers, persistent=True),
                )  # fmt: skip
                epoch_length = sampler.epoch_length()
                while not done() and stopped_by == "budget":
                    sampler.epoch, sampler.start = state.epoch, state.epoch_pos
                    it = iter(loader)
                    tick = step_start = time.perf_counter()
                    while True:
                        p = self._progress(state, total_steps, max_time)
                        info = StepInfo(step=state.step, progress=p, epoch=state.epoch)
                        lr = base_lr * schedules.warmup_cosine(
                            p, 1.0, peak=1.0, warmup=cfg.optim.warmup, end=cfg.optim.min_lr
                        )
                        for g in optimizer.param_groups:
                            g["lr"] = lr
                        # One optimiser step = `accumulate` micro-batches (usually one).
                        step_losses: list[float] = []
                        step_logs: list[dict[str, torch.Tensor]] = []
                        exhausted = False
                        for _micro in range(accumulate):
                            try:
                                batch = next(it)
                            except StopIteration:
                                exhausted = True
                                break
                            # Data wait: time blocked on the loader only. Batched augmentation
                            # below is device work and counts with the step.
                            window_wait += time.perf_counter() - tick
                            if batched is not None:
                                # Each sample's views come from its own seed (run, epoch,
                                # position): independent of workers, ranks and resuming.
                                canvas, sizes, seeds, labels, skipped = batch
                                with torch.no_grad():
                                    views = batched(
                                        canvas.to(device, non_blocking=True), sizes, seeds
                                    )
                            else:
                                views, labels, skipped = batch
                            skipped_files += len(skipped)
                            if skipped and skipped_file is not None:
                                with open(skipped_file, "a") as f:
                                    f.write("".join(s + "\n" for s in skipped))
                            views = [
                                v.to(device, non_blocking=True).contiguous(memory_format=mem_format)
                                for v in views
                            ]
                            if features_hook is not None:
                                features_hook.reset()
                            last_micro = _micro == accumulate - 1

                            def grad_sync(
                                last_micro: bool = last_micro,
                            ) -> contextlib.AbstractContextManager[Any]:
                                # Reduce gradients across ranks only on the last micro-batch.
                                if ddp is not None and not last_micro:
                                    return ddp.no_sync()
                                return contextlib.nullcontext()

                            with grad_sync(), autocast(device, precision):
                                loss, logs = step_fn(views, info)
                            feats = features_hook.value if features_hook is not None else None
                            if feats is not None:
                                feats = feats[: views[0].shape[0]]
                                if probe is not None:
                                    acc = probe.step(feats, labels)
                                    if acc is not None:
                                        window["probe_acc"] = window.get("probe_acc", 0.0) + acc
                                        probe_n += 1
                                last_features = feats
                            step_losses.append(float(loss.detach()))
                            step_logs.append(logs)
                            finite = math.isfinite(step_losses[-1])
                            if world > 1:  # every rank must skip, or none (DDP reduces together)
                                finite = bool(dist.all_reduce_min(torch.tensor(float(finite))) > 0)
                                if not finite:
                                    step_losses[-1] = float("nan")
                            if not finite:
                                continue  # the whole step is skipped below
                            scaled = loss / accumulate if accumulate > 1 else loss
                            with grad_sync():
                                if scaler is not None:
                                    scaler.scale(scaled).backward()
                                else:
                                    scaled.backward()
                            del loss, scaled
                            tick = time.perf_counter()
                        if exhausted:
                            optimizer.zero_grad(set_to_none=True)
                            break
                        loss_f = sum(step_losses) / len(step_losses)
                        if not math.isfinite(loss_f):
                            optimizer.zero_grad(set_to_none=True)
                            state.skipped_steps += 1
                            bad_run += 1
                            tqdm.write(
                                f"step {state.step}: loss is {loss_f}; step skipped "
                                f"({bad_run}/{MAX_BAD_STEPS} in a row)."
                            )
                            if bad_run >= MAX_BAD_STEPS:
                                raise TrainingError(
                                    f"the loss was not finite for {bad_run} steps in a row "
                                    f"(step {state.step}). Likely causes: a learning rate too "
                                    f"high for this batch size (optim.lr={cfg.optim.lr}), fp16 "
                                    "overflow (use precision=bf16 or fp32), or a temperature "
                                    "too low. The last checkpoint holds the last finite weights."
                                )
                        else:
                            bad_run = 0
                            if scaler is not None:
                                scaler.unscale_(optimizer)
                            method.on_after_backward(info)
                            if cfg.optim.grad_clip:
                                params = [
                                    q for m in method.trainable_modules() for q in m.parameters()
                                ]
                                nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                            if scaler is not None:
                                scaler.step(optimizer)
                                scaler.update()
                            else:
                                optimizer.step()
                            optimizer.zero_grad(set_to_none=True)
                            method.on_step_end(info)
                            last_loss = loss_f
                            for logs in step_logs:
                                for k, v in logs.items():
                                    window[k] = window.get(k, 0.0) + float(v) / accumulate
                            window_n += 1
                        state.step += 1
                        state.epoch_pos += step_batch
                        state.images_seen += step_batch
                        now = time.perf_counter()
                        state.elapsed += now - step_start
                        if world > 1:
                            # One clock and one stop decision for all ranks (rank 0's view is
                            # not special: the slowest rank sets the pace anyway).
                            shared = dist.all_reduce_max(
                                torch.tensor([state.elapsed, float(self._stop_signal is not None)])
                            )
                            state.elapsed = float(shared[0])
                            if shared[1] > 0 and self._stop_signal is None:
                                self._stop_signal = "SIGTERM (another rank)"
                        window_time += now - step_start
                        window_images += step_batch
                        tick = step_start = now

                        if state.step % t.log_every == 0 or done():
                            ips = window_images / max(window_time, 1e-9)
                            row: dict[str, Any] = {
                                "step": state.step, "epoch": state.epoch,
                                "images": state.images_seen, "elapsed_s": state.elapsed,
                                "lr": lr, "img_per_s": ips,
                                "data_wait": window_wait / max(window_time, 1e-9),
                            }  # fmt: skip
                            probe_sum = window.pop("probe_acc", None)
                            if world > 1 and window:
                                # The loss and its terms over the global batch, not rank 0's
                                # share of it (every rank logs the same keys at this step).
                                keys = sorted(window)
                                means = dist.all_reduce_mean(
                                    torch.tensor([window[k] for k in keys], dtype=torch.float64)
                                )
                                window = dict(zip(keys, means.tolist(), strict=True))
                            row.update({k: v / max(window_n, 1) for k, v in window.items()})
                            if probe_sum is not None and probe_n:
                                row["probe_acc"] = probe_sum / probe_n
                            health = ""
                            if cfg.monitor.collapse and last_features is not None:
                                cs = collapse_stats(last_features)
                                row["std_ratio"], row["rankme"] = cs.std_ratio, cs.rankme
                                reason = cs.reason if cs.collapsed else ""
                                if loss_stuck(row.get("loss", float("nan")), chance, p, state.step):
                                    reason = (reason + "; " if reason else "") + (
                                        f"loss {row['loss']:.3f} stuck at chance level {chance:.3f}"
                                    )
                                row["collapse"] = int(bool(reason))
                                if reason:
                                    health = "COLLAPSE?"
                                    if state.step - collapse_warned_at >= 10 * t.log_every:
                                        collapse_warned_at = state.step
                                        tqdm.write(
                                            f"warning: step {state.step}: the representation may "
                                            f"be collapsing ({reason}); {CAUSES}."
                                        )
                            if logger is not None:
                                logger.log(row)
                            post = {"loss": f"{row.get('loss', float('nan')):.4f}",
                                    "img/s": f"{ips:.1f}", "data": f"{row['data_wait']:.0%}",
                                    "lr": f"{lr:.3g}", "ep": state.epoch}  # fmt: skip
                            if state.skipped_steps:
                                post["skipped steps"] = state.skipped_steps
                            if skipped_files:
                                post["bad files"] = skipped_files
                            if "probe_acc" in row:
                                post["probe"] = f"{row['probe_acc']:.1f}%"
                            if health:
                                post["health"] = health
                            bar.set_postfix(post, refresh=False)
                            window, window_n, window_images, probe_n = {}, 0, 0, 0
                            window_time = window_wait = 0.0
                        if not total_steps and max_time and state.elapsed > 0:
                            bar.total = max(state.step, int(state.step * max_time / state.elapsed))
                        bar.update(1)

                        if self._stop_signal is not None:
                            stopped_by = f"signal {self._stop_signal}"
                            break
                        if stop_at_step is not None and state.step >= stop_at_step:
                            stopped_by = "stop_at_step"
                            break
                        if done():
                            break
                        if state.elapsed >= next_ckpt:
                            save()
                            next_ckpt = state.elapsed + parse_duration(t.checkpoint_every)
                            tick = step_start = time.perf_counter()
                    del it
                    epoch_end = state.epoch_pos >= epoch_length
                    if epoch_end:
                        state.epoch += 1
                        state.epoch_pos = 0
                    if stopped_by != "budget":
                        break
                    if epoch_end and not done():
                        save()
                        save_pictures()
                        if state.epoch % max(1, cfg.monitor.every_epochs) == 0:
                            run_monitor()
                state.finished = done()
                save()
                if state.finished:
                    save_pictures()
                    run_monitor()
        finally:
            bar.close()
            if features_hook is not None:
                features_hook.remove()
            if logger is not None:
                logger.close()

        wall = time.perf_counter() - run_t0
        trained = state.elapsed - train_time_at_start
        result = FitResult(
            out_dir=out,
            state=state,
            stopped_by=stopped_by if not state.finished else "budget",
            images_per_s=(state.images_seen - images_at_start) / max(trained, 1e-9),
            peak_memory_mb=peak_memory_mb(device),
            final_loss=last_loss,
            monitor=monitor_results,
            precision=precision,
            device=str(device),
        )
        if main and out is not None:
            summary = result.as_dict() | {"wall_s": wall, "config": to_dict(cfg)}
            (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return result


def _fixed_batch(
    source: ImageSource, image_size: int, cfg: Config, channels: int, n: int = 8
) -> torch.Tensor:
    """The same few evaluation-transformed images at every epoch (for pictures)."""
    from selfsup.data import EvalDataset
    from selfsup.transforms import eval_transform

    ds = EvalDataset(source, eval_transform(image_size, cfg.data.mean, cfg.data.std), image_size,
                     channels, "skip")  # fmt: skip
    n = min(n, len(source))
    step = max(1, len(source) // n)
    return torch.stack([ds[i * step][0] for i in range(n)])


def _save_grids(grids: dict[str, torch.Tensor], folder: Path, step: int, mean: list[float],
                std: list[float], per_row: int) -> None:  # fmt: skip
    from torchvision.utils import save_image

    folder.mkdir(parents=True, exist_ok=True)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    for name, imgs in grids.items():
        pix = (imgs.detach().float().cpu() * s + m).clamp(0, 1)
        save_image(pix, folder / f"{name}_step{step}.png", nrow=per_row, padding=1)
