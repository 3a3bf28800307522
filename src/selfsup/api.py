"""The Python API: everything the CLI does, callable from a notebook.

>>> import selfsup
>>> result = selfsup.pretrain("simclr", data="cifar10/train", out="runs/simclr", max_time="10m")
>>> model = selfsup.load_method("runs/simclr")              # a Method, on the CPU
>>> feats, labels = selfsup.extract("runs/simclr", "cifar10/test")
>>> selfsup.evaluate_knn("runs/simclr", train="cifar10/train", test="cifar10/test")
>>> selfsup.evaluate("linear", "runs/simclr", "cifar10/train", "cifar10/test", floor=True)
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup import config as C
from selfsup.config import Config, ConfigError
from selfsup.data import (
    ImageSource,
    SubsetSource,
    auto_image_size,
    open_source,
    sniff_image_size,
    stratified_split,
    subset,
)
from selfsup.data.shards import ShardSource, is_shard_spec, open_shards
from selfsup.eval import extract_features, knn_classify, linear_probe
from selfsup.eval.knn import KNNResult
from selfsup.eval.linear import DEFAULT_LRS, DEFAULT_WDS, LinearResult
from selfsup.methods.base import Method
from selfsup.registry import list_methods
from selfsup.runs import build_method, load_run
from selfsup.runtime import resolve_device, resolve_precision
from selfsup.tasks.detection import evaluate_detection
from selfsup.tasks.segmentation import evaluate_segmentation
from selfsup.train import FitResult, KNNMonitor, Trainer
from selfsup.train import checkpoint as ckpt_io

# Keyword options of `pretrain` (and CLI flags) and the config keys they set.
SHORTCUTS: dict[str, str] = {
    "data": "data.path",
    "data_root": "data.root",
    "image_size": "data.image_size",
    "limit": "data.limit",
    "workers": "data.num_workers",
    "bad_files": "data.bad_files",
    "augment": "data.augment",
    "cache": "data.cache",
    "backbone": "backbone.name",
    "small_stem": "backbone.small_stem",
    "in_chans": "backbone.in_chans",
    "channels": "backbone.in_chans",
    "normalize": "data.normalize",
    "epochs": "train.epochs",
    "steps": "train.steps",
    "max_time": "train.max_time",
    "batch_size": "train.batch_size",
    "precision": "train.precision",
    "device": "train.device",
    "seed": "train.seed",
    "compile": "train.compile",
    "threads": "train.threads",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "val_data": "monitor.val_path",
}

__all__ = [
    "Evaluation",
    "build_method",
    "create_method",
    "evaluate",
    "evaluate_detection",
    "evaluate_knn",
    "evaluate_linear",
    "evaluate_segmentation",
    "extract",
    "list_methods",
    "load_config",
    "load_method",
    "make_config",
    "pretrain",
]


def make_config(
    method: str | None = None,
    config: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    **options: Any,
) -> Config:
    """A resolved :class:`Config` from a method name, a YAML file or dict, keyword options
    (see ``SHORTCUTS``; e.g. ``epochs=3``) and ``key=value`` overrides."""
    values = {}
    for k, v in options.items():
        if k not in SHORTCUTS:
            hint = difflib.get_close_matches(k, list(SHORTCUTS), n=3)
            did = f" Did you mean {', '.join(hint)}?" if hint else ""
            raise ConfigError(
                f"unknown option {k!r}.{did} Options: {', '.join(SHORTCUTS)}; any config key "
                "can also be set with overrides=['section.key=value']."
            )
        values[SHORTCUTS[k]] = v
    return C.build_config(method=method, config_file=config, values=values, overrides=overrides)


def create_method(
    name: str = "simclr", backbone: str = "resnet18", image_size: int = 32, **method_options: Any
) -> Method:
    """A method by name, e.g. ``create_method("simclr", temperature=0.2)``."""
    overrides = [f"method.{k}={json.dumps(v)}" for k, v in method_options.items()]
    cfg = make_config(name, overrides=overrides, backbone=backbone, image_size=image_size)
    return build_method(cfg, image_size)


# ----------------------------------------------------------------------------- data


def _open(
    spec: str, split: str, root: str | None, download: bool = True, max_pixels: int | None = None
) -> ImageSource:
    return open_source(spec, split=split, root=root, download=download, max_pixels=max_pixels)


def _resolve(cfg: Config, source: ImageSource) -> Config:
    """Fill in automatic values (image size, stem) so the saved config is explicit."""
    data, bb = cfg.data, cfg.backbone
    side = sniff_image_size(source)
    if data.image_size is None:
        data = replace(data, image_size=side if side <= 64 else 224)
    elif data.image_size > side and not data.allow_upscale:
        raise ConfigError(
            f"data.image_size={data.image_size} is larger than the images of {source.name} "
            f"(median shorter side {side} px): every crop would be upsampled. Use "
            f"--image-size {side} or less, or set data.allow_upscale=true."
        )
    channels = bb.in_chans
    if data.normalize == "auto":
        from selfsup.data.check import cached_stats, sample_stats

        stats = cached_stats(data.path or "", channels, len(source)) if data.path else None
        mean, std = stats or sample_stats(source, channels, seed=cfg.train.seed)
        data = replace(data, normalize="given", mean=[round(m, 6) for m in mean],
                       std=[round(s, 6) for s in std])  # fmt: skip
    elif len(data.mean) != channels:
        if channels == 1 and len(data.mean) == 3:
            # One channel with colour statistics: their average (ImageNet: 0.449 / 0.226).
            data = replace(data, mean=[sum(data.mean) / 3], std=[sum(data.std) / 3])
        else:
            raise ConfigError(
                f"data.mean/std have {len(data.mean)} values but the images have {channels} "
                "channels: pass --normalize auto to measure them, or give data.mean and data.std "
                f"with {channels} values each."
            )
    if bb.small_stem is None and not bb.name.startswith("timm:"):
        assert data.image_size is not None
        bb = replace(bb, small_stem=data.image_size <= 64)
    return replace(cfg, data=data, backbone=bb)


def _monitor(cfg: Config, source: ImageSource) -> tuple[ImageSource, KNNMonitor | None]:
    """Split off the kNN monitor's labelled queries (when labels exist)."""
    m = cfg.monitor
    if not m.knn:
        return source, None
    if m.val_path:
        queries = _open(m.val_path, "test", cfg.data.root, cfg.data.download)
        if queries.labels is None:
            raise ConfigError(
                f"monitor.val_path {m.val_path!r} has no class sub-folders, so the kNN monitor "
                "has no labels; give a labelled folder (<class>/<image>) or unset it."
            )
        train = source
    elif source.labels is not None and m.holdout > 0 and len(source) > 2 * m.holdout:
        held, rest = stratified_split(source.labels, len(source), m.holdout, cfg.train.seed + 1)
        queries, train = SubsetSource(source, held), SubsetSource(source, rest)
    else:
        return source, None
    if train.labels is None:
        return train, None
    bank = subset(train, m.bank, seed=cfg.train.seed + 2)
    return train, KNNMonitor(bank, queries, m, batch_size=256, num_workers=cfg.data.num_workers)


def _open_shards(cfg: Config) -> ShardSource:
    assert cfg.data.path is not None
    if cfg.data.limit is not None:
        raise ConfigError(
            "data.limit takes a subset of a folder; with shards, name fewer shards in the "
            "pattern instead (e.g. shard-{000000..000009}.tar)."
        )
    return open_shards(cfg.data.path, cfg.data.max_pixels)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"run folder {str(out)!r} already exists and is not empty. Continue it with "
                f"--resume {out}, choose another --out, or pass --overwrite to replace it."
            )
        shutil.rmtree(out)


def pretrain(
    method: str | None = None,
    data: str | None = None,
    out: str | Path | None = None,
    *,
    config: str | Path | dict[str, Any] | Config | None = None,
    overrides: list[str] | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    stop_at_step: int | None = None,
    **options: Any,
) -> FitResult:
    """Pretrain ``method`` on ``data`` (a folder or a named set), writing the run to ``out``.

    ``resume`` continues a run folder exactly where its last checkpoint left it (options and
    overrides given with it are applied on top of its saved config, e.g. a longer budget).
    ``options`` are the shortcuts of :data:`SHORTCUTS` (``epochs``, ``max_time``, ...).
    """
    from selfsup import dist
    from selfsup.train import distributed

    distributed.setup()  # joins the process group under torchrun; no-op otherwise
    state: dict[str, Any] | None = None
    if resume is not None:
        state, source = ckpt_io.load_with_source(resume)
        out = Path(resume) if Path(resume).is_dir() else ckpt_io.resolve(resume).parent.parent
        if source.name == ckpt_io.PREVIOUS and dist.is_main():
            # Set the damaged last.pt aside: the next save would rotate it into previous.pt,
            # over the good checkpoint this run continues from.
            damaged = source.with_name(ckpt_io.LAST)
            os.replace(damaged, damaged.with_name(ckpt_io.LAST + ".damaged"))
        if method is not None and method != state["config"]["method"]["name"]:
            raise ConfigError(
                f"--resume {resume} is a {state['config']['method']['name']} run; "
                f"it cannot continue as {method}."
            )
        saved = state["config"]
        if data is not None:
            options["data"] = data
        cfg = make_config(config=saved, overrides=overrides, **options)
    else:
        if isinstance(config, Config):
            cfg = (
                config
                if not (options or overrides or method)
                else make_config(
                    method,
                    C.to_dict(config),
                    overrides,
                    **({"data": data} if data else {}),
                    **options,
                )
            )
        else:
            if data is not None:
                options["data"] = data
            cfg = make_config(method, config, overrides, **options)
        if out is not None:
            # Rank 0 alone looks at (and may clear) the folder; every rank gets its verdict.
            problem = None
            if dist.is_main():
                try:
                    _check_out(Path(out), overwrite)
                except ConfigError as err:
                    problem = str(err)
            problem = distributed.broadcast_object(problem)
            if problem:
                raise ConfigError(problem)
    if not cfg.data.path:
        raise ConfigError(
            "no data: pass --data (a folder of images or a named set such as cifar10)."
        )
    train_source: ImageSource
    path = cfg.data.path
    if is_shard_spec(path):
        # Streamed: the image size and statistics come from the first images; no kNN
        # monitor (its labelled bank needs random access).
        train_source, monitor = _open_shards(cfg), None
        cfg = _resolve(cfg, train_source.preview())
    else:
        opened = open_source(path, split="train", root=cfg.data.root,
                             download=cfg.data.download, max_pixels=cfg.data.max_pixels,
                             video_gap=cfg.data.video_gap)  # fmt: skip
        picked = subset(opened, cfg.data.limit, cfg.train.seed)
        cfg = _resolve(cfg, picked)
        train_source, monitor = _monitor(cfg, picked)
    model = build_method(cfg)
    trainer = Trainer(cfg, out, progress=progress)
    return trainer.fit(
        model, train_source, monitor=monitor, resume=state, stop_at_step=stop_at_step
    )


# ----------------------------------------------------------------------------- loading


def load_config(run: str | Path) -> Config:
    """The resolved config saved in a run's checkpoint."""
    return C.from_dict(ckpt_io.load(run)["config"])


def load_method(run: str | Path, random_init: bool = False) -> Method:
    """The trained method of a run (or checkpoint file), on the CPU, in eval mode.

    ``random_init=True`` gives the same architecture with the run's initial, untrained
    weights: the floor every method must beat.
    """
    return load_run(run, random_init).method


def _feature_model(model: Method | nn.Module) -> nn.Module:
    return model.feature_extractor() if isinstance(model, Method) else model


def extract(
    model: str | Path | Method | nn.Module,
    data: str | ImageSource,
    split: str = "test",
    *,
    data_root: str | None = None,
    image_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    limit: int | None = None,
    progress: bool | None = False,
    cache: bool = True,
    random_init: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, D)`` and labels ``(N,)`` (-1 when unlabelled) of every image of
    ``data`` from a run folder, a checkpoint, a Method or any ``nn.Module`` feature network.

    With a run, the run's image size and normalisation are used and features are cached in
    ``<run>/eval_cache/`` (keyed by checkpoint, data and settings).
    """
    cfg: Config | None = None
    cache_file: Path | None = None
    source = data if not isinstance(data, str) else _open(data, split, data_root)
    source = subset(source, limit, seed=0)
    if isinstance(model, str | Path):
        loaded = load_run(model, random_init)
        ckfile, cfg = loaded.file, loaded.config
        if cache and isinstance(data, str):
            st = ckfile.stat()
            key = json.dumps([str(ckfile.resolve()), st.st_size, st.st_mtime_ns, data,
                              str(Path(data).resolve()) if Path(data).exists() else data,
                              split, data_root, image_size, mean, std, limit, random_init,
                              len(source), precision])  # fmt: skip
            digest = hashlib.sha1(key.encode()).hexdigest()[:16]
            cache_file = ckfile.parent.parent / "eval_cache" / f"{digest}.pt"
            if cache_file.is_file():
                blob = torch.load(cache_file, weights_only=True)
                return blob["features"], blob["labels"]
        net: nn.Module = _feature_model(loaded.method)
    else:
        net = _feature_model(model)
        if isinstance(model, Method):
            cfg = None
    size = image_size or (cfg.data.image_size if cfg else None) or auto_image_size(source)
    mean = mean or (cfg.data.mean if cfg else list(C.IMAGENET_MEAN))
    std = std or (cfg.data.std if cfg else list(C.IMAGENET_STD))
    channels = cfg.backbone.in_chans if cfg else 3
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    net = net.to(dev)
    feats, labels = extract_features(
        net, source, size, mean, std, channels=channels, batch_size=batch_size, device=dev,
        precision=prec, channels_last=True, progress=progress, desc=f"features {source.name}",
    )  # fmt: skip
    if cache_file is not None:
        cache_file.parent.mkdir(exist_ok=True)
        ckpt_io.save_atomic({"features": feats, "labels": labels}, cache_file, keep_previous=False)
    return feats, labels


def _train_test_features(
    model: str | Path | Method | nn.Module, train: str, test: str, **kw: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    limit_train = kw.pop("limit_train", None)
    limit_test = kw.pop("limit_test", None)
    ftr, ltr = extract(model, train, "train", limit=limit_train, **kw)
    fte, lte = extract(model, test, "test", limit=limit_test, **kw)
    if (ltr < 0).all() or (lte < 0).all():
        which = train if (ltr < 0).all() else test
        raise ConfigError(
            f"{which!r} has no labels: evaluation needs class sub-folders (<class>/<image>) "
            "or a named set."
        )
    return ftr, ltr, fte, lte


def evaluate_knn(
    model: str | Path | Method | nn.Module,
    train: str,
    test: str,
    k: int = 200,
    temperature: float = 0.1,
    **kw: Any,
) -> KNNResult:
    """kNN top-1/top-5 of ``test`` against a memory bank of ``train`` features (cosine,
    temperature-weighted votes). Extra keywords go to :func:`extract` (``data_root``,
    ``limit_train``, ``limit_test``, ``random_init``, ``device``, ``precision``...)."""
    import time

    t0 = time.perf_counter()
    ftr, ltr, fte, lte = _train_test_features(model, train, test, **kw)
    res = knn_classify(ftr, ltr, fte, lte, k=k, temperature=temperature)
    res.seconds = time.perf_counter() - t0
    return res


def evaluate_linear(
    model: str | Path | Method | nn.Module,
    train: str,
    test: str,
    lrs: tuple[float, ...] = DEFAULT_LRS,
    weight_decays: tuple[float, ...] = DEFAULT_WDS,
    epochs: int = 30,
    val_fraction: float = 0.1,
    **kw: Any,
) -> LinearResult:
    """Linear probe on frozen features: a sweep of learning rates (and weight decays) trained
    in parallel, chosen on a validation split carved from ``train``, tested once."""
    import time

    t0 = time.perf_counter()
    ftr, ltr, fte, lte = _train_test_features(model, train, test, **kw)
    res = linear_probe(ftr, ltr, fte, lte, lrs=lrs, weight_decays=weight_decays, epochs=epochs,
                       val_fraction=val_fraction, progress=kw.get("progress", False))  # fmt: skip
    res.seconds = time.perf_counter() - t0
    return res


PROTOCOLS = ("knn", "linear")


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: ``result`` for the model asked about and, with
    ``floor=True``, ``floor``: the same run with its initial, untrained weights."""

    protocol: str
    result: KNNResult | LinearResult
    floor: KNNResult | LinearResult | None = None

    @property
    def gain_top1(self) -> float | None:
        """Top-1 points gained over the random-init floor (``None`` without a floor)."""
        return None if self.floor is None else self.result.top1 - self.floor.top1

    @property
    def seconds(self) -> float:
        """Time of both evaluations together."""
        return self.result.seconds + (self.floor.seconds if self.floor is not None else 0.0)

    def as_dict(self) -> dict[str, Any]:
        """``protocol`` and the result's fields, plus ``floor`` (the floor's fields) and
        ``gain_top1`` when the floor was measured: the JSON of ``selfsup eval --json``."""
        out: dict[str, Any] = {"protocol": self.protocol, **self.result.as_dict()}
        if self.floor is not None:
            out["floor"] = self.floor.as_dict()
            out["gain_top1"] = self.gain_top1
        return out


def evaluate(
    protocol: str,
    model: str | Path | Method | nn.Module,
    train: str,
    test: str,
    *,
    floor: bool = False,
    random_init: bool = False,
    **options: Any,
) -> Evaluation:
    """Evaluate ``model`` with ``protocol`` (``"knn"`` or ``"linear"``) and, with ``floor``,
    the same run from its initial, untrained weights, the floor a method must beat.

    ``model`` is a run folder, a checkpoint file, a Method or a feature ``nn.Module``;
    ``floor`` needs a run folder or checkpoint (the floor is the run's own random init).
    ``random_init=True`` evaluates the run's initial weights instead of the trained ones.
    ``options`` go to :func:`evaluate_knn` (``k``, ``temperature``) or
    :func:`evaluate_linear` (``lrs``, ``weight_decays``, ``epochs``, ``val_fraction``) and
    on to :func:`extract` (``data_root``, ``limit_train``, ``progress``, ...).

    >>> ev = selfsup.evaluate("knn", "runs/simclr", "cifar10/train", "cifar10/test", floor=True)
    >>> ev.result.top1, ev.floor.top1, ev.gain_top1   # trained, untrained, difference
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown protocol {protocol!r}: choose {' or '.join(PROTOCOLS)} (few-label "
            "protocols are in selfsup.experiments)."
        )
    if floor and not isinstance(model, str | Path):
        raise ConfigError(
            "floor=True compares a run with its own random init: pass a run folder or "
            "checkpoint file as model."
        )

    def once(untrained: bool) -> KNNResult | LinearResult:
        if protocol == "knn":
            return evaluate_knn(model, train, test, random_init=untrained, **options)
        return evaluate_linear(model, train, test, random_init=untrained, **options)

    result = once(random_init)
    return Evaluation(protocol, result, once(True) if floor else None)
