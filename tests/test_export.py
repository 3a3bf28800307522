"""selfsup export: each format, loaded back by its own library (stock torchvision / timm
models with strict=True, safetensors, onnxruntime, torch.jit), gives the features of the run's
feature extractor; preprocessing.json's loading lines run as written; refusals explain."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision
from conftest import CIFAR10
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from viz_runs import cifar_subset

import selfsup
from selfsup import cli
from selfsup import config as C
from selfsup.config import ConfigError
from selfsup.export import export_backbone
from selfsup.train.checkpoint import CheckpointError

SIZE = 16
TINY_VIT = "backbone.kwargs={patch_size: 4, depth: 2, num_heads: 3}"
ATOL = 1e-4  # fp32 ONNX Runtime / TorchScript kernels differ from eager by ~1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two one-step runs: BYOL on a small-stem resnet18 (a method with an EMA teacher) and
    SimCLR on a 2-block timm ViT with 4 px patches."""
    root = tmp_path_factory.mktemp("export")
    data = cifar_subset(CIFAR10, root / "imgs", classes=2, per_class=8)  # real images
    common: dict[str, Any] = dict(
        data=str(data), steps=1, batch_size=8, image_size=SIZE, workers=0, progress=False
    )
    selfsup.pretrain("byol", out=root / "resnet", overrides=["monitor.knn=false"], **common)
    selfsup.pretrain("simclr", out=root / "vit", backbone="timm:vit_tiny_patch16_224",
                     overrides=["monitor.knn=false", TINY_VIT], **common)  # fmt: skip
    return {"resnet": root / "resnet", "vit": root / "vit"}


def _x(batch: int = 5, channels: int = 3) -> torch.Tensor:
    # Batch 5: neither the export's example batch (2) nor its self-check's (3).
    return torch.randn(batch, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


@functools.cache
def _method(run: Path) -> selfsup.Method:
    return selfsup.load_method(run)  # in eval mode: forwards change nothing


@torch.no_grad()
def _reference(run: Path, x: torch.Tensor, which: str | None = None) -> torch.Tensor:
    method = _method(run)
    net = method.feature_extractor()
    if which is not None:  # BYOL: the EMA teacher is `target_backbone`
        net = method.target_backbone if which == "teacher" else method.backbone
    assert isinstance(net, nn.Module)
    out: torch.Tensor = net(x)
    return out


def _stock_resnet18(small_stem: bool = True, in_chans: int = 3) -> nn.Module:
    """Stock torchvision resnet18 with the changes documented for selfsup backbones."""
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    if small_stem:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def _stock_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                             patch_size=4, depth=2, num_heads=3, img_size=SIZE)  # fmt: skip


def _run_lines(lines: list[str], folder: Path, x: torch.Tensor) -> torch.Tensor:
    """Execute preprocessing.json's how_to_load lines in the export folder, as a user would."""
    scope: dict[str, Any] = {"x": x}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        exec("\n".join(lines), scope)
    return torch.as_tensor(scope["features"])


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.float() - b.float()).abs().max())


# ----------------------------------------------------------------------------- formats


def test_torchvision_state_dict_loads_strictly_into_stock_resnet(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    res = export_backbone(runs["resnet"], "torchvision", tmp_path / "tv")
    assert [p.name for p in res.files] == ["backbone.pth", "preprocessing.json"]
    net = _stock_resnet18().eval()
    net.load_state_dict(torch.load(res.files[0], weights_only=True), strict=True)
    x = _x()
    with torch.no_grad():
        got = net(x)
    want = _reference(runs["resnet"], x)
    assert got.shape == (5, 512) and _max_diff(got, want) <= ATOL
    assert _max_diff(_run_lines(res.info["how_to_load"], res.out_dir, x), want) <= ATOL

    info = json.loads((res.out_dir / "preprocessing.json").read_text())
    assert info == res.info
    assert info["format"] == "torchvision" and info["selfsup_version"] == selfsup.__version__
    assert info["small_stem"] is True and info["embed_dim"] == 512
    assert info["architecture"]["backbone"] == "resnet18"
    cfg = selfsup.load_config(runs["resnet"])
    inp = info["input"]
    assert (inp["image_size"], inp["channels"], inp["resize"]) == (SIZE, 3, SIZE)
    assert inp["mean"] == cfg.data.mean and inp["std"] == cfg.data.std
    assert info["source"]["method"] == "byol" and info["source"]["role"] == "student"
    assert info["check"]["max_abs_diff"] == res.max_abs_diff and res.max_abs_diff is not None


def test_timm_state_dict_loads_strictly_into_timm_create_model(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    res = export_backbone(runs["vit"], "timm", tmp_path / "timm")
    net = _stock_vit().eval()
    net.load_state_dict(torch.load(res.files[0], weights_only=True), strict=True)
    x = _x()
    with torch.no_grad():
        got = net(x)
    want = _reference(runs["vit"], x)
    assert got.shape == (5, 192) and _max_diff(got, want) <= ATOL
    assert _max_diff(_run_lines(res.info["how_to_load"], res.out_dir, x), want) <= ATOL
    kw = res.info["architecture"]["build_kwargs"]
    assert kw == {"num_classes": 0, "in_chans": 3, "patch_size": 4, "depth": 2,
                  "num_heads": 3, "img_size": SIZE}  # fmt: skip
    assert res.info["small_stem"] is None and res.info["source"]["role"] == "backbone"


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_safetensors_holds_the_stock_state_dict_and_metadata(
    runs: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    res = export_backbone(runs[kind], "safetensors", tmp_path / "st")
    file = res.out_dir / "backbone.safetensors"
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
    assert meta["selfsup_version"] == selfsup.__version__
    assert json.loads(meta["preprocessing"])["input"] == res.info["input"]
    net = (_stock_resnet18() if kind == "resnet" else _stock_vit()).eval()
    net.load_state_dict(load_file(str(file)), strict=True)
    x = _x()
    with torch.no_grad():
        got = net(x)
    want = _reference(runs[kind], x)
    assert _max_diff(got, want) <= ATOL
    assert _max_diff(_run_lines(res.info["how_to_load"], res.out_dir, x), want) <= ATOL


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_onnx_runs_in_onnxruntime_with_a_dynamic_batch(
    runs: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    res = export_backbone(runs[kind], "onnx", tmp_path / "onnx")
    sess = ort.InferenceSession(str(res.out_dir / "backbone.onnx"),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "images" and out.name == "features"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, SIZE, SIZE]  # symbolic batch
    dim = 512 if kind == "resnet" else 192
    for batch in (1, 5):
        x = _x(batch)
        got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
        assert got.shape == (batch, dim)
        assert _max_diff(got, _reference(runs[kind], x)) <= ATOL
    x = _x()
    lines = _run_lines(res.info["how_to_load"], res.out_dir, x)
    assert _max_diff(lines, _reference(runs[kind], x)) <= ATOL
    assert res.max_abs_diff is not None and res.max_abs_diff <= ATOL


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_torchscript_loads_with_torch_jit(runs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    res = export_backbone(runs[kind], "torchscript", tmp_path / "ts")
    net = torch.jit.load(str(res.out_dir / "backbone.torchscript.pt")).eval()
    x = _x()
    with torch.no_grad():
        got = net(x)
    assert _max_diff(got, _reference(runs[kind], x)) <= ATOL
    assert _max_diff(_run_lines(res.info["how_to_load"], res.out_dir, x), got) <= ATOL


def test_teacher_and_student_of_a_method_with_an_ema_teacher(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    method = _method(runs["resnet"])
    states = {}
    for which in ("teacher", "student"):
        res = export_backbone(runs["resnet"], "safetensors", tmp_path / which, which=which,
                              verify=False)  # fmt: skip
        assert res.info["source"]["role"] == which
        states[which] = load_file(str(res.files[0]))
        x = _x()
        with torch.no_grad():
            got = _stock_resnet18().eval()
            got.load_state_dict(states[which])
            assert _max_diff(got(x), _reference(runs["resnet"], x, which)) <= ATOL
    want = {"teacher": method.target_backbone.net, "student": method.backbone.net}
    for which, state in states.items():
        own = want[which].state_dict()
        assert state.keys() == own.keys() and all(torch.equal(state[k], own[k]) for k in own)
    # One training step moved the student away from its EMA teacher.
    assert any(not torch.equal(states["teacher"][k], states["student"][k]) for k in own)


def test_preprocessing_lines_reproduce_selfsup_extract(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """The JSON's preprocess + how_to_load lines on a PIL image give the features that
    ``selfsup.extract`` computes for that image (resize, crop and normalisation agree)."""
    res = export_backbone(runs["resnet"], "torchvision", tmp_path / "tv")
    folder = tmp_path / "one" / "cls"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (21, 29, 3), dtype=np.uint8)).save(folder / "a.png")
    want, _ = selfsup.extract(runs["resnet"], str(tmp_path / "one"), precision="fp32",
                              device="cpu", cache=False)  # fmt: skip
    scope: dict[str, Any] = {"image": Image.open(folder / "a.png")}
    exec("\n".join(res.info["input"]["preprocess"]), scope)
    got = _run_lines(res.info["how_to_load"], res.out_dir, scope["x"])
    assert _max_diff(got, want) <= ATOL


def test_one_channel_big_stem_resnet_from_a_checkpoint_file(tmp_path: Path) -> None:
    """A 1-channel ResNet with the standard stem, from a checkpoint file (not a run folder)."""
    cfg = selfsup.make_config("simclr", backbone="resnet18", image_size=SIZE, channels=1,
                              small_stem=False, overrides=["data.mean=[0.5]", "data.std=[0.25]"])  # fmt: skip
    method = selfsup.build_method(cfg)
    ckpt = tmp_path / "ck.pt"
    torch.save({"config": C.to_dict(cfg), "method": method.state_dict()}, ckpt)
    res = export_backbone(ckpt, "torchvision")
    assert res.out_dir == tmp_path / "export" / "torchvision"
    assert res.info["small_stem"] is False and res.info["input"]["mean"] == [0.5]
    net = _stock_resnet18(small_stem=False, in_chans=1).eval()
    net.load_state_dict(torch.load(res.files[0], weights_only=True), strict=True)
    x = _x(channels=1)
    with torch.no_grad():
        assert _max_diff(net(x), method.eval().feature_extractor()(x)) <= ATOL


# ----------------------------------------------------------------------------- refusals


def test_refusals_name_the_problem_and_the_fix(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"torchvision backbone.*timm:vit.*--format timm"):
        export_backbone(runs["vit"], "torchvision", tmp_path / "a")
    with pytest.raises(ConfigError, match=r"timm backbone.*resnet18.*--format torchvision"):
        export_backbone(runs["resnet"], "timm", tmp_path / "b")
    with pytest.raises(ConfigError, match="single backbone"):
        export_backbone(runs["vit"], "safetensors", tmp_path / "c", which="teacher")
    with pytest.raises(ConfigError, match="unknown export format 'keras'"):
        export_backbone(runs["vit"], "keras", tmp_path / "d")
    with pytest.raises(CheckpointError, match="does not exist"):
        export_backbone(tmp_path / "nowhere", "onnx")
    assert not any((tmp_path / n).exists() for n in "abcd")  # nothing written on refusal

    out = tmp_path / "again"
    export_backbone(runs["vit"], "safetensors", out, verify=False)
    with pytest.raises(ConfigError, match=r"already holds an export.*safetensors.*--overwrite"):
        export_backbone(runs["vit"], "timm", out)
    res = export_backbone(runs["vit"], "timm", out, overwrite=True, verify=False)
    assert res.info["format"] == "timm" and res.max_abs_diff is None and "check" not in res.info
    assert not (out / "backbone.safetensors").exists()  # the earlier export's file is gone


def test_cli_export_and_its_errors(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    code = cli.main(["export", str(runs["resnet"]), "--format", "torchvision", "--teacher",
                     "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "teacher resnet18" in printed and "max |exported - run|" in printed
    assert json.loads((out / "preprocessing.json").read_text())["source"]["role"] == "teacher"

    assert cli.main(["export", str(runs["vit"]), "--format", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert "selfsup: error: --format torchvision needs a torchvision backbone" in err
    assert cli.main(["export", str(runs["vit"]), "--format", "onnx", "--student"]) == 2
    assert "single backbone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", str(runs["vit"]), "--teacher", "--student", "--format", "onnx"])
    capsys.readouterr()

    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--format", "--out", "--teacher", "--student", "--overwrite", "--no-verify",
                   "--json"):  # fmt: skip
        assert option in text
    assert "(default: RUN/export/FORMAT)" in text and "(default: false)" in text
