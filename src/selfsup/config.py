"""Typed configuration: the one home of defaults.

A run is described by :class:`Config`, a tree of dataclasses validated by OmegaConf
structured configs. Sources are merged in this order, later ones winning:

1. the dataclass defaults (and the chosen method's own ``Config`` dataclass),
2. a YAML file (``--config file.yaml``),
3. command-line shortcuts (``--epochs 3`` is ``train.epochs=3``),
4. dotted overrides (``optim.lr=0.3 method.temperature=0.2``).

Unknown keys and badly typed values raise :class:`ConfigError`, which names the key and
suggests the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.registry import get_method_class

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# The backbone of ViT-only methods (MAE, DINOv2) unless they name another.
DEFAULT_VIT = "timm:vit_tiny_patch16_224"


class ConfigError(ValueError):
    """A configuration problem, explained for the user."""


@dataclass
class MethodConfig:
    """Base of every method's config; each method subclasses it with its own fields."""

    name: str = "simclr"


@dataclass
class BackboneConfig:
    # torchvision ResNet name (resnet18, resnet50, wide_resnet50_2, ...) or "timm:<model>".
    name: str = "resnet18"
    # ResNet stem for small images (3x3 conv, stride 1, no max-pool). None: automatic, used
    # when images are 64 px or smaller (CIFAR, STL-10 at 64, MedMNIST).
    small_stem: bool | None = None
    # Input channels: 3 for colour; grayscale images are repeated to 3 unless this is 1.
    in_chans: int = 3
    # Optional local state-dict file to start from (never downloaded at run time).
    weights: str | None = None
    # Extra keyword arguments for timm.create_model (e.g. {patch_size: 4} for ViTs on 32 px).
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    # A folder of images (any depth; class sub-folders give labels for monitors and
    # evaluation, ignored by pretraining) or a named set: cifar10, cifar100, stl10.
    path: str | None = None
    # Where a named set lives or is downloaded to (an ImageFolder layout with
    # train/<class>/ is also accepted here).
    root: str | None = None
    # Allow torchvision to download a named set that is not found under `root`.
    download: bool = True
    # Training resolution in pixels. None: the median image size when it is 64 px or
    # less (CIFAR, MedMNIST), else 224.
    image_size: int | None = None
    # Per-channel normalisation: "given" uses mean/std below (ImageNet by default; for one
    # channel their average); "auto" measures the data (reusing a `selfsup data check`
    # report when there is one) and writes the values into the run's config. Use auto for
    # medical, satellite or any non-photographic images.
    normalize: str = "given"
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # Refuse images with more pixels than this (decompression-bomb guard).
    max_pixels: int = 178_956_970
    # Allow a training resolution above the images' own size (they are then upsampled,
    # which costs compute without adding detail; refused by default).
    allow_upscale: bool = False
    # Data-loading worker processes. -1: min(4, CPU cores). On a small CPU the model, not
    # the data, bounds the speed, so 2 workers suffice.
    num_workers: int = -1
    # Use at most this many images (a class-balanced, seeded subset) for quick experiments.
    limit: int | None = None
    # A folder of videos: each view of a sample is a frame of the same video, the frames at
    # most this many apart (time as augmentation; 0: every view from one frame).
    video_gap: int = 8
    # A video backbone (video_resnet18) learning by an image method: each view is a clip of
    # backbone.kwargs.frames frames this many frames apart (the clips' starts at most
    # video_gap apart). Evaluations of the run feed it clips at this stride too.
    clip_stride: int = 2
    # With such clips: the chance, view by view (first, second, ...), that a view's clip is
    # replaced by its frame differences after its augmentation (motion as a view: what
    # moves, without the still background and clothing; e.g. [0, 0.5]). Empty: never.
    clip_motion: list[float] = field(default_factory=list)
    # Each image appears this many times an epoch (each time with its own crops): for a
    # small pool of large images (20 fundus photographs, a few slides) whose random crops,
    # not the images, are the samples; an epoch then holds enough batches.
    repeat: int = 1
    # Unreadable images: skip (use another image, list them in skipped.txt) or fail.
    bad_files: str = "skip"
    # Where the augmentations run: "cpu" (one image at a time in the data-loading workers),
    # "device" (whole batches on the training device with per-sample random parameters;
    # workers only decode, and uint8 pixels travel to the device), or "auto" (device on a
    # GPU, where per-image work in a few CPU workers starves the GPU; cpu on a CPU).
    augment: str = "auto"
    # A folder for a decoded-image cache: each image is decoded once into one memory-mapped
    # uint8 file (shrunk to the largest size any crop needs), then read without decoding.
    # Worth it when decoding is slow (large JPEGs) and the raw pixels fit on disk; a new
    # cache is built when the data or the setting changes. Unset: decode every time.
    cache: str | None = None
    # Sharded data (--data 'shards/shard-{000000..000123}.tar'): samples each data worker
    # mixes in memory (raw bytes). Larger mixes better across shard boundaries, at the cost
    # of memory and start-up time; the epoch's shard order is reshuffled anyway.
    shuffle_buffer: int = 1000
    # Progressive resizing for short budgets: every view starts at this fraction of its size
    # (e.g. 0.5: 32 px views made 16 px, a quarter of the compute of a convolutional
    # network) and grows linearly to full size at `progressive_until` of the budget, in
    # steps of 4 px. More images in the same time; the full size at the end keeps training
    # and evaluation resolutions matched. None: off. Convolutional backbones only.
    progressive_start: float | None = None
    progressive_until: float = 0.75


@dataclass
class OptimConfig:
    # sgd (with Nesterov off), lars (SimCLR/BYOL at large batch) or adamw (ViTs).
    name: str = "sgd"
    # Learning rate for a batch of 256; the used value is lr * batch / 256 (see lr_scaling).
    lr: float = 0.06
    # How lr follows the batch size: linear (lr*B/256), sqrt (lr*sqrt(B/256)) or none.
    lr_scaling: str = "linear"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # LARS trust coefficient eta (0.001 in the LARS paper; CIFAR recipes often use 0.02).
    lars_eta: float = 0.001
    # Linear warm-up, as a fraction of the whole budget (0.05 = the first 5%).
    warmup: float = 0.0
    # Final learning rate as a fraction of the peak (cosine decay to it).
    min_lr: float = 0.0
    # Keep biases and normalisation weights free of weight decay (and LARS adaptation).
    exclude_bias_norm: bool = True
    # Clip the global gradient norm to this value (None: no clipping).
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    # Budgets: training stops at the first one reached; schedules follow it. With none
    # set, 100 epochs. max_time is a duration such as "90s", "10m", "1h30m".
    epochs: int | None = None
    steps: int | None = None
    max_time: str | None = None
    batch_size: int = 256
    # auto: bf16 autocast where the hardware runs it fast (CUDA with bf16, CPUs with
    # AVX-512 bf16 / AMX), else fp32. fp16 uses a gradient scaler (CUDA only).
    precision: str = "auto"
    # Channels-last memory layout: faster convolutions on CPU and tensor cores.
    channels_last: bool = True
    # auto, cpu, cuda, cuda:1, mps.
    device: str = "auto"
    seed: int = 0
    # torch.compile the training step's model (first steps are slow while it compiles).
    compile: bool = False
    # Write checkpoints/last.pt at least this often (also at every epoch end and at the end).
    checkpoint_every: str = "10m"
    # Log to metrics.csv and TensorBoard every this many steps.
    log_every: int = 10
    # Intra-op CPU threads (None: PyTorch's default, one per core).
    threads: int | None = None
    # Drop the last incomplete batch of each epoch (contrastive losses like full batches).
    drop_last: bool = True
    # Add up the gradients of this many batches before each optimiser step (a larger
    # effective batch in the same memory). Refused for methods whose loss couples the samples
    # of a batch (in-batch negatives, BatchNorm) unless force_accumulate is true.
    accumulate: int = 1
    force_accumulate: bool = False
    # How several processes share the model. ddp: each rank holds all of it (fastest while
    # it fits). fsdp: parameters, gradients and optimiser state sharded over the ranks (FSDP2,
    # one unit per transformer block; about 1/world of the memory each, for ViTs too large to
    # replicate), checkpoints as a sharded folder (checkpoints/last.dcp) that any number of
    # ranks can resume. bf16 or fp32 only. See docs/scale.md.
    strategy: str = "ddp"
    # Recompute each transformer block in the backward pass instead of keeping its
    # activations: about a third more compute for the activation memory of one block.
    activation_checkpointing: bool = False


@dataclass
class MonitorConfig:
    # Online kNN accuracy at every epoch end and at the end of training, when labels exist.
    knn: bool = True
    # Labelled images held out of pretraining as kNN queries (0 disables the monitor).
    # Ignored when val_path is given.
    holdout: int = 1000
    # A separate labelled folder for the monitor's queries (instead of a held-out part).
    val_path: str | None = None
    # Labelled training images used as the kNN memory bank.
    bank: int = 5000
    k: int = 20
    temperature: float = 0.1
    # Run the monitor every this many epochs.
    every_epochs: int = 1
    # Online linear probe on detached features of each training batch (needs labels).
    probe: bool = True
    # Collapse signals (feature spread, effective rank, contrastive loss at chance level):
    # logged, and a warning with likely causes when they fire.
    collapse: bool = True


TRACKER_BACKENDS = ("tensorboard", "csv", "mlflow", "wandb")


@dataclass
class LoggingConfig:
    # Where the run's metrics go: any of tensorboard, csv, mlflow, wandb (rank 0 only).
    # csv (metrics.csv) is the run's own record that reports, curves and --resume read; it
    # is always written. mlflow needs `pip install "selfsup[mlflow]"`, wandb
    # `pip install "selfsup[wandb]"`. Both get the config as parameters, every metrics.csv
    # row, evaluations run later on the run, the figures and the exported backbone.
    backends: list[str] = field(default_factory=lambda: ["tensorboard", "csv"])
    # The tracking run's name (default: the run folder's name).
    run_name: str | None = None
    # MLflow: tracking URI (None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the
    # working directory; a server as http://host:5000) and experiment name.
    mlflow_uri: str | None = None
    mlflow_experiment: str = "selfsup"
    # W&B: project, entity (None: your default) and mode: online, offline (sync later
    # with `wandb sync`), disabled; None: $WANDB_MODE, else online.
    wandb_project: str = "selfsup"
    wandb_entity: str | None = None
    wandb_mode: str | None = None
    # Export the trained backbone (safetensors + preprocessing.json) into the run folder at
    # the end and log it to the trackers as the model artifact (mlflow / wandb only).
    log_backbone: bool = True


@dataclass
class Config:
    method: MethodConfig = field(default_factory=MethodConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ----------------------------------------------------------------------------- durations

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s|min|sec)?", re.IGNORECASE)
_UNIT = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "sec": 1.0, None: 1.0}


def parse_duration(text: str | float | int, key: str | None = None) -> float:
    """``"1h30m"`` -> 5400.0 seconds; a bare number means seconds. ``key`` names the option
    in the error message."""
    if isinstance(text, int | float):
        return float(text)
    s = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        unit = m.group(2).lower() if m.group(2) else None
        total += float(m.group(1)) * _UNIT[unit]
        pos = m.end()
    if pos != len(s) or not s:
        where = f"{key}: " if key else ""
        raise ConfigError(
            f"{where}cannot read duration {text!r}: use a number of seconds or units h/m/s, "
            "such as '90s', '10m' or '1h30m'."
        )
    return total


# ----------------------------------------------------------------------------- building


def method_config_class(name: str) -> type[MethodConfig]:
    cls = get_method_class(name).Config
    return cls


def default_config(method: str) -> Config:
    """Every default for ``method`` (its own Config and preferred backbone)."""
    obj = OmegaConf.to_object(schema(method))
    assert isinstance(obj, Config)
    return obj


def schema(method: str) -> DictConfig:
    """The structured config (defaults) for ``method``."""
    cls = get_method_class(method)
    name = cls.default_backbone or (DEFAULT_VIT if cls.needs_vit else None)
    backbone = BackboneConfig(name=name) if name else BackboneConfig()
    cfg = OmegaConf.structured(Config(method=cls.Config(), backbone=backbone))
    assert isinstance(cfg, DictConfig)
    return cfg


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(node, DictConfig):
        for k in node:
            full = f"{prefix}{k!s}"
            keys.append(full)
            keys.extend(_all_keys(node._get_node(k), full + "."))
    return keys


def _explain(err: OmegaConfBaseException, base: DictConfig, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = str(err).splitlines()[0]
    if key and "not in" in msg:
        parent, _, leaf = str(key).rpartition(".")
        siblings = _all_keys(OmegaConf.select(base, parent) if parent else base)
        siblings = [s for s in siblings if "." not in s]
        hint = difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.5)
        where = f"'{parent}'" if parent else "the top level"
        text = f"unknown config key '{key}' (from {source})."
        if hint:
            text += f" Did you mean {', '.join(f'{parent}.{h}' if parent else h for h in hint)}?"
        text += f" Valid keys in {where}: {', '.join(siblings)}."
        return ConfigError(text)
    if key:
        return ConfigError(f"bad value for config key '{key}' (from {source}): {msg}")
    return ConfigError(f"bad configuration (from {source}): {msg}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        raise _explain(err, base, source) from None
    except (TypeError, ValueError, AttributeError) as err:  # OmegaConf's own type clashes
        raise ConfigError(f"bad value (from {source}): {err}.") from None
    assert isinstance(merged, DictConfig)
    return merged


def _load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file {str(p)!r} does not exist; check the path given to --config."
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} must hold a mapping of sections (method, data, optim, ...), "
            f"not a {type(data).__name__}."
        )
    return data


def _parse_dotlist(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} must look like key=value, for example optim.lr=0.3."
            )
        key, _, value = item.partition("=")
        key = key.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted config key.")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        out.append((key, parsed))
    return out


def _nest(key: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    assert isinstance(node, dict)
    return node


def _method_name(*sources: Any) -> str | None:
    name = None
    for src in sources:
        if isinstance(src, dict):
            m = src.get("method")
            if isinstance(m, dict) and isinstance(m.get("name"), str):
                name = m["name"]
            elif isinstance(m, str):
                name = m
    return name


def build_config(
    method: str | None = None,
    config_file: str | Path | dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Resolve a :class:`Config` from defaults, a YAML file (or dict), flat dotted
    ``values`` (``{"train.epochs": 3}``; None values are skipped) and ``key=value``
    overrides. Raises :class:`ConfigError` naming any unknown or invalid key."""
    file_data: dict[str, Any] = {}
    if isinstance(config_file, dict):
        file_data = config_file
    elif config_file is not None:
        file_data = _load_yaml(config_file)
    if isinstance(file_data.get("method"), str):
        file_data = {**file_data, "method": {"name": file_data["method"]}}
    dotted = _parse_dotlist(overrides or [])
    value_items = [(k, v) for k, v in (values or {}).items() if v is not None]
    nested_values = [_nest(k, v) for k, v in value_items]
    nested_over = [_nest(k, v) for k, v in dotted]
    name = method or _method_name(file_data, *nested_values, *nested_over) or MethodConfig.name
    if not isinstance(name, str):
        raise ConfigError(f"method.name must be a method name, got {name!r}.")
    try:
        cfg = schema(name)
    except KeyError as err:
        raise ConfigError(str(err)) from None
    source = "the given config" if isinstance(config_file, dict) else f"config file {config_file}"
    # Section by section, so that a bad section is named even when OmegaConf's own message
    # has no key (e.g. "method: 0").
    for key, value in file_data.items():
        cfg = _merge(cfg, {key: value}, f"{source}, key '{key}'")
    for (k, _), nv in zip(value_items, nested_values, strict=True):
        cfg = _merge(cfg, nv, f"option for {k}")
    for (k, _), nv in zip(dotted, nested_over, strict=True):
        cfg = _merge(cfg, nv, f"override {k}")
    if cfg.method.name != name:
        raise ConfigError(
            f"the config asks for method {cfg.method.name!r} but {name!r} was chosen; "
            "pass one method (--method or method.name)."
        )
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err, cfg, "config") from None
    assert isinstance(obj, Config)
    validate(obj)
    return obj


def validate(cfg: Config) -> None:
    """Checks that need more than types; each message names the key and the fix."""
    t, o, d = cfg.train, cfg.optim, cfg.data
    if t.accumulate < 1:
        raise ConfigError(f"train.accumulate must be at least 1, got {t.accumulate}.")
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size must be at least 1, got {t.batch_size}.")
    for key, val in (("train.epochs", t.epochs), ("train.steps", t.steps)):
        if val is not None and val < 1:
            raise ConfigError(f"{key} must be at least 1 (or unset), got {val}.")
    if t.max_time is not None and parse_duration(t.max_time, "train.max_time") <= 0:
        raise ConfigError(f"train.max_time must be positive, got {t.max_time!r}.")
    parse_duration(t.checkpoint_every, "train.checkpoint_every")
    if t.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(
            f"train.precision must be one of auto, bf16, fp16, fp32; got {t.precision!r}."
        )
    if t.strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"train.strategy must be ddp or fsdp, got {t.strategy!r}.")
    if t.strategy == "fsdp" and t.precision == "fp16":
        raise ConfigError(
            "train.strategy=fsdp does not run fp16 (its gradient scaler does not shard): "
            "set train.precision=bf16 (or fp32)."
        )
    if o.name not in ("sgd", "lars", "adamw"):
        raise ConfigError(f"optim.name must be one of sgd, lars, adamw; got {o.name!r}.")
    if o.lr_scaling not in ("linear", "sqrt", "none"):
        raise ConfigError(
            f"optim.lr_scaling must be one of linear, sqrt, none; got {o.lr_scaling!r}."
        )
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {o.lr}.")
    if not 0 <= o.warmup < 1:
        raise ConfigError(f"optim.warmup is a fraction of the budget in [0, 1), got {o.warmup}.")
    if len(o.betas) != 2:
        raise ConfigError(f"optim.betas needs two values, got {o.betas}.")
    if d.normalize not in ("given", "auto"):
        raise ConfigError(f"data.normalize must be given or auto, got {d.normalize!r}.")
    if len(d.mean) != len(d.std):
        raise ConfigError("data.mean and data.std need the same number of channels.")
    if d.max_pixels < 1:
        raise ConfigError(f"data.max_pixels must be positive, got {d.max_pixels}.")
    if d.clip_stride < 1:
        raise ConfigError(f"data.clip_stride must be >= 1, got {d.clip_stride}.")
    if any(not 0 <= p <= 1 for p in d.clip_motion):
        raise ConfigError(f"data.clip_motion holds probabilities in [0, 1], got {d.clip_motion}.")
    if d.video_gap < 0:
        raise ConfigError(f"data.video_gap must be >= 0, got {d.video_gap}.")
    if d.shuffle_buffer < 1:
        raise ConfigError(f"data.shuffle_buffer must be at least 1, got {d.shuffle_buffer}.")
    if d.repeat < 1:
        raise ConfigError(f"data.repeat must be at least 1, got {d.repeat}.")
    if any(s <= 0 for s in d.std):
        raise ConfigError(f"data.std values must be positive, got {d.std}.")
    if d.augment not in ("auto", "cpu", "device"):
        raise ConfigError(f"data.augment must be auto, cpu or device, got {d.augment!r}.")
    if d.bad_files not in ("skip", "fail"):
        raise ConfigError(f"data.bad_files must be skip or fail, got {d.bad_files!r}.")
    if d.limit is not None and d.limit < 1:
        raise ConfigError(f"data.limit must be at least 1 (or unset), got {d.limit}.")
    if d.image_size is not None and d.image_size < 8:
        raise ConfigError(f"data.image_size must be at least 8 pixels, got {d.image_size}.")
    if d.progressive_start is not None and not 0 < d.progressive_start <= 1:
        raise ConfigError(
            "data.progressive_start is the fraction of each view's size to start from, in "
            f"(0, 1] (e.g. 0.5), or null for off; got {d.progressive_start}."
        )
    if not 0 <= d.progressive_until <= 1:
        raise ConfigError(
            "data.progressive_until is the fraction of the budget at which views reach full "
            f"size, in [0, 1]; got {d.progressive_until}."
        )
    if cfg.backbone.in_chans < 1:
        raise ConfigError(f"backbone.in_chans must be at least 1, got {cfg.backbone.in_chans}.")
    if cfg.monitor.k < 1:
        raise ConfigError(f"monitor.k must be at least 1, got {cfg.monitor.k}.")
    _validate_logging(cfg.logging)


def _validate_logging(lg: LoggingConfig) -> None:
    for b in lg.backends:
        if b not in TRACKER_BACKENDS:
            close = difflib.get_close_matches(str(b), TRACKER_BACKENDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"logging.backends: unknown backend {b!r}; choose from "
                f"{', '.join(TRACKER_BACKENDS)}.{hint}"
            )
    if lg.wandb_mode not in (None, "online", "offline", "disabled"):
        raise ConfigError(
            f"logging.wandb_mode must be online, offline or disabled (or unset), got "
            f"{lg.wandb_mode!r}."
        )


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of a config (what checkpoints and config.yaml hold)."""
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Rebuild a config saved by :func:`to_dict` (e.g. from a checkpoint).

    A config saved by an older selfsup may not fit today's schema; it is then adapted: keys
    that no longer exist are dropped and a single value where a list is now expected is
    wrapped, each with a warning (new keys take their defaults).
    """
    try:
        return build_config(config_file=data, overrides=overrides)
    except ConfigError:
        name = _method_name(data) or MethodConfig.name
        adapted, notes = _adapt(data, OmegaConf.to_container(schema(name)), "")
        for note in notes:
            warnings.warn(f"saved config: {note}", stacklevel=2)
        return build_config(config_file=adapted, overrides=overrides)


def _adapt(saved: Any, ref: Any, prefix: str) -> tuple[Any, list[str]]:
    """Fit a saved (older) config tree to the reference schema tree."""
    notes: list[str] = []
    if isinstance(ref, dict) and isinstance(saved, dict):
        out = {}
        for k, v in saved.items():
            if k not in ref:
                if ref and not (prefix.endswith("kwargs.") or "kwargs" in prefix):
                    notes.append(f"dropped {prefix}{k}={v!r} (no longer a config key)")
                    continue
                out[k] = v
                continue
            out[k], sub_notes = _adapt(v, ref[k], f"{prefix}{k}.")
            notes += sub_notes
        return out, notes
    if isinstance(ref, list) and saved is not None and not isinstance(saved, list | tuple):
        notes.append(f"{prefix.rstrip('.')}: {saved!r} became [{saved!r}]")
        return [saved], notes
    return saved, notes


def flat_defaults(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.epochs": None, ...}`` for a dataclass instance (used by ``--help``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(flat_defaults(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out
