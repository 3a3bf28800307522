"""int8 quantisation of an exported ONNX backbone for CPUs, and the checks that it still works.

>>> import selfsup
>>> res = selfsup.export_backbone("runs/simclr", "onnx", quantize="int8")
>>> res.files     # [.../backbone.onnx, .../backbone.int8.onnx, .../preprocessing.json]

Static post-training quantisation (Jacob et al., 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference") as onnxruntime implements it
(``quantize_static``): weights int8 per output channel; activations 8-bit per tensor, with
ranges measured on calibration images drawn from the run's own training data and
preprocessed as ``preprocessing.json`` says; written in the QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantised op, which onnxruntime fuses into integer kernels).
Dynamic quantisation would cover only MatMul / Gemm (Linear layers), leaving every
convolution of a ResNet in float32.

Two checks: the mean cosine similarity of int8 and float features on held-out images of the
same data (always), and optionally kNN top-1 (k = 200, cosine, temperature 0.1) of both models
on a labelled train / test pair, with the drop compared to a tolerance in points.
:func:`onnx_features` (features of an image folder through any ONNX file, on a given number
of threads) is public for benchmarks.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import ConfigError
from selfsup.data import (
    DataError,
    EvalDataset,
    ImageSource,
    SubsetSource,
    open_source,
    stratified_split,
    subset,
)
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_classify
from selfsup.transforms import eval_transform

if TYPE_CHECKING:
    import onnxruntime as ort

INT8_SUFFIX = ".int8.onnx"
# As selfsup.export names them (which imports this module).
PREPROCESSING = "preprocessing.json"
INPUT_NAME, OUTPUT_NAME = "images", "features"
# Held-out images for the cosine check: the data's images not drawn for calibration.
HELD_OUT = 64
# The MinMax calibrator keeps two scalars per tensor and batch, so the batch sets speed, not
# memory. (Not its CalibMaxIntermediateOutputs option: onnxruntime 1.32 drops the batches it
# holds when that count is reached instead of folding them into the ranges.)
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class Int8Settings:
    """How onnxruntime quantises (names of ``onnxruntime.quantization`` enums).

    The defaults, measured on a ResNet-18 with the CIFAR stem at 32 px (random weights, BN
    statistics from CIFAR-10), batch 1 on one thread of a 2-core AVX-512 VNNI CPU under load,
    onnxruntime 1.32 (docs/export.md has the table): float 16.2 ms. QUInt8 activations with
    QInt8 weights (U8S8): 4.9 ms (3.3x), cosine to float 0.998 on 1,000 held-out images, kNN
    top-1 within 0.2 points. S8S8 is as accurate but no faster than float (16.2 ms), U8U8
    hardly (14.7 ms). reduce_range (7-bit weights, for CPUs without VNNI where U8S8 kernels
    can saturate) gains no speed here and loses accuracy (cosine 0.997, min 0.993). Per-
    tensor weights: cosine 0.997 against 0.998 per channel. Percentile / Entropy calibration:
    mean cosine 0.9986 / 0.9979 against MinMax's 0.9979, same minimum, no better kNN, at
    twice the memory (they keep every activation of every calibration image). Random weights
    have shorter-tailed activations than trained ones: the kNN check guards the choice."""

    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    calibrate_method: str = "MinMax"


@dataclass
class Int8Options:
    """What ``export_backbone(..., quantize="int8")`` does: ``calibration`` images (seeded:
    ``seed``) from ``calibration_data`` (default: the run's training data), the kNN check when
    ``knn_train`` and ``knn_test`` are given (at most ``knn_limit_*`` images each, class-
    balanced), failing when int8 top-1 is more than ``tolerance`` points below float."""

    calibration: int = 256
    calibration_data: str | None = None
    seed: int = 0
    knn_train: str | None = None
    knn_test: str | None = None
    knn_limit_train: int | None = None
    knn_limit_test: int | None = None
    tolerance: float = 1.0
    settings: Int8Settings = field(default_factory=Int8Settings)


def int8_path(model_file: Path) -> Path:
    """``backbone.onnx`` -> ``backbone.int8.onnx`` (``x.onnx`` -> ``x.int8.onnx``)."""
    return model_file.with_name(model_file.name[: -len(".onnx")] + INT8_SUFFIX)


# ----------------------------------------------------------------------------- running


def onnx_session(model: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session on ``threads`` intra-op threads (None: onnxruntime's default,
    one per physical core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


class OnnxNet(nn.Module):
    """An ONNX backbone as a torch module, so that selfsup's feature extraction (decoding,
    evaluation transform, unreadable-file policy) feeds it: ``(B, C, S, S)`` -> ``(B, D)``."""

    def __init__(self, model: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.session = onnx_session(model, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: arr})[0]
        return torch.from_numpy(np.asarray(out))


def read_input_spec(model: str | Path) -> dict[str, Any]:
    """The ``input`` section of the ``preprocessing.json`` beside ``model``."""
    import json

    meta = Path(model).parent / PREPROCESSING
    try:
        spec = json.loads(meta.read_text())["input"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"cannot read the preprocessing of {str(model)!r} from {str(meta)!r} ({err}); "
            "pass preprocessing= (the export's preprocessing.json content or its 'input')."
        ) from None
    assert isinstance(spec, dict)
    return spec


def onnx_features(
    model: str | Path,
    images: str | Path | ImageSource,
    *,
    preprocessing: Mapping[str, Any] | None = None,
    threads: int | None = 1,
    batch_size: int = 64,
    limit: int | None = None,
    split: str = "test",
    data_root: str | None = None,
    num_workers: int = 0,
    progress: bool | None = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, D)`` float32 and labels ``(N,)`` (-1: unlabelled) of the images of
    ``images`` (a folder, a named set's ``split`` under ``data_root``, or a source) through
    the ONNX file ``model``, on ``threads`` onnxruntime threads.

    Images are decoded and transformed as selfsup evaluation does, with the size, channels
    and mean/std of ``preprocessing`` (an export's preprocessing.json content or its
    ``input`` section; default: the preprocessing.json beside ``model``). ``limit``: at most
    that many images (class-balanced, seeded). ``num_workers=0`` decodes in this process, so
    that ``threads`` bounds the cores used.
    """
    spec = dict(preprocessing) if preprocessing is not None else read_input_spec(model)
    spec = spec.get("input", spec)
    source = images if not isinstance(images, str | Path) else open_source(
        str(images), split=split, root=data_root, download=False
    )  # fmt: skip
    source = subset(source, limit, seed=0)
    return extract_features(
        OnnxNet(model, threads), source, int(spec["image_size"]), spec["mean"], spec["std"],
        channels=int(spec["channels"]), batch_size=batch_size, channels_last=False,
        num_workers=num_workers, progress=progress, desc=Path(model).name,
    )  # fmt: skip


# ----------------------------------------------------------------------------- calibration


def open_calibration(data: str | None, root: str | None, option: str | None) -> ImageSource:
    """The images to calibrate on: ``option`` (``--calibration-data``) when given, else the
    run's training data ``data`` (its ``data.path``, a named set under ``root``)."""
    from selfsup.data.shards import is_shard_spec

    spec = option or data
    where = "--calibration-data" if option else "the run's training data (data.path)"
    if not spec:
        raise ConfigError(
            "--quantize int8 calibrates on the run's training images, but the run records no "
            "data path; pass --calibration-data DIR (a folder of images like the training ones)."
        )
    fix = ("Pass --calibration-data DIR: a folder of images like the training ones."
           if not option else "Give a folder of images (at any depth).")  # fmt: skip
    if is_shard_spec(spec):
        raise ConfigError(
            f"{where} {spec!r} is a set of shards, which int8 calibration does not read. {fix}"
        )
    try:
        source = open_source(spec, split="train", root=root, download=False)
    except (DataError, OSError) as err:
        raise ConfigError(
            f"cannot read {where} {spec!r} to calibrate the int8 model: {err} {fix}"
        ) from None
    if len(source) == 0:
        raise ConfigError(f"{where} {spec!r} holds no images. {fix}")
    return source


def draw_calibration(
    source: ImageSource, count: int, seed: int
) -> tuple[ImageSource, ImageSource | None]:
    """``count`` calibration images and up to :data:`HELD_OUT` others for the cosine check
    (class-balanced when labelled, reproducible from ``seed``); no held-out images when the
    data has no more images than ``count``; at most a fifth of the images are held out)."""
    n = len(source)
    spare = min(HELD_OUT, n // 5, n - count) if n > count else 0
    held, rest = stratified_split(source.labels, n, spare, seed)
    rest_source = SubsetSource(source, rest)
    calib = subset(rest_source, count, seed=seed + 1)
    return calib, (SubsetSource(source, held) if held else None)


def _as_array(source: ImageSource, spec: Mapping[str, Any]) -> np.ndarray:
    """The readable images of ``source``, preprocessed as ``spec`` says: (N, C, S, S) float32."""
    size = int(spec["image_size"])
    ds = EvalDataset(source, eval_transform(size, spec["mean"], spec["std"]), size,
                     int(spec["channels"]))  # fmt: skip
    items = [ds[i] for i in range(len(ds))]
    ok = [x for x, _, good in items if good]
    if not ok:
        raise DataError(
            f"none of the {len(source)} images drawn from {source.name} could be read; check "
            "the folder with selfsup data check, or pass --calibration-data."
        )
    return torch.stack(ok).numpy().astype(np.float32)


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an array, in batches."""

    def __init__(self, x: np.ndarray) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            {INPUT_NAME: x[i : i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_onnx(float_file: Path, int8_file: Path, calibration: np.ndarray,
                  settings: Int8Settings) -> None:  # fmt: skip
    """Write ``int8_file``: ``float_file`` pre-processed by onnxruntime (shape inference, BN
    folded into convolutions), then statically quantised in the QDQ format with ranges from
    ``calibration`` (N, C, S, S)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = CalibrationMethod[settings.calibrate_method]
    with tempfile.TemporaryDirectory(prefix="selfsup-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_file), str(pre))
        quantize_static(
            str(pre), str(int8_file), _Batches(calibration),
            quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QuantType[settings.activation_type],
            weight_type=QuantType[settings.weight_type], calibrate_method=method,
        )  # fmt: skip


def graph_ops(model: Path) -> dict[str, int]:
    """How many nodes of each op type the ONNX file holds."""
    import onnx

    counts = Counter(node.op_type for node in onnx.load(str(model)).graph.node)
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- checks


def cosine_check(float_file: Path, int8_file: Path, x: np.ndarray) -> dict[str, float | int]:
    """Mean and smallest cosine similarity of int8 and float features of ``x`` (N, C, S, S)."""
    feats = []
    for file in (float_file, int8_file):
        sess = onnx_session(file)
        feats.append(torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]))
    cos = F.cosine_similarity(feats[0].float(), feats[1].float(), dim=1)
    return {"images": len(x), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def open_knn(opts: Int8Options, data_root: str | None = None) -> dict[str, ImageSource] | None:
    """The kNN check's labelled bank and queries (``--knn-train`` / ``--knn-test``, at most
    ``--knn-limit-*`` images each, class-balanced), or None without the check."""
    if opts.knn_train is None or opts.knn_test is None:
        return None
    sources = {}
    for split, spec, limit in (("train", opts.knn_train, opts.knn_limit_train),
                               ("test", opts.knn_test, opts.knn_limit_test)):  # fmt: skip
        option = f"--knn-{split}"
        try:
            src = open_source(spec, split=split, root=data_root, download=False)
        except (DataError, OSError) as err:
            raise ConfigError(f"{option} {spec!r}: {err}") from None
        if src.labels is None:
            raise ConfigError(
                f"{option} {spec!r} has no labels: the kNN check needs class sub-folders "
                "(<class>/<image>) or a named set."
            )
        sources[split] = subset(src, limit, seed=0)
    return sources


def knn_check(
    float_file: Path, int8_file: Path, spec: Mapping[str, Any],
    sources: Mapping[str, ImageSource], tolerance: float,
) -> dict[str, Any]:  # fmt: skip
    """kNN top-1 / top-5 (k = 200, cosine, temperature 0.1; :func:`knn_classify`) of the
    float and int8 models with ``sources["train"]`` as the bank and ``sources["test"]`` as
    queries. ``drop``: float minus int8 top-1, in points; ``passed``: ``drop <= tolerance``."""
    out: dict[str, Any] = {"train": sources["train"].name, "test": sources["test"].name}
    for name, file in (("float", float_file), ("int8", int8_file)):
        ftr, ltr = onnx_features(file, sources["train"], preprocessing=spec, threads=None)
        fte, lte = onnx_features(file, sources["test"], preprocessing=spec, threads=None)
        res = knn_classify(ftr, ltr, fte, lte, k=200, temperature=0.1)
        out[name] = {"top1": res.top1, "top5": res.top5}
        out.update(k=res.k, temperature=res.temperature, n_train=res.n_train,
                   n_test=res.n_test, note=res.note)  # fmt: skip
    out["drop"] = out["float"]["top1"] - out["int8"]["top1"]
    out["tolerance"] = tolerance
    out["passed"] = bool(out["drop"] <= tolerance)
    return out


# ----------------------------------------------------------------------------- the whole step


@dataclass
class Int8Plan:
    """What :func:`plan_int8` opened before anything is written: the calibration ``data``
    (``source``: where it came from, for the record) and the kNN check's sources."""

    options: Int8Options
    data: ImageSource
    source: dict[str, str]
    knn: dict[str, ImageSource] | None


def plan_int8(opts: Int8Options, run_data: str | None, data_root: str | None = None) -> Int8Plan:
    """Check ``opts`` and open the data they name, so that mistakes stop the export before
    it writes anything. ``run_data``: the run's ``data.path``; ``data_root``: its
    ``data.root`` (where named sets live)."""
    from selfsup.export import _require

    _require("onnx", "onnxscript", "onnxruntime", what="--quantize int8")
    if opts.calibration < 1:
        raise ConfigError(f"--calibration {opts.calibration}: give at least 1 image (e.g. 256).")
    if (opts.knn_train is None) != (opts.knn_test is None):
        given = "--knn-train" if opts.knn_train is not None else "--knn-test"
        raise ConfigError(
            f"{given} needs its partner: the kNN check takes both --knn-train (the bank) and "
            "--knn-test (the queries)."
        )
    for name, limit in (("--knn-limit-train", opts.knn_limit_train),
                        ("--knn-limit-test", opts.knn_limit_test)):  # fmt: skip
        if limit is not None and limit < 1:
            raise ConfigError(
                f"{name} {limit}: give a positive number of images, or leave it unset."
            )
    _check_settings(opts.settings)
    data = open_calibration(run_data, data_root, opts.calibration_data)
    own = opts.calibration_data is None
    source = {"from": "the run's data.path" if own else "--calibration-data",
              "path": str(run_data if own else opts.calibration_data)}  # fmt: skip
    return Int8Plan(opts, data, source, open_knn(opts, data_root))


def _check_settings(s: Int8Settings) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantType

    for name, value, enum in (("activation_type", s.activation_type, QuantType),
                              ("weight_type", s.weight_type, QuantType),
                              ("calibrate_method", s.calibrate_method, CalibrationMethod)):  # fmt: skip
        if value not in enum.__members__:
            raise ConfigError(
                f"int8 {name} {value!r} is not an onnxruntime {enum.__name__}: choose one of "
                f"{', '.join(enum.__members__)}."
            )


def quantize_export(
    float_file: Path, info: Mapping[str, Any], plan: Int8Plan
) -> tuple[Path, dict[str, Any]]:
    """Quantise the exported ``float_file`` beside it (:func:`int8_path`) and check it;
    returns the int8 file and the record for preprocessing.json's ``quantization`` key."""
    import onnxruntime

    opts, spec, s = plan.options, info["input"], plan.options.settings
    calib, held = draw_calibration(plan.data, opts.calibration, opts.seed)
    x = _as_array(calib, spec)
    int8_file = int8_path(float_file)
    quantize_onnx(float_file, int8_file, x, s)
    check: dict[str, Any] = dict(cosine_check(float_file, int8_file,
                                              _as_array(held, spec) if held else x))  # fmt: skip
    check["held_out"] = held is not None
    if held is None:
        check["note"] = "on the calibration images: the data has none to spare"
    weights = "per output channel, symmetric" if s.per_channel else "per tensor, symmetric"
    record: dict[str, Any] = {
        "file": int8_file.name,
        "scheme": "static post-training quantisation (onnxruntime quantize_static), QDQ format",
        "settings": asdict(s),
        "weights": f"{s.weight_type}, {weights}",
        "activations": f"{s.activation_type}, per tensor, asymmetric, ranges from calibration",
        "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process",
        "onnxruntime_version": onnxruntime.__version__,
        "calibration": {"images": len(x), "requested": opts.calibration, "seed": opts.seed,
                        **plan.source, "images_available": len(plan.data)},
        "graph_ops": graph_ops(int8_file),
        "check": check,
        "how_to_load": [
            "import numpy as np, onnxruntime as ort",
            f'session = ort.InferenceSession("{int8_file.name}", providers=["CPUExecutionProvider"])',
            f'features = session.run(["{OUTPUT_NAME}"], {{"{INPUT_NAME}": '
            "np.asarray(x, dtype=np.float32)})[0]  # float32 in and out, as the float model",
        ],
    }  # fmt: skip
    if plan.knn is not None:
        record["knn"] = knn_check(float_file, int8_file, spec, plan.knn, opts.tolerance)
    return int8_file, record
