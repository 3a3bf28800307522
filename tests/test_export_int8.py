"""selfsup export --format onnx --quantize int8: the int8 file loads in onnxruntime, holds
quantised convolutions, is smaller and gives features close to the float ones; calibration is
drawn from the run's own data (or --calibration-data) and recorded; the kNN check computes
float and int8 top-1 and exits non-zero past its tolerance, keeping the files; refusals
explain. The model is the main one, a ResNet-18 with the CIFAR stem (random weights, 16 px)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import make_images

import selfsup
from selfsup import cli
from selfsup import config as C
from selfsup.config import ConfigError
from selfsup.export import export_backbone
from selfsup.quantize import onnx_features

SIZE = 16


def _run(folder: Path, data: Path) -> Path:
    """A run's checkpoint (untrained small-stem resnet18) whose data.path is ``data``."""
    cfg = selfsup.make_config("simclr", backbone="resnet18", image_size=SIZE, small_stem=True,
                              overrides=[f"data.path={data}"])  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights every time: the thresholds below hold for them
        method = selfsup.build_method(cfg)
    folder.mkdir(parents=True)
    ckpt = folder / "last.pt"
    torch.save({"config": C.to_dict(cfg), "method": method.state_dict()}, ckpt)
    return ckpt


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's 20 training images, a planted labelled kNN pair (class c has channel c set
    to 200) and the run, whose data folder is then exported with --quantize int8 once."""
    root = tmp_path_factory.mktemp("int8")
    make_images(root / "data", classes=2, per_class=10, size=20)
    make_images(root / "knn" / "train", classes=2, per_class=10, size=20, seed=1)
    make_images(root / "knn" / "test", classes=2, per_class=5, size=20, seed=2)
    _run(root / "run", root / "data")
    return root


@pytest.fixture(scope="module")
def exported(root: Path) -> dict[str, Any]:
    """One CLI export with the file-name form of --out, 8 calibration images and the kNN
    check at the default tolerance."""
    out = root / "out" / "model.onnx"
    code = cli.main(["export", str(root / "run" / "last.pt"), "--format", "onnx", "--quantize",
                     "int8", "--calibration", "8", "--out", str(out), "--json",
                     "--knn-train", str(root / "knn" / "train"),
                     "--knn-test", str(root / "knn" / "test")])  # fmt: skip
    assert code == 0
    info = json.loads((out.parent / "preprocessing.json").read_text())
    return {"float": out, "int8": out.parent / "model.int8.onnx", "info": info}


def _features(file: Path, x: np.ndarray) -> torch.Tensor:
    sess = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(["features"], {"images": x})[0])


def test_int8_model_runs_in_onnxruntime_close_to_float_and_smaller(
    exported: dict[str, Any], root: Path
) -> None:
    f32, i8 = exported["float"], exported["int8"]
    assert f32.is_file() and i8.is_file()
    x = np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    got, want = _features(i8, x), _features(f32, x)
    assert got.shape == want.shape == (5, 512)  # dynamic batch (the export traced batch 2)
    # Real images, preprocessed as preprocessing.json says, through onnx_features.
    q, _ = onnx_features(i8, root / "knn" / "test", threads=1)
    f, labels = onnx_features(f32, root / "knn" / "test", threads=1)
    assert q.shape == f.shape == (10, 512) and labels.tolist() == [0] * 5 + [1] * 5
    assert float(F.cosine_similarity(q, f, dim=1).min()) > 0.98
    assert not torch.allclose(q, f, atol=1e-4)  # quantised indeed: not the float network
    assert i8.stat().st_size < 0.35 * f32.stat().st_size  # int8 weights, ~1/4 of float32

    graph = onnx.load(str(i8)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # Every convolution reads dequantised int8 activations and weights.
    made_by = {out: n for n in graph.node for out in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 20  # resnet18: conv1 + 16 in blocks + 3 downsample shortcuts
    for conv in convs:
        assert all(made_by[name].op_type == "DequantizeLinear" for name in conv.input[:2])
    weights = {t.name: t for t in graph.initializer}
    dq_weight = made_by[convs[0].input[1]].input[0]
    assert onnx.helper.tensor_dtype_to_np_dtype(weights[dq_weight].data_type) == np.int8


def test_quantisation_is_recorded_with_calibration_from_the_runs_data(
    exported: dict[str, Any], root: Path
) -> None:
    info = exported["info"]
    assert info["files"] == ["model.onnx", "model.int8.onnx", "preprocessing.json"]
    assert info["check"]["max_abs_diff"] <= 1e-4  # the float export's own check still ran
    q = info["quantization"]
    assert q["file"] == "model.int8.onnx"
    assert q["settings"] == {"activation_type": "QUInt8", "weight_type": "QInt8",
                             "per_channel": True, "reduce_range": False,
                             "calibrate_method": "MinMax"}  # fmt: skip
    cal = q["calibration"]
    assert cal == {"images": 8, "requested": 8, "seed": 0, "from": "the run's data.path",
                   "path": str(root / "data"), "images_available": 20}  # fmt: skip
    # Held out: at most a fifth of the 20 images, none of the 8 calibration ones.
    check = q["check"]
    assert check["held_out"] is True and check["images"] == 4
    assert 0.98 < check["min_cosine"] <= check["mean_cosine"] <= 1.0
    assert q["graph_ops"]["Conv"] == 20 and q["graph_ops"]["QuantizeLinear"] > 0
    # The how_to_load lines run as written, from the export folder.
    scope: dict[str, Any] = {"x": np.zeros((2, 3, SIZE, SIZE), np.float32)}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(exported["int8"].parent)
        exec("\n".join(q["how_to_load"]), scope)
    assert scope["features"].shape == (2, 512)


def test_knn_check_records_float_and_int8_top1(exported: dict[str, Any]) -> None:
    knn = exported["info"]["quantization"]["knn"]
    assert (knn["k"], knn["temperature"], knn["n_train"], knn["n_test"]) == (20, 0.1, 20, 10)
    assert knn["float"]["top1"] == 100.0  # the planted colour separates the classes
    assert knn["drop"] == knn["float"]["top1"] - knn["int8"]["top1"]
    assert knn["tolerance"] == 1.0 and knn["passed"] is (knn["drop"] <= 1.0)
    assert knn["passed"]


def test_knn_drop_past_the_tolerance_exits_non_zero_and_keeps_the_files(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative tolerance fails any model; the run's data has moved, so calibration comes
    from --calibration-data."""
    run = _run(tmp_path / "moved", tmp_path / "gone")
    out = tmp_path / "export"
    code = cli.main(["export", str(run), "--format", "onnx", "--quantize", "int8", "--no-verify",
                     "--calibration", "4", "--calibration-data", str(root / "data"),
                     "--out", str(out), "--knn-train", str(root / "knn" / "train"),
                     "--knn-test", str(root / "knn" / "test"), "--knn-limit-train", "8",
                     "--knn-limit-test", "6", "--tolerance", "-101"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "int8 kNN top-1" in captured.out
    err = " ".join(captured.err.split())
    assert "more than --tolerance -101" in err and "The files are kept" in err
    assert (out / "backbone.onnx").is_file() and (out / "backbone.int8.onnx").is_file()
    q = json.loads((out / "preprocessing.json").read_text())["quantization"]
    assert q["knn"]["passed"] is False and q["knn"]["tolerance"] == -101
    assert (q["knn"]["n_train"], q["knn"]["n_test"]) == (8, 6)
    assert q["calibration"]["from"] == "--calibration-data" and q["calibration"]["images"] == 4
    assert q["calibration"]["path"] == str(root / "data")


def test_onnx_features_match_selfsup_extract(exported: dict[str, Any], root: Path) -> None:
    """The float model through onnx_features (preprocessing.json's size, mean, std) gives the
    features selfsup's own evaluation computes for the run: preprocessing agrees exactly."""
    got, labels = onnx_features(exported["float"], root / "knn" / "train", threads=1,
                                batch_size=7)  # fmt: skip
    want, want_labels = selfsup.extract(root / "run" / "last.pt", str(root / "knn" / "train"),
                                        precision="fp32", device="cpu", cache=False)  # fmt: skip
    assert torch.equal(labels, want_labels)
    assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))


def test_refusals_name_the_option(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = str(root / "run" / "last.pt")
    assert cli.main(["export", run, "--format", "safetensors", "--quantize", "int8",
                     "--out", str(tmp_path / "a")]) == 2  # fmt: skip
    assert "--quantize int8 needs --format onnx" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs --format onnx"):
        export_backbone(run, "torchscript", tmp_path / "b", quantize="int8")
    assert cli.main(["export", run, "--format", "onnx", "--calibration", "8",
                     "--out", str(tmp_path / "c")]) == 2  # fmt: skip
    assert "add --quantize int8" in capsys.readouterr().err
    assert cli.main(["export", run, "--format", "onnx", "--quantize", "int8", "--knn-train",
                     str(root / "knn" / "train"), "--out", str(tmp_path / "d")]) == 2  # fmt: skip
    assert "--knn-train needs its partner" in capsys.readouterr().err
    unlabelled = make_images(tmp_path / "flat", classes=1, per_class=2)
    assert cli.main(["export", run, "--format", "onnx", "--quantize", "int8", "--knn-train",
                     str(unlabelled / "class0"), "--knn-test", str(root / "knn" / "test"),
                     "--out", str(tmp_path / "e")]) == 2  # fmt: skip
    assert "has no labels" in capsys.readouterr().err

    moved = _run(tmp_path / "moved", tmp_path / "gone")
    assert cli.main(["export", str(moved), "--format", "onnx", "--quantize", "int8",
                     "--out", str(tmp_path / "f")]) == 2  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot read the run's training data (data.path) '{tmp_path / 'gone'}'" in err
    assert "Pass --calibration-data DIR" in err
    assert not any((tmp_path / n).exists() for n in "abcdef")  # nothing written on refusal

    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--quantize", "--calibration N", "--calibration-data", "--knn-train",
                   "--knn-test", "--knn-limit-train", "--tolerance"):  # fmt: skip
        assert option in text
    assert "dynamic quantisation covers only MatMul/Linear layers" in text
    assert "(default: 256)" in text and "(default: 1.0)" in text
