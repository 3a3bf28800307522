"""A run's backbone as a timm / Hugging Face hub model, and :func:`load_backbone`.

``selfsup export RUN --format hf`` writes a folder in the layout of timm models on the
Hugging Face hub, so that after an upload ``timm.create_model("hf-hub:<user>/<repo>",
pretrained=True)`` builds it, and without selfsup installed the folder loads locally:

- ``model.safetensors``: the state dict, keyed as ``timm.create_model(architecture,
  num_classes=0, **model_args)`` names it (torchvision ResNets and timm's share every key);
- ``config.json``: ``architecture``, ``num_classes: 0``, ``num_features``, ``global_pool``,
  ``model_args`` and ``pretrained_cfg`` (input size, mean/std, interpolation, crop) as timm's
  ``save_for_hf`` writes them, plus a ``selfsup`` key timm ignores (source run, stem);
- ``README.md``: the model card (:mod:`selfsup.model_card`).

The small-image ResNet stem (3x3 stride-1 ``conv1``, no max-pool; CIFAR-style) is no timm
architecture and no timm ``model_args`` express it: config.json names the plain ResNet, and
``selfsup.small_stem`` / the card give the two lines that replace the stem before the weights
load. ``timm.create_model("hf-hub:...", pretrained=True)`` then stops with a size mismatch for
``conv1.weight`` (never loads wrong weights silently); :func:`load_backbone` applies the lines.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.backbones import Backbone
from selfsup.backbones.factory import TORCHVISION_RESNETS
from selfsup.config import ConfigError
from selfsup.train import checkpoint as ckpt_io
from selfsup.transforms.base import eval_resize

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
PREPROCESSING = "preprocessing.json"  # as selfsup.export writes beside every export


@dataclass(frozen=True)
class HubSpec:
    """How timm builds the stock model of a backbone: ``timm.create_model(architecture,
    num_classes=0, **model_args)``, then the small-image stem when ``small_stem``; with
    ``pool_tokens`` timm returns unpooled outputs that selfsup averaged (global_pool="").
    ``global_pool``: the pooling of the model as built (informational in config.json)."""

    architecture: str
    model_args: dict[str, Any]
    small_stem: bool
    in_chans: int
    pool_tokens: bool
    global_pool: str | None = None


def hub_spec(bb: Backbone) -> HubSpec:
    """The timm architecture and arguments of ``bb``; :class:`ConfigError` naming the
    formats that work when timm cannot express it."""
    others = "Use --format safetensors, onnx or torchscript instead."
    kw = dict(bb.build_kwargs)
    if bb.name in TORCHVISION_RESNETS:
        # timm's ResNets of these names have torchvision's layers under the same keys.
        arch, args = bb.name, {"in_chans": int(kw["in_chans"])}
        small = bool(kw["small_stem"])
    elif bb.name.startswith("timm:"):
        arch, small = bb.name[5:], False
        args = {k: v for k, v in kw.items() if k not in ("num_classes", "pretrained")}
    else:
        raise ConfigError(
            f"--format hf needs a torchvision ResNet or a timm backbone; {bb.name!r} is "
            f"neither, so timm cannot build it by name. {others}"
        )
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--format hf: the build arguments of {bb.name} ({args}) do not fit in "
            f"config.json (not JSON). {others}"
        ) from None
    pool = getattr(bb.net, "global_pool", None)  # timm: a name, or a pooling layer
    pool = getattr(pool, "pool_type", pool)
    gp = "avg" if bb.name in TORCHVISION_RESNETS else pool if isinstance(pool, str) else None
    return HubSpec(arch, args, small, int(args.get("in_chans", 3)), kw.get("global_pool") == "",
                   gp or None)  # fmt: skip


def stem_lines(in_chans: int) -> list[str]:
    """The two lines that give a timm (or torchvision) ResNet ``net`` the small-image stem."""
    return [
        f"net.conv1 = torch.nn.Conv2d({in_chans}, 64, kernel_size=3, stride=1, padding=1, "
        "bias=False)  # small-image stem",
        "net.maxpool = torch.nn.Identity()",
    ]


def crop_pct(size: int) -> float:
    """timm's ``crop_pct`` for selfsup's evaluation resize: timm resizes the shorter side to
    ``floor(size / crop_pct)``, which must be :func:`eval_resize` ``(size)``."""
    resize = eval_resize(size)
    for pct in (round(size / resize, 4), size / resize, size / (resize + 0.5)):
        if int(size / pct) == resize:
            return pct
    raise AssertionError(f"no crop_pct gives a {resize} px resize for {size} px")  # unreachable


def data_config(channels: int, size: int, mean: list[float], std: list[float]) -> dict[str, Any]:
    """Preprocessing in timm's ``pretrained_cfg`` layout: ``timm.data.create_transform(
    **timm.data.resolve_model_data_config(net))`` resizes, crops and normalises as selfsup."""
    return {
        "input_size": (channels, size, size),
        "interpolation": "bilinear",  # selfsup resizes bilinearly, antialiased (as PIL does)
        "crop_pct": crop_pct(size),
        "crop_mode": "center",
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
    }


def hub_config(spec: HubSpec, info: dict[str, Any], license: str) -> dict[str, Any]:
    """config.json as timm's ``save_for_hf`` lays it out, from ``preprocessing.json``'s
    ``info`` (:func:`selfsup.export.export_backbone`)."""
    import timm.models

    inp = info["input"]
    default = timm.models.get_pretrained_cfg(spec.architecture)
    stock = dataclasses.asdict(default) if default is not None else {}
    pre = data_config(inp["channels"], inp["image_size"], inp["mean"], inp["std"])
    pretrained_cfg = {
        "custom_load": False,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()},
        "fixed_input_size": bool(stock.get("fixed_input_size", False)),
        "num_classes": 0,
        "first_conv": stock.get("first_conv"),
        "classifier": stock.get("classifier"),
        "license": license,
    }
    src = info["source"]
    config: dict[str, Any] = {
        "architecture": spec.architecture,
        "num_classes": 0,
        "num_features": info["embed_dim"],
    }
    if spec.global_pool:
        config["global_pool"] = spec.global_pool
    config["model_args"] = dict(spec.model_args)
    config["pretrained_cfg"] = {k: v for k, v in pretrained_cfg.items() if v is not None}
    config["selfsup"] = {
        "version": info["selfsup_version"],
        "method": src["method"],
        "role": src["role"],
        "step": src["step"],
        "backbone": info["architecture"]["backbone"],
        "resize": inp["resize"],
        "small_stem": spec.small_stem,
        "small_stem_lines": stem_lines(spec.in_chans) if spec.small_stem else [],
        "pool_tokens": spec.pool_tokens,
    }
    return config


def write_hf(bb: Backbone, spec: HubSpec, folder: Path, info: dict[str, Any],
             license: str) -> list[Path]:  # fmt: skip
    """Write ``model.safetensors`` and ``config.json`` into ``folder``; returns them."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in bb.net.state_dict().items()}
    meta = {"format": "pt", "selfsup_version": info["selfsup_version"], "backbone": bb.name,
            "architecture": spec.architecture}  # fmt: skip
    save_file(state, str(folder / WEIGHTS), metadata=meta)
    config = hub_config(spec, info, license)
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return [folder / WEIGHTS, folder / CONFIG]


def how_to_load(
    spec: HubSpec, shape: str, folder: str | None = None, alternatives: bool = False
) -> list[str]:
    """Runnable lines that build ``net`` with timm alone from the export folder (``folder``,
    default: the current directory) and compute ``features`` from a batch ``x``. With
    ``alternatives``, comments show the hub and ``local-dir:`` forms first."""

    def at(name: str) -> str:
        return repr(str(Path(folder) / name)) if folder else repr(name)

    if spec.small_stem:
        args = ", ".join(f"{k}={v!r}" for k, v in spec.model_args.items())
        build = ["import timm, torch", "from safetensors.torch import load_file",
                 "# timm has no ResNet with this stem: build the plain one, then replace it",
                 f"net = timm.create_model({spec.architecture!r}, pretrained=False, "
                 f"num_classes=0, {args})", *stem_lines(spec.in_chans),
                 f"net.load_state_dict(load_file({at(WEIGHTS)}))"]  # fmt: skip
    else:
        where = folder or "."
        other = ["# after uploading this folder to the Hugging Face hub:",
                 '#   net = timm.create_model("hf-hub:<user>/<repo>", pretrained=True)',
                 "# from this folder, with a timm that reads local folders (2025 on):",
                 f'#   net = timm.create_model("local-dir:{where}", pretrained=True)',
                 "# from this folder, with any timm 1.0:"]  # fmt: skip
        build = ["import json, timm, torch", *(other if alternatives else []),
                 f"with open({at(CONFIG)}) as f:", "    cfg = json.load(f)",
                 'net = timm.create_model(cfg["architecture"], pretrained=True,',
                 f'                        pretrained_cfg=dict(cfg["pretrained_cfg"], '
                 f"file={at(WEIGHTS)}),",
                 '                        **cfg["model_args"])']  # fmt: skip
    pool = []
    if spec.pool_tokens:
        # The run pooled unpooled timm outputs itself (Backbone.forward): say how.
        pool = ["features = features.flatten(2).mean(-1) if features.ndim == 4 else "
                "features.mean(1)"]  # fmt: skip
    return [*build, "net.eval()", "with torch.no_grad():", f"    features = net(x)  # {shape}",
            *pool]  # fmt: skip


def check_hf(bb: Backbone, folder: Path, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Features of ``x`` from the folder loaded by its own ``how_to_load`` lines (timm, no
    selfsup), and how it was loaded."""
    spec = hub_spec(bb)
    scope: dict[str, Any] = {"x": x}
    with torch.random.fork_rng(devices=[]):
        exec("\n".join(how_to_load(spec, "", str(folder.resolve()))), scope)
    how = "timm.create_model(pretrained=True) with config.json's pretrained_cfg"
    if spec.small_stem:
        how = "timm.create_model + the small-stem lines + load_state_dict (strict=True)"
    return torch.as_tensor(scope["features"]), how


# ----------------------------------------------------------------------------- loading


def load_backbone(path: str | Path, which: str | None = None) -> Backbone:
    """The trained backbone of a run folder, a checkpoint file or an ``hf`` export folder,
    on the CPU in eval mode: a selfsup :class:`Backbone` (``embed_dim``, ``forward_dense``;
    ViTs also ``forward_tokens``) mapping normalised ``(B, C, H, W)`` images to ``(B, D)``.

    ``net.pretrained_cfg`` is a dict in timm's layout: ``input_size`` ``(C, S, S)``,
    ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``; so
    ``timm.data.create_transform(**timm.data.resolve_model_data_config(net))`` is the run's
    evaluation preprocessing. ``which``: ``"teacher"`` / ``"student"`` for runs of methods
    with an EMA teacher (default: the one the method evaluates with); not for hf folders.

    >>> net = selfsup.load_backbone("runs/simclr")          # or .../export/hf, or last.pt
    >>> feats = net(x)                                      # (B, net.embed_dim)
    """
    p = Path(path).expanduser()
    expected = (
        "expected a run folder (with checkpoints/last.pt), a checkpoint file, or an hf "
        "export folder (config.json + model.safetensors, from selfsup export RUN --format hf)"
    )
    if p.is_file() and p.name in (CONFIG, WEIGHTS):
        p = p.parent
    if p.is_dir() and (p / CONFIG).is_file():
        if which is not None:
            raise ConfigError(
                f"load_backbone({str(path)!r}, which={which!r}): an hf export holds one "
                "backbone; load the run folder to choose its teacher or student."
            )
        return _load_hf(p)
    if not p.exists():
        raise ckpt_io.CheckpointError(f"load_backbone: {str(p)!r} does not exist; {expected}.")
    if p.is_dir() and (p / PREPROCESSING).is_file():
        fmt = _read_json(p / PREPROCESSING).get("format", "?")
        raise ckpt_io.CheckpointError(
            f"load_backbone: {str(p)!r} holds a {fmt} export, which loads with its own library "
            f"(see its {PREPROCESSING}); {expected}."
        )
    try:
        ckpt_io.resolve(p)
    except ckpt_io.CheckpointError:
        raise ckpt_io.CheckpointError(
            f"load_backbone: {str(p)!r} is not a selfsup run or export; {expected}."
        ) from None
    return _load_run(p, which)


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ckpt_io.CheckpointError(f"cannot read {str(file)!r}: {err}.") from None
    if not isinstance(data, dict):
        raise ckpt_io.CheckpointError(f"{str(file)!r} does not hold a JSON object.")
    return data


def _load_run(path: Path, which: str | None) -> Backbone:
    from selfsup.export import open_backbone

    opened = open_backbone(path, which)
    cfg = opened.config
    assert cfg.data.image_size is not None
    bb = opened.backbone
    pre = data_config(cfg.backbone.in_chans, cfg.data.image_size, list(cfg.data.mean),
                      list(cfg.data.std))  # fmt: skip
    return _with_cfg(bb, pre)


def _with_cfg(bb: Backbone, pretrained_cfg: dict[str, Any]) -> Backbone:
    """``bb`` with ``bb.pretrained_cfg`` set (a plain attribute, as timm models carry it)."""
    vars(bb)["pretrained_cfg"] = pretrained_cfg  # nn.Module.__setattr__ is typed for modules
    return bb


def _load_hf(folder: Path) -> Backbone:
    """Build the folder's timm model from config.json and load model.safetensors strictly."""
    import timm
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    config = _read_json(folder / CONFIG)
    arch, args = config.get("architecture"), config.get("model_args") or {}
    pre = config.get("pretrained_cfg")
    if not isinstance(arch, str) or not isinstance(pre, dict) or not isinstance(args, dict):
        raise ckpt_io.CheckpointError(
            f"{str(folder / CONFIG)!r} is not a timm config (architecture, model_args, "
            "pretrained_cfg); was the folder written by selfsup export --format hf?"
        )
    if not (folder / WEIGHTS).is_file():
        raise ckpt_io.CheckpointError(f"{str(folder)!r} has {CONFIG} but no {WEIGHTS}.")
    extra = config.get("selfsup") or {}
    args = {k: v for k, v in args.items() if k != "num_classes"}  # timm's writer keeps it there
    with torch.random.fork_rng(devices=[]):
        net = timm.create_model(arch, pretrained=False, num_classes=0, **args)
    if extra.get("small_stem"):
        c = int(args.get("in_chans", 3))
        net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    try:
        net.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    except RuntimeError as err:
        raise ckpt_io.CheckpointError(
            f"{str(folder / WEIGHTS)!r} does not fit the {arch} that {CONFIG} describes "
            f"({str(err).splitlines()[0]})."
        ) from None
    bb: Backbone
    if isinstance(net, VisionTransformer):
        from selfsup.backbones.vit import ViTBackbone

        bb = ViTBackbone(net, "timm:" + arch)
    else:
        dim: Any = config.get("num_features") or getattr(net, "num_features", 0)
        bb = Backbone(net, int(dim), "timm:" + arch)
    bb.build_kwargs = {"num_classes": 0, **args}
    size = pre.get("input_size") or [3, 224, 224]
    data = data_config(int(size[0]), int(size[-1]), pre.get("mean", []), pre.get("std", []))
    data.update({k: pre[k] for k in ("interpolation", "crop_pct", "crop_mode") if k in pre})
    data["input_size"] = tuple(int(s) for s in size)
    return _with_cfg(bb.float().eval(), data)
