"""Export a run's backbone alone, in a format other tools load without selfsup.

>>> import selfsup
>>> res = selfsup.export_backbone("runs/simclr", "torchvision")  # runs/simclr/export/torchvision/
>>> res.files        # [.../backbone.pth, .../preprocessing.json]

The exported network is the one :meth:`Method.feature_extractor` evaluates with (or, with
``which="teacher"``/``"student"``, either backbone of a method that has an EMA teacher), with
no projection heads: images ``(B, C, S, S)``, normalised as ``preprocessing.json`` says, to
features ``(B, D)``. ``preprocessing.json`` beside it records the input size, channels,
mean/std, the evaluation resize, the architecture and how it was built, the embed dim, the
selfsup version, a self-check and a few lines of Python that load the file.

Formats:

- ``torchvision``: ``backbone.pth``, a state dict that loads with ``strict=True`` into the
  stock torchvision ResNet after the changes selfsup makes to it::

      net = torchvision.models.resnet18(weights=None)
      net.fc = nn.Identity()                                  # always: features, no classifier
      # small-image stem (images of 64 px or less, or backbone.small_stem=true):
      net.conv1 = nn.Conv2d(C, 64, kernel_size=3, stride=1, padding=1, bias=False)
      net.maxpool = nn.Identity()
      # otherwise, only when C != 3:
      net.conv1 = nn.Conv2d(C, 64, kernel_size=7, stride=2, padding=3, bias=False)
      net.load_state_dict(torch.load("backbone.pth", weights_only=True))

- ``timm``: ``backbone.pth`` for ``timm.create_model(name, num_classes=0, **build_kwargs)``,
  where ``build_kwargs`` (in the JSON) holds every keyword the run used (``in_chans``, and
  for ViTs ``img_size`` and ``patch_size``: small images get 4 px patches).
- ``safetensors``: ``backbone.safetensors``, the same state dict (keys as above) with
  metadata strings; loading it never executes code.
- ``onnx``: ``backbone.onnx``, input ``images`` (B, C, S, S) float32 with a dynamic batch
  axis, output ``features`` (B, D). Needs ``pip install 'selfsup[export]'``.
- ``torchscript``: ``backbone.torchscript.pt``, traced with ``torch.jit.trace`` (for any
  batch size at the run's image size). torch 2.10+ warns that TorchScript is deprecated; the
  warning is shown, and the file still loads with ``torch.jit.load``.
- ``hf``: a folder in the layout of timm models on the Hugging Face hub (``model.safetensors``,
  ``config.json``, a model card ``README.md``): loads with ``timm.create_model`` by name, with
  no selfsup installed (see :mod:`selfsup.hub`).

``out`` is a folder, or for the single-file formats a file name ending in the format's
extension (``model.onnx``, ``weights.safetensors``, ``net.pt``), with ``preprocessing.json``
beside it.

``quantize="int8"`` (onnx only) also writes ``backbone.int8.onnx`` (``model.int8.onnx`` for
``out="model.onnx"``), statically quantised by onnxruntime with calibration images from the
run's training data, and records how and how well in ``preprocessing.json["quantization"]``
(see :mod:`selfsup.quantize`).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup import config as C
from selfsup import hub
from selfsup.backbones import Backbone
from selfsup.backbones.factory import TORCHVISION_RESNETS
from selfsup.config import Config, ConfigError
from selfsup.methods.base import Method
from selfsup.quantize import Int8Options, Int8Plan, int8_path, plan_int8, quantize_export
from selfsup.quantize import onnx_features as onnx_features  # public here too, for benchmarks
from selfsup.runs import LoadedRun, load_run
from selfsup.train import checkpoint as ckpt_io
from selfsup.transforms.base import eval_resize

FORMATS = ("torchvision", "timm", "safetensors", "onnx", "torchscript", "hf")
FILES = {
    "torchvision": "backbone.pth",
    "timm": "backbone.pth",
    "safetensors": "backbone.safetensors",
    "onnx": "backbone.onnx",
    "torchscript": "backbone.torchscript.pt",
    "hf": "model.safetensors",
}
# An --out ending in one of these is the model file itself (hf is always a folder).
SUFFIXES = {
    "torchvision": (".pth", ".pt"),
    "timm": (".pth", ".pt"),
    "safetensors": (".safetensors",),
    "onnx": (".onnx",),
    "torchscript": (".pt",),
    "hf": (),
}
PREPROCESSING = "preprocessing.json"
INPUT_NAME, OUTPUT_NAME = "images", "features"
# Largest |exported - original| accepted by the self-check, relative to the features' scale:
# fp32 kernels of ONNX Runtime and TorchScript reorder sums, giving differences near 1e-6.
CHECK_RTOL = 1e-4
CHECK_BATCH = 3  # not the export example's batch (2), so the check proves the batch is dynamic
NOTES = {
    "torchvision": "a state dict for the stock torchvision model built as in how_to_load",
    "timm": "a state dict for timm.create_model with architecture.build_kwargs",
    "safetensors": "the torchvision / timm state dict; metadata['preprocessing'] holds this "
    "file's content",
    "onnx": "any batch size; the image size is fixed to input.image_size",
    "torchscript": "traced: any batch size at input.image_size. torch.jit is deprecated from "
    "torch 2.10 on (it warns); prefer onnx or safetensors for long-term storage",
    "hf": "a timm / Hugging Face hub model folder: config.json + model.safetensors + README.md; "
    "loads with timm.create_model (see how_to_load) or selfsup.load_backbone",
}


@dataclass
class ExportResult:
    """What :func:`export_backbone` wrote. ``files``: the model file(s), then
    ``preprocessing.json``; ``info``: that JSON's content; ``max_abs_diff``: the largest
    difference between the exported network and the run's on a random batch (None when the
    check was skipped)."""

    format: str
    out_dir: Path
    files: list[Path]
    info: dict[str, Any]
    max_abs_diff: float | None


@dataclass
class OpenedBackbone:
    """A run's backbone ready to export: ``backbone`` (fp32, eval mode) and its ``role``
    (teacher, student or backbone); ``evaluated``: whether it is the network the method
    evaluates with; ``config``: the run's config as rebuilt (no weights file), ``run_config``:
    as saved; ``loaded``: the opened run."""

    backbone: Backbone
    role: str
    evaluated: bool
    config: Config
    run_config: Config
    loaded: LoadedRun


def open_backbone(run: str | Path, which: str | None = None) -> OpenedBackbone:
    """Open the backbone of ``run`` (a run folder or checkpoint file) that an export writes:
    the one the method evaluates with, or with ``which`` its ``"teacher"`` / ``"student"``."""
    ckfile = ckpt_io.resolve(run)

    def without_weights_file(run_cfg: Config) -> Config:
        # The checkpoint holds the trained weights: the file training started from
        # (backbone.weights) is not needed, and may no longer exist.
        if run_cfg.data.image_size is None:
            raise ckpt_io.CheckpointError(
                f"{str(ckfile)!r} does not record its image size (data.image_size); was it "
                "written by selfsup pretrain?"
            )
        return replace(run_cfg, backbone=replace(run_cfg.backbone, weights=None))

    loaded = load_run(ckfile, adjust=without_weights_file)
    bb, role = _choose(loaded.method, which)
    evaluated = bb is loaded.method.feature_extractor()
    run_cfg = C.from_dict(loaded.checkpoint["config"])
    return OpenedBackbone(bb.float().eval(), role, evaluated, loaded.config, run_cfg, loaded)


def export_backbone(
    run: str | Path,
    format: str,
    out: str | Path | None = None,
    *,
    which: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
    license: str = "other",
    quantize: str | None = None,
    int8: Int8Options | None = None,
) -> ExportResult:
    """Export the backbone of ``run`` (a run folder or checkpoint file) as ``format``.

    ``out``: the folder written (default ``<run>/export/<format>``), or for single-file
    formats a file name with the format's extension (``SUFFIXES``), ``preprocessing.json``
    beside it; it must not already hold an export unless ``overwrite``. ``which``:
    ``"teacher"`` or ``"student"`` for methods with an EMA teacher (DINO, BYOL, MoCo...);
    default: the one the method evaluates with. ``verify`` loads the written file the way
    ``preprocessing.json`` says and compares its features ``(B, D)`` with the run's on a
    random batch ``(3, C, S, S)``. ``license``: the hf model card's and config's license.
    ``quantize="int8"`` (onnx only): also write the int8 model beside the float one, as
    ``int8`` says (default :class:`Int8Options`: 256 calibration images from the run's data);
    its kNN check, when asked for, is in ``info["quantization"]["knn"]`` (``passed``).
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}.")
    _check_quantize(format, quantize, int8)
    opened = open_backbone(run, which)
    bb, role, cfg, loaded = opened.backbone, opened.role, opened.config, opened.loaded
    size = cfg.data.image_size
    assert size is not None
    spec = hub.hub_spec(bb) if format == "hf" else None  # refuses what timm cannot build
    family = _family(bb)
    if format in ("torchvision", "timm") and family != format:
        raise ConfigError(
            f"--format {format} needs a {format} backbone, but {str(loaded.file)!r} has "
            f"{bb.name} ({family}). Use --format {family}, safetensors, onnx or torchscript."
        )
    if format == "onnx":
        _require("onnx", "onnxscript")
    plan: Int8Plan | None = None
    if quantize is not None:
        data = opened.run_config.data
        plan = plan_int8(int8 or Int8Options(), data.path, data.root)

    out_dir, model_file = _target(out, format, loaded.folder)
    _check_out(out_dir, model_file, overwrite)
    if plan is not None and int8_path(model_file).exists() and not overwrite:
        raise ConfigError(
            f"{str(int8_path(model_file))!r} already exists. Choose another --out, or pass "
            "--overwrite to replace it."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = cfg.backbone.in_chans
    info = _info(format, bb, role, opened.run_config, loaded.file, loaded.checkpoint, size,
                 channels, model_file.name)  # fmt: skip
    info["source"]["evaluated"] = opened.evaluated
    if spec is not None:
        info["hf"] = {"architecture": spec.architecture, "model_args": spec.model_args,
                      "small_stem": spec.small_stem, "license": license}  # fmt: skip
        written = hub.write_hf(bb, spec, out_dir, info, license)
    else:
        written = _write(format, bb, info, model_file, channels, size)

    diff: float | None = None
    if verify:
        diff, note = _check(format, bb, model_file, channels, size)
        info["check"] = {"max_abs_diff": diff, "input": f"seeded random ({CHECK_BATCH}, "
                         f"{channels}, {size}, {size}) float32", "note": note}  # fmt: skip
    if spec is not None:
        from selfsup.model_card import write_card

        state = loaded.checkpoint.get("state")
        written.append(write_card(out_dir, spec, info, opened.run_config, loaded.folder,
                                  state if isinstance(state, dict) else {}, license))  # fmt: skip
    info["files"] = [p.name for p in written] + [PREPROCESSING]
    meta_file = out_dir / PREPROCESSING
    meta_file.write_text(json.dumps(info, indent=2) + "\n")
    if plan is not None:
        # The float export is complete (and described) before quantisation starts, so that
        # a failure there leaves a usable float model.
        int8_file, info["quantization"] = quantize_export(model_file, info, plan)
        written.append(int8_file)
        info["files"] = [p.name for p in written] + [PREPROCESSING]
        meta_file.write_text(json.dumps(info, indent=2) + "\n")
    return ExportResult(format, out_dir, [*written, meta_file], info, diff)


def _check_quantize(fmt: str, quantize: str | None, int8: Int8Options | None) -> None:
    if quantize is None:
        if int8 is not None:
            raise ConfigError(
                "the int8 options (--calibration, --calibration-data, --knn-*, --tolerance) "
                "apply to --quantize int8 only: add --quantize int8, or drop them."
            )
        return
    if quantize != "int8":
        raise ConfigError(f"--quantize {quantize}: the only quantisation is int8.")
    if fmt != "onnx":
        raise ConfigError(
            f"--quantize int8 needs --format onnx (onnxruntime quantises the ONNX file), not "
            f"--format {fmt}: export with --format onnx --quantize int8."
        )


def _write(
    fmt: str, bb: Backbone, info: dict[str, Any], model_file: Path, channels: int, size: int
) -> list[Path]:
    """Write the model file(s) of a single-file format; returns them."""
    state = {k: v.detach().clone().contiguous() for k, v in bb.net.state_dict().items()}
    example = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    if fmt in ("torchvision", "timm"):
        torch.save(state, model_file)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        core = {k: v for k, v in info.items() if k != "how_to_load"}
        meta = {"format": "pt", "selfsup_version": info["selfsup_version"],
                "backbone": bb.name, "preprocessing": json.dumps(core)}  # fmt: skip
        save_file(state, str(model_file), metadata=meta)
    elif fmt == "onnx":
        return _export_onnx(bb, example, model_file)
    else:
        with torch.no_grad():
            # torch.jit is deprecated (torch >= 2.10) and untyped; its warnings are shown.
            traced = torch.jit.trace(bb, (example,))  # type: ignore[no-untyped-call]
        torch.jit.save(traced, str(model_file))
    return [model_file]


# ----------------------------------------------------------------------------- choices


def _choose(method: Method, which: str | None) -> tuple[Backbone, str]:
    """The backbone to export and its role: teacher, student, or backbone (only one)."""
    student = method.backbone
    others = [m for m in method.children() if isinstance(m, Backbone) and m is not student]
    teacher = others[0] if len(others) == 1 else None
    name = method.name or type(method).__name__
    if which is None:
        chosen = method.feature_extractor()
    elif which not in ("teacher", "student"):
        raise ConfigError(f"which must be 'teacher', 'student' or unset, not {which!r}.")
    elif len(others) > 1:
        raise ConfigError(
            f"--{which}: the {name} run has {len(others) + 1} backbones, so teacher and "
            "student are ambiguous; drop the option to export the one it evaluates with."
        )
    elif teacher is None:
        raise ConfigError(
            f"--{which}: the {name} run has a single backbone (no EMA teacher), so there is "
            "no teacher or student to choose; drop the option."
        )
    else:
        chosen = teacher if which == "teacher" else student
    if not isinstance(chosen, Backbone):
        raise ConfigError(
            f"the {name} method evaluates with a {type(chosen).__name__}, not a selfsup "
            "Backbone, so it cannot be exported as a stock model."
        )
    role = "backbone" if teacher is None else ("teacher" if chosen is teacher else "student")
    return chosen, role


def _family(bb: Backbone) -> str:
    if bb.name.startswith("timm:"):
        return "timm"
    if bb.name in TORCHVISION_RESNETS:
        return "torchvision"
    raise ConfigError(f"backbone {bb.name!r} is neither a torchvision ResNet nor a timm model.")


def _require(*modules: str, what: str = "--format onnx") -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"{what} needs the package(s) {', '.join(missing)}: pip install "
            "'selfsup[export]' (onnx, onnxscript, onnxruntime)."
        )


def _target(out: str | Path | None, fmt: str, run_dir: Path) -> tuple[Path, Path]:
    """The folder to write and the model file in it: ``--out`` is the model file when it
    ends in the format's extension (and is no folder already), else the folder."""
    if out is None:
        folder = run_dir / "export" / fmt
        return folder, folder / FILES[fmt]
    p = Path(out)
    suffix = "".join(p.suffixes[-1:]).lower()
    if suffix in SUFFIXES[fmt] and not p.is_dir():
        return p.parent, p
    if suffix in {s for fmt_suffixes in SUFFIXES.values() for s in fmt_suffixes}:
        if fmt == "hf":
            raise ConfigError(
                f"--out {str(out)!r}: --format hf writes a folder (config.json, "
                "model.safetensors, README.md); give a folder, or use --format safetensors "
                "for a single file."
            )
        raise ConfigError(
            f"--out {str(out)!r} ends in {suffix}, but --format {fmt} writes a "
            f"{' / '.join(SUFFIXES[fmt])} file: give a folder or a file name ending in "
            f"{' or '.join(SUFFIXES[fmt])}."
        )
    return p, p / FILES[fmt]


def _check_out(out_dir: Path, model_file: Path, overwrite: bool) -> None:
    """Refuse to mix two exports in one folder, or to replace a file; with ``overwrite``,
    remove the files the earlier export listed (an ONNX weights side file would otherwise
    linger)."""
    meta = out_dir / PREPROCESSING
    if out_dir.exists() and not out_dir.is_dir():
        ends = " or ".join(s for v in SUFFIXES.values() for s in v if s != ".pth")
        raise ConfigError(
            f"--out {str(out_dir)!r} is a file; give a folder (or a new file name ending "
            f"in the format's extension: {ends})."
        )
    if not meta.exists():
        if model_file.exists() and not overwrite:
            raise ConfigError(
                f"{str(model_file)!r} already exists. Choose another --out, or pass "
                "--overwrite to replace it."
            )
        return
    try:
        old = json.loads(meta.read_text())
        was, files = str(old.get("format", "?")), [str(f) for f in old.get("files", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        was, files = "?", []
    if not overwrite:
        raise ConfigError(
            f"{str(out_dir)!r} already holds an export ({PREPROCESSING}, format {was}). "
            "Choose another --out, or pass --overwrite to replace its files."
        )
    for name in files:
        old_file = out_dir / Path(name).name  # plain names only: never outside the folder
        if old_file.is_file():
            old_file.unlink()


# ----------------------------------------------------------------------------- metadata


def _info(
    fmt: str,
    bb: Backbone,
    role: str,
    cfg: C.Config,
    ckfile: Path,
    ckpt: dict[str, Any],
    size: int,
    channels: int,
    file: str,
) -> dict[str, Any]:
    from selfsup import __version__

    family = _family(bb)
    resize = eval_resize(size)
    mean, std = [float(m) for m in cfg.data.mean], [float(s) for s in cfg.data.std]
    mode = {1: '"L"', 3: '"RGB"'}.get(channels)
    preprocess = [
        "import torch",
        "from torchvision.transforms import v2",
        "preprocess = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),",
        f"                        v2.Resize({resize}, antialias=True), v2.CenterCrop({size}),",
        f"                        v2.Normalize({mean}, {std})])",
        f"x = preprocess(image.convert({mode})).unsqueeze(0)  # PIL image -> (1, {channels}, "
        f"{size}, {size})"
        if mode
        else f"# {channels}-band images: a float tensor (C, H, W) in [0, 1] per band, then "
        "preprocess[1:]",
    ]
    state = ckpt.get("state") or {}
    return {
        "format": fmt,
        "files": [file, PREPROCESSING],
        "selfsup_version": __version__,
        "torch_version": torch.__version__,
        "source": {
            "checkpoint": str(ckfile.resolve()),
            "method": cfg.method.name,
            "step": state.get("step") if isinstance(state, dict) else None,
            "role": role,
        },
        "architecture": {
            "backbone": bb.name,
            "family": family,
            "build_kwargs": dict(bb.build_kwargs),
            "config": C.to_dict(cfg)["backbone"],
        },
        "small_stem": bb.build_kwargs.get("small_stem") if family == "torchvision" else None,
        "embed_dim": bb.embed_dim,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", channels, size, size],
            "dtype": "float32",
            "channels": channels,
            "image_size": size,
            "resize": resize,
            "mean": mean,
            "std": std,
            "steps": [
                f"decode to {channels} channel(s) (grayscale repeated when 3 are expected)",
                "uint8 -> float32 in [0, 1]",
                f"resize the shorter side to {resize} px (bilinear, antialiased)",
                f"centre-crop {size} x {size}",
                "normalise each channel: (x - mean) / std",
            ],
            "preprocess": preprocess,
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", bb.embed_dim], "dtype": "float32"},
        "how_to_load": _how_to_load(fmt, bb, file, channels, size),
        "note": NOTES[fmt],
    }


def _architecture_lines(bb: Backbone) -> list[str]:
    """Python lines that build the stock model ``net`` the state dict loads into."""
    kw = bb.build_kwargs
    if _family(bb) == "timm":
        args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        return ["import timm, torch", f"net = timm.create_model({bb.name[5:]!r}, "
                f"pretrained=False, {args})"]  # fmt: skip
    c = kw["in_chans"]
    lines = ["import torch, torchvision", "from torch import nn",
             f"net = torchvision.models.{bb.name}(weights=None)",
             "net.fc = nn.Identity()  # features, no classifier"]  # fmt: skip
    if kw["small_stem"]:
        lines += [f"net.conv1 = nn.Conv2d({c}, 64, kernel_size=3, stride=1, padding=1, "
                  "bias=False)  # small-image stem", "net.maxpool = nn.Identity()"]  # fmt: skip
    elif c != 3:
        lines.append(
            f"net.conv1 = nn.Conv2d({c}, 64, kernel_size=7, stride=2, padding=3, bias=False)"
        )
    return lines


def _how_to_load(fmt: str, bb: Backbone, file: str, channels: int, size: int) -> list[str]:
    """Runnable lines that load ``file`` (from the export folder) and compute ``features``
    from a normalised float32 batch ``x`` (B, C, S, S)."""
    shape = f"x: (B, {channels}, {size}, {size}) normalised float32 -> (B, {bb.embed_dim})"
    if fmt == "hf":
        return hub.how_to_load(hub.hub_spec(bb), shape)
    if fmt == "onnx":
        return ["import numpy as np, onnxruntime as ort",
                f'session = ort.InferenceSession("{file}", providers=["CPUExecutionProvider"])',
                f'features = session.run(["{OUTPUT_NAME}"], {{"{INPUT_NAME}": '
                f"np.asarray(x, dtype=np.float32)}})[0]  # {shape}"]  # fmt: skip
    if fmt == "torchscript":
        return ["import torch", f'net = torch.jit.load("{file}", map_location="cpu").eval()',
                "with torch.no_grad():", f"    features = net(x)  # {shape}"]  # fmt: skip
    if fmt == "safetensors":
        load = ["from safetensors.torch import load_file",
                f'net.load_state_dict(load_file("{file}"))']  # fmt: skip
    else:
        load = [f'net.load_state_dict(torch.load("{file}", map_location="cpu", weights_only=True))']
    pool = []
    if _family(bb) == "timm" and bb.build_kwargs.get("global_pool") == "":
        # The run pooled unpooled timm outputs itself (Backbone.forward): say how.
        pool = ["features = features.flatten(2).mean(-1) if features.ndim == 4 else "
                "features.mean(1)"]  # fmt: skip
    return [*_architecture_lines(bb), *load, "net.eval()", "with torch.no_grad():",
            f"    features = net(x)  # {shape}", *pool]  # fmt: skip


# ----------------------------------------------------------------------------- formats


def _export_onnx(bb: Backbone, example: torch.Tensor, file: Path) -> list[Path]:
    # torch >= 2.9 defaults to the torch.export-based ("dynamo") exporter and warns that the
    # TorchScript-based one (dynamo=False) will be removed, so we use the former: it needs
    # onnxscript, and takes the dynamic batch axis as a torch.export.Dim. The example batch
    # is 2 because torch.export specialises dimensions of size 0 and 1.
    batch = torch.export.Dim("batch")
    try:
        program = torch.onnx.export(
            bb, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},), verbose=False,
        )  # fmt: skip
    except Exception as err:
        raise ConfigError(
            f"torch.onnx.export could not export {bb.name}: {type(err).__name__}: {err}. "
            "Try --format torchscript or safetensors instead."
        ) from err
    assert program is not None
    # external_data=None: weights go into a side file (backbone.onnx.data) only for models
    # beyond the 2 GB protobuf limit.
    program.save(str(file), external_data=None)
    return sorted(p for p in file.parent.glob(file.name + "*") if p.is_file())


def _stock_model(bb: Backbone) -> nn.Module:
    """The stock torchvision / timm model of ``_architecture_lines``, freshly initialised."""
    scope: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        # The very lines written to preprocessing.json, so the self-check proves them too.
        exec("\n".join(_architecture_lines(bb)), scope)
    net = scope["net"]
    assert isinstance(net, nn.Module)
    return net


def _check(
    fmt: str, bb: Backbone, file: Path, channels: int, size: int
) -> tuple[float | None, str]:
    """Load ``file`` as a user would and compare its features with ``bb``'s."""
    x = torch.randn(CHECK_BATCH, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = bb(x)
        if fmt == "onnx":
            if importlib.util.find_spec("onnxruntime") is None:
                return None, "not checked: onnxruntime is not installed"
            import onnxruntime as ort

            sess = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
            how = "onnxruntime (CPU)"
        elif fmt == "hf":
            got, how = hub.check_hf(bb, file.parent, x)
        elif fmt == "torchscript":
            loaded = torch.jit.load(str(file), map_location="cpu")  # type: ignore[no-untyped-call]
            got = loaded.eval()(x)
            how = "torch.jit.load"
        else:
            net = _stock_model(bb)
            if fmt == "safetensors":
                from safetensors.torch import load_file

                state = load_file(str(file))
            else:
                state = torch.load(file, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
            # Backbone.forward pools outputs that are not (B, D) (timm global_pool=""), as
            # the how_to_load lines do.
            got = Backbone(net.eval(), bb.embed_dim, bb.name)(x)
            how = f"the stock {_family(bb)} model (strict=True)"
    if got.shape != want.shape:
        raise RuntimeError(
            f"the exported {fmt} file gives features {tuple(got.shape)}, not "
            f"{tuple(want.shape)}: a bug in selfsup export; please report it."
        )
    diff = float((got.float() - want).abs().max())
    tol = CHECK_RTOL * max(1.0, float(want.abs().max()))
    if not diff <= tol:
        raise RuntimeError(
            f"the exported {fmt} file ({file}) gives features that differ from the run's by "
            f"{diff:.3g} (tolerance {tol:.3g}) when loaded with {how}; do not use it. This is a "
            f"bug in selfsup export or in the {fmt} exporter for {bb.name}: please report it."
        )
    dynamic = f"; batch {CHECK_BATCH}, traced with 2" if fmt in ("onnx", "torchscript") else ""
    return diff, f"loaded with {how}{dynamic}"
