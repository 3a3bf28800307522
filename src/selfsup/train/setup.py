"""Setting up a pretraining run: device, precision, data, optimiser, distribution, monitors
and, when resuming, the state the run stopped in."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from selfsup import dist
from selfsup.config import Config, ConfigError
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
from selfsup.data.shards import ShardLoader, ShardSource, ShardStream
from selfsup.methods.base import Method
from selfsup.modules.sync_batchnorm import convert_sync_batchnorm
from selfsup.runtime import resolve_device, resolve_precision
from selfsup.train import checkpoint as ckpt_io
from selfsup.train import distributed, fsdp
from selfsup.train.budget import augment_on_device, budget
from selfsup.train.monitors import FirstCall, OnlineProbe
from selfsup.train.optim import build_optimizer, scaled_lr
from selfsup.train.state import TrainState
from selfsup.transforms.batched import BatchedViews
from selfsup.transforms.views import ClipViews


@dataclass
class Setup:
    """What the loop needs, resolved once. ``global_batch``: images per forward pass over all
    ranks; ``step_batch``: images per optimiser step (times ``accumulate``)."""

    device: torch.device
    precision: str
    image_size: int
    world: int
    rank: int
    accumulate: int
    global_batch: int
    step_batch: int
    source: ImageSource
    dataset: ImageDataset | ViewDataset | ShardStream
    batched: BatchedViews | None
    workers: int
    steps_per_epoch: int
    total_steps: int | None
    max_time: float | None
    base_lr: float
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ddp: DistributedDataParallel | None
    step_fn: Callable[..., Any]
    features_hook: FirstCall | None
    probe: OnlineProbe | None
    channels_last: bool
    # The FSDP root (train.strategy=fsdp on several ranks): its forward is the training step.
    sharded: nn.Module | None = None

    @property
    def on_device(self) -> bool:
        return self.batched is not None

    @property
    def mem_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def _device(cfg: Config) -> tuple[torch.device, str]:
    device = resolve_device(cfg.train.device)
    if dist.world_size() > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return device, resolve_precision(cfg.train.precision, device)


def _check_batch(cfg: Config, method: Method, n: int, step_batch: int) -> None:
    t = cfg.train
    if t.accumulate > 1 and method.batch_coupled and not t.force_accumulate:
        raise ConfigError(
            f"train.accumulate={t.accumulate} cannot emulate a larger batch for "
            f"{cfg.method.name}: its loss couples the samples of a batch (in-batch negatives "
            "or BatchNorm statistics), so accumulated small batches train differently. Use "
            "a larger train.batch_size (or more processes), or set "
            "train.force_accumulate=true to accept the difference."
        )
    if t.drop_last and n < step_batch:
        raise ConfigError(
            f"the data set has {n} images (times data.repeat), fewer than one batch of "
            f"{step_batch}; lower train.batch_size (--batch-size), raise data.repeat (each "
            "image that many times an epoch, with its own crops) or add images."
        )


def _data(
    cfg: Config, method: Method, source: ImageSource, device: torch.device, progress: bool
) -> tuple[ImageSource, ImageDataset | ViewDataset | ShardStream, BatchedViews | None, int]:
    """The (possibly cached) source, its dataset, the batched augmentation when views are
    made on the device, and the number of loader workers."""
    assert cfg.data.image_size is not None
    channels = cfg.backbone.in_chans
    transform = method.default_transform(cfg.data.image_size, cfg.data.mean, cfg.data.std, channels)
    video = hasattr(source, "load_views")
    if video and (cfg.data.augment == "device" or cfg.data.cache):
        raise ConfigError(
            "a folder of videos is augmented per sample on the CPU (each view from its own "
            "frame) and is not cached: set data.augment to auto or cpu and data.cache to null."
        )
    if method.needs_video and not video:
        raise ConfigError(
            f"{method.name} learns from clips: point data.path at a folder of videos (mp4, avi, "
            f"webm, mkv or frame folders), not {source.name}."
        )
    clip_backbone = bool(getattr(method.backbone, "is_video", False))
    if clip_backbone and not video:
        raise ConfigError(
            f"{cfg.backbone.name} learns from clips: point data.path at a folder of videos "
            f"(mp4, avi, webm, mkv or frame folders), not {source.name}; or use an image "
            "backbone (resnet18)."
        )
    if cfg.data.progressive_start is not None and (
        video or hasattr(method.backbone, "forward_tokens")
    ):
        raise ConfigError(
            "data.progressive_start resizes the image views of convolutional backbones; "
            f"{'clips' if video else cfg.backbone.name + ' (a ViT: a fixed patch grid)'} are "
            "trained at full size. Set data.progressive_start to null."
        )
    clip_views = clip_backbone and not method.needs_video
    if cfg.data.clip_motion and not clip_views:
        raise ConfigError(
            f"data.clip_motion ({cfg.data.clip_motion}) makes views of clips for an image method "
            f"on a video backbone (video_resnet18); {method.name} on {cfg.backbone.name} makes "
            "no clip views: set data.clip_motion to []."
        )
    if len(cfg.data.clip_motion) > len(transform.transforms):
        raise ConfigError(
            f"data.clip_motion ({cfg.data.clip_motion}) holds one chance a view; {method.name} "
            f"makes {len(transform.transforms)} views: give at most that many."
        )
    if clip_views:
        # An image method on a video backbone: each of its views becomes a clip.
        frames = int(getattr(method.backbone, "frames"))  # noqa: B009
        transform = ClipViews(transform, frames, cfg.data.clip_stride, cfg.data.clip_motion)
    on_device = not video and augment_on_device(cfg.data.augment, device, transform.specs)
    workers = default_workers(cfg.data.num_workers)
    cap = BatchedViews(transform.specs).decode_cap() if transform.specs else 0
    if isinstance(source, ShardSource):
        stream = _shard_stream(cfg, source, None if on_device else transform, cap)
        batched = BatchedViews(transform.specs) if on_device and transform.specs else None
        return source, stream, batched, workers
    if cfg.data.cache:
        # The first process of each machine builds the cache (the folder may be local
        # or shared) while the others wait for it on the file system.
        main_rank = int(os.environ.get("LOCAL_RANK", dist.rank())) == 0
        source = open_cache(source, cfg.data.cache, channels, cap, workers,
                            progress=progress and main_rank, build=main_rank)  # fmt: skip
    if on_device:
        assert transform.specs is not None
        return (
            source,
            ImageDataset(source, channels, cfg.data.bad_files, cap),
            (BatchedViews(transform.specs)),
            workers,
        )
    return source, ViewDataset(source, transform, channels, cfg.data.bad_files), None, workers


def _shard_stream(cfg: Config, source: ShardSource, transform: Any, cap: int) -> ShardStream:
    """The stream of ``source``'s shards for this rank (see :mod:`selfsup.data.shards`)."""
    if cfg.data.cache:
        raise ConfigError("shards are streamed, not cached: set data.cache to null.")
    t, world = cfg.train, dist.world_size()
    return ShardStream(
        source, t.batch_size, t.batch_size * world * t.accumulate, t.seed, dist.rank(), world,
        t.drop_last, cfg.data.repeat, cfg.backbone.in_chans, cfg.data.bad_files, cap, transform,
        cfg.data.shuffle_buffer,
    )  # fmt: skip


def prepare(cfg: Config, method: Method, source: ImageSource, progress: bool) -> Setup:
    """Move ``method`` to its device, build data, optimiser and DDP wrapper for ``cfg``."""
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    # Each rank has its own random stream (e.g. different MAE masks on each rank).
    torch.manual_seed(t.seed + dist.rank())
    device, precision = _device(cfg)
    if cfg.data.image_size is None:
        raise ConfigError("data.image_size must be resolved before training")
    world, rank = dist.world_size(), dist.rank()
    global_batch = t.batch_size * world
    step_batch = global_batch * t.accumulate
    n = len(source) * cfg.data.repeat
    _check_batch(cfg, method, n, step_batch)

    method.to(device)
    if world > 1 and method.needs_sync_batchnorm:
        # The loss depends on batch statistics: make them those of the global batch.
        convert_sync_batchnorm(method, device)
    if t.channels_last:
        method.to(memory_format=torch.channels_last)
    source, dataset, batched, workers = _data(cfg, method, source, device, progress)
    sizing = EpochSampler(len(source), step_batch, t.seed, 0, drop_last=t.drop_last,
                          repeat=cfg.data.repeat)  # fmt: skip
    steps_per_epoch = sizing.epoch_length() // step_batch
    total_steps, max_time = budget(t, steps_per_epoch)
    base_lr = scaled_lr(cfg.optim, step_batch)
    if t.activation_checkpointing:
        fsdp.checkpoint_activations(method.trainable_modules())
    # Before the optimiser: sharding replaces the parameters with their shards.
    sharded = fsdp.shard(method, device, precision) if t.strategy == "fsdp" and world > 1 else None
    optimizer = build_optimizer(method.trainable_modules(), cfg.optim, base_lr)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if t.compile:
        method.compile()
    ddp = distributed.wrap(method, device) if world > 1 and sharded is None else None
    step_fn: Callable[..., Any] = (
        ddp if ddp is not None else sharded if sharded is not None else method.training_step
    )
    hook = FirstCall(method.backbone) if (cfg.monitor.probe or cfg.monitor.collapse) else None
    probe: OnlineProbe | None = None
    if cfg.monitor.probe and source.labels is not None and max(source.labels) >= 0:
        probe = OnlineProbe(method.backbone.embed_dim, max(source.labels) + 1).to(device)
    return Setup(
        device=device, precision=precision, image_size=cfg.data.image_size, world=world,
        rank=rank, accumulate=t.accumulate, global_batch=global_batch, step_batch=step_batch,
        source=source, dataset=dataset, batched=batched, workers=workers,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps, max_time=max_time,
        base_lr=base_lr, optimizer=optimizer, scaler=scaler, ddp=ddp,
        step_fn=step_fn, features_hook=hook, probe=probe, channels_last=t.channels_last,
        sharded=sharded,
    )  # fmt: skip


def restore(
    s: Setup, method: Method, resume: dict[str, Any], ckpt_dir: Path | None = None
) -> TrainState:
    """Load a checkpoint's weights, optimiser, random state and probe; its TrainState.
    ``ckpt_dir``: where the ``.dcp`` folders of a run saved with train.strategy=fsdp are."""
    if resume.get("sharded") is not None:  # any strategy and world size can read it
        if ckpt_dir is None:
            raise ckpt_io.CheckpointError("a sharded (fsdp) checkpoint needs its run folder")
        fsdp.load(ckpt_dir, method, s.optimizer, resume["sharded"]["step"])
    elif s.sharded is not None:
        raise ckpt_io.CheckpointError(
            "this run was saved with train.strategy=ddp (one file of full tensors); resume "
            "it with train.strategy=ddp, or start a new run with fsdp from its weights."
        )
    else:
        method.load_state_dict(resume["method"])
        s.optimizer.load_state_dict(resume["optimizer"])
    if s.scaler is not None and resume.get("scaler"):
        s.scaler.load_state_dict(resume["scaler"])
    state = TrainState(**resume["state"])
    state.finished = False
    rngs = resume.get("rng_ranks")
    if rngs is not None and len(rngs) == s.world:
        ckpt_io.restore_rng(rngs[s.rank])
    else:
        ckpt_io.restore_rng(resume["rng"])
    if s.probe is not None and resume.get("probe"):
        s.probe.load_full_state(resume["probe"])
    return state


def loader(
    s: Setup, cfg: Config, state: TrainState
) -> tuple[EpochSampler | ShardLoader, DataLoader[Any] | ShardLoader]:
    """This rank's sampler (starting where ``state`` stands) and the data loader over it."""
    t = cfg.train
    if isinstance(s.dataset, ShardStream):  # one object: a stream is its own sampler
        state.data_layout = s.dataset.check_layout(state.data_layout, state.epoch_pos, s.workers)
        shards = ShardLoader(s.dataset, t.batch_size, s.workers,
                             collate_canvas if s.on_device else collate_views,
                             s.device.type == "cuda")  # fmt: skip
        return shards, shards
    sampler = EpochSampler(
        len(s.source), s.step_batch, t.seed, state.epoch, start=state.epoch_pos,
        rank=s.rank, world=s.world, drop_last=t.drop_last, repeat=cfg.data.repeat,
    )  # fmt: skip
    data = DataLoader(
        s.dataset, batch_size=t.batch_size, sampler=sampler,
        collate_fn=collate_canvas if s.on_device else collate_views,
        pin_memory=s.device.type == "cuda",
        # Its own generator: a loader draws a base seed from the global random state at each
        # new iterator (every epoch without workers, once with persistent ones), and the
        # global state is the method's (MAE / VideoMAE masks, drop path). Kept apart, those
        # draws are the same whatever the number of workers, and a resume repeats them.
        generator=torch.Generator().manual_seed(t.seed + s.rank),
        **loader_kwargs(s.workers, persistent=True),
    )  # fmt: skip
    return sampler, data


def header(cfg: Config, s: Setup) -> str:
    """The line printed when training starts: what runs, where, and for how long."""
    text = (
        f"selfsup {cfg.method.name} | backbone {cfg.backbone.name} | {len(s.source)} "
        f"{'videos' if hasattr(s.source, 'load_views') else 'images'} at "
        f"{s.image_size}px | batch {s.step_batch}"
        + (f" ({s.accumulate} x {s.global_batch})" if s.accumulate > 1 else "")
        + f" | lr {s.base_lr:.4g} | {s.device} {s.precision}"
        f" | {s.workers} workers | augment on {'device' if s.on_device else 'cpu'}"
    )
    parts = []
    if s.total_steps:
        parts.append(f"{s.total_steps} steps ({s.steps_per_epoch}/epoch)")
    if s.max_time:
        parts.append(f"{s.max_time:.0f}s")
    return text + " | budget " + " or ".join(parts)
