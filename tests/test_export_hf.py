"""selfsup export --format hf and selfsup.load_backbone: the folder loads with timm in a
process where selfsup cannot be imported and gives the run's features; config.json has
timm's layout; the model card tells the method, budget and recorded evaluations;
load_backbone reads a run, a checkpoint and an hf folder alike; --out FILE.onnx is a file."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from conftest import CIFAR10
from safetensors.torch import load_file, save_file
from torch import nn
from viz_runs import cifar_subset

import selfsup
from selfsup import cli, hub
from selfsup import config as C
from selfsup.backbones import Backbone
from selfsup.backbones.factory import TORCHVISION_RESNETS
from selfsup.config import ConfigError
from selfsup.eval.records import record_evaluation
from selfsup.export import export_backbone
from selfsup.train.checkpoint import CheckpointError
from selfsup.transforms.base import eval_resize

SIZE = 16
TINY_VIT = "backbone.kwargs={patch_size: 4, depth: 2, num_heads: 3}"
ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One-step SimCLR runs on real images: a small-stem resnet18 whose kNN monitor runs
    (4 held-out images), and a 2-block timm ViT with 4 px patches, without monitor; plus a
    1-channel standard-stem resnet18 checkpoint file (untrained, written directly)."""
    root = tmp_path_factory.mktemp("export_hf")
    data = cifar_subset(CIFAR10, root / "imgs", classes=2, per_class=8)
    common: dict[str, Any] = dict(
        data=str(data), steps=1, batch_size=8, image_size=SIZE, workers=0, progress=False
    )
    selfsup.pretrain("simclr", out=root / "resnet", **common,
                     overrides=["monitor.holdout=2", "monitor.k=3", "monitor.bank=12"])  # fmt: skip
    selfsup.pretrain("simclr", out=root / "vit", backbone="timm:vit_tiny_patch16_224",
                     overrides=["monitor.knn=false", TINY_VIT], **common)  # fmt: skip
    cfg = selfsup.make_config("simclr", backbone="resnet18", image_size=SIZE, channels=1,
                              small_stem=False, overrides=["data.mean=[0.5]", "data.std=[0.25]"])  # fmt: skip
    (root / "gray").mkdir()
    torch.save({"config": C.to_dict(cfg), "method": selfsup.build_method(cfg).state_dict()},
               root / "gray" / "ck.pt")  # fmt: skip
    return {"resnet": root / "resnet", "vit": root / "vit", "gray": root / "gray" / "ck.pt"}


@functools.cache
def _net(run: Path) -> nn.Module:
    net = selfsup.load_method(run).feature_extractor()
    assert isinstance(net, nn.Module)
    return net


@torch.no_grad()
def _reference(run: Path, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _net(run)(x)
    return out


def _x(channels: int = 3, batch: int = 5) -> torch.Tensor:
    return torch.randn(batch, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.float() - b.float()).abs().max())


# ----------------------------------------------------------------------------- timm alone

# Loads every folder of sys.argv[2:] with timm in a process where `import selfsup` fails:
# by preprocessing.json's how_to_load lines (run in the folder) and, where timm knows local
# folders, by timm.create_model("local-dir:<folder>", pretrained=True) as the hub would.
NO_SELFSUP = textwrap.dedent(
    """
    import importlib.abc, json, os, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "selfsup" or name.startswith("selfsup."):
                raise ModuleNotFoundError("selfsup is blocked in this test")

    sys.meta_path.insert(0, Block())
    try:
        import selfsup
        sys.exit("selfsup could be imported")
    except ImportError:
        pass
    import timm, torch
    from safetensors.torch import load_file, save_file
    from timm.models import _hub

    out_file, folders = sys.argv[1], sys.argv[2:]
    outputs, notes = {}, {}
    for i, folder in enumerate(folders):
        x = load_file(os.path.join(folder, "x.safetensors"))["x"]
        info = json.load(open(os.path.join(folder, "preprocessing.json")))
        scope = {"x": x}
        os.chdir(folder)
        exec("\\n".join(info["how_to_load"]), scope)
        outputs[f"{i}.lines"] = torch.as_tensor(scope["features"]).contiguous()
        if hasattr(_hub, "load_model_config_from_path"):
            try:
                net = timm.create_model("local-dir:" + folder, pretrained=True).eval()
                with torch.no_grad():
                    outputs[f"{i}.local_dir"] = net(x).contiguous()
                notes[str(i)] = dict(net.pretrained_cfg, input_size=list(net.pretrained_cfg["input_size"]))
            except RuntimeError as err:
                notes[str(i)] = {"error": str(err)}
    assert not [m for m in sys.modules if m.split(".")[0] == "selfsup"]
    save_file(outputs, out_file, metadata={"notes": json.dumps(notes)})
    """
)


def _timm_alone(folders: list[Path], tmp: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    script, out = tmp / "load_without_selfsup.py", tmp / "features.safetensors"
    script.write_text(NO_SELFSUP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # nothing may download
    res = subprocess.run(
        [sys.executable, "-I", str(script), str(out), *map(str, folders)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        notes = json.loads(f.metadata()["notes"])
    return load_file(str(out)), notes


def test_hf_folder_loads_with_timm_without_selfsup(runs: dict[str, Path], tmp_path: Path) -> None:
    cases = [("resnet", 3), ("vit", 3), ("gray", 1)]
    folders, wants = [], []
    for kind, channels in cases:
        # The export's own check (timm, in this process) once; the subprocess checks all.
        res = export_backbone(runs[kind], "hf", tmp_path / kind, verify=kind == "resnet")
        assert [p.name for p in res.files] == ["model.safetensors", "config.json", "README.md",
                                               "preprocessing.json"]  # fmt: skip
        if kind == "resnet":
            assert res.max_abs_diff is not None and res.max_abs_diff <= ATOL
            assert "small-stem lines" in res.info["check"]["note"]
        x = _x(channels)
        save_file({"x": x}, str(res.out_dir / "x.safetensors"))
        folders.append(res.out_dir)
        wants.append(_reference(runs[kind], x))
    got, notes = _timm_alone(folders, tmp_path)
    for i, want in enumerate(wants):
        assert _max_diff(got[f"{i}.lines"], want) <= ATOL
    if hasattr(timm.models._hub, "load_model_config_from_path"):
        # This timm reads local folders as it reads hub repos (config.json -> model).
        assert _max_diff(got["1.local_dir"], wants[1]) <= ATOL  # ViT, 4 px patches
        assert _max_diff(got["2.local_dir"], wants[2]) <= ATOL  # 1 channel, standard stem
        assert notes["1"]["input_size"] == [3, SIZE, SIZE] and notes["1"]["crop_pct"] == 1.0
        assert notes["2"]["mean"] == [0.5] and notes["2"]["interpolation"] == "bilinear"
        # The small-image stem is no timm architecture: a loud refusal, never wrong weights.
        assert "conv1.weight" in notes["0"]["error"] and "0.local_dir" not in got


def test_config_json_has_timms_layout(runs: dict[str, Path], tmp_path: Path) -> None:
    vit = json.loads((export_backbone(runs["vit"], "hf", tmp_path / "v", verify=False).out_dir
                      / "config.json").read_text())  # fmt: skip
    assert vit["architecture"] == "vit_tiny_patch16_224" and vit["num_classes"] == 0
    assert vit["num_features"] == 192 and vit["global_pool"] == "token"
    assert vit["model_args"] == {"in_chans": 3, "patch_size": 4, "depth": 2, "num_heads": 3,
                                 "img_size": SIZE}  # fmt: skip
    pre = vit["pretrained_cfg"]
    cfg = selfsup.load_config(runs["vit"])
    assert pre["input_size"] == [3, SIZE, SIZE] and pre["fixed_input_size"] is True
    assert (pre["mean"], pre["std"]) == (cfg.data.mean, cfg.data.std)
    assert (pre["interpolation"], pre["crop_pct"], pre["crop_mode"]) == ("bilinear", 1.0, "center")
    assert (pre["num_classes"], pre["first_conv"], pre["classifier"]) == (0, "patch_embed.proj",
                                                                          "head")  # fmt: skip
    assert vit["selfsup"]["method"] == "simclr" and vit["selfsup"]["small_stem"] is False
    # Every key is one timm's own writer uses (save_config_for_hf), plus `selfsup`.
    stock = timm.create_model("resnet18", num_classes=0)
    timm_cfg = tmp_path / "timm.json"
    timm.models._hub.save_config_for_hf(stock, str(timm_cfg))
    theirs = json.loads(timm_cfg.read_text())
    assert set(vit) - {"selfsup"} <= set(theirs)
    assert set(pre) <= set(theirs["pretrained_cfg"]) | {"license"}

    res = export_backbone(runs["resnet"], "hf", tmp_path / "r", verify=False, license="mit")
    r18 = json.loads((res.out_dir / "config.json").read_text())
    assert r18["architecture"] == "resnet18" and r18["global_pool"] == "avg"
    assert r18["model_args"] == {"in_chans": 3} and r18["pretrained_cfg"]["license"] == "mit"
    assert r18["selfsup"]["small_stem"] is True
    assert r18["selfsup"]["small_stem_lines"] == hub.stem_lines(3)
    assert res.info["hf"]["small_stem"] is True and res.info["format"] == "hf"


@pytest.mark.parametrize("size", [16, 32, 64, 65, 96, 100, 128, 160, 224, 256, 384, 518])
def test_crop_pct_gives_selfsups_resize_in_timm(size: int) -> None:
    # timm's eval transform resizes the shorter side to floor(size / crop_pct).
    assert math.floor(size / hub.crop_pct(size)) == eval_resize(size)


def test_torchvision_and_timm_resnets_share_every_key() -> None:
    """Why a torchvision ResNet exports to timm's architecture of the same name."""
    for name in TORCHVISION_RESNETS:
        with torch.device("meta"):
            tv = getattr(torchvision.models, name)(weights=None)
            tv.fc = nn.Identity()
            tm = timm.create_model(name, pretrained=False, num_classes=0)
        ours = {k: v.shape for k, v in tv.state_dict().items()}
        assert ours == {k: v.shape for k, v in tm.state_dict().items()}, name


# ----------------------------------------------------------------------------- model card


def test_model_card_tells_method_budget_and_evaluations(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    card = (export_backbone(runs["resnet"], "hf", tmp_path / "r", verify=False).out_dir
            / "README.md").read_text()  # fmt: skip
    front = card.split("---\n")[1]
    assert "library_name: timm" in front and "license: other" in front and "- simclr" in front
    for text in ("# resnet18 pretrained with simclr", "SimCLR: two augmented views",
                 "NT-Xent", "| steps 1 |", "1 step, 8 images seen, 1 full epoch", "| device / precision |",
                 "Small-image stem", "net.maxpool = torch.nn.Identity()",
                 'selfsup.load_backbone("path/to/this/folder")', "## Evaluation",
                 "| kNN monitor (online) | trained | 2 images held out", "knn_top1"):  # fmt: skip
        assert text in card, text
    assert "hf-hub:" not in card.split("## How to load")[1].split("selfsup.load_backbone")[0]

    vit = (export_backbone(runs["vit"], "hf", tmp_path / "v", verify=False).out_dir
           / "README.md").read_text()  # fmt: skip
    assert "No evaluation recorded" in vit and 'timm.create_model("hf-hub:<user>/<repo>"' in vit

    run = tmp_path / "vit_run"  # a copy: the evaluations must not leak into other tests
    shutil.copytree(runs["vit"], run)
    # As `selfsup eval knn --checkpoint RUN --floor` records it, then a record of another
    # shape (a string for data, unknown keys, no checkpoint) and a damaged line.
    record_evaluation(run, "knn", {"protocol": "knn", "top1": 41.234, "top5": 88.9, "k": 200,
                                   "n_test": 16, "floor": {"top1": 20.25}, "gain_top1": 20.984},
                      {"train": "cifar10/train", "test": "cifar10/test", "k": 200,
                       "temperature": 0.1, "device": "cpu", "limit_train": None})  # fmt: skip
    odd = {"protocol": "fewshot", "data": "cifar10", "settings": {"shots": 5},
           "results": {"top1": 30.5, "sweep": [1, 2]}, "date": "2025-01-03", "new_key": 1}  # fmt: skip
    with open(run / "evaluations.jsonl", "a") as f:
        f.write(json.dumps(odd) + "\n{damaged\n")
    card = (export_backbone(run, "hf", tmp_path / "v2", verify=False).out_dir
            / "README.md").read_text()  # fmt: skip
    table = card.split("## Evaluation")[1].split("##")[0]
    assert "| protocol | weights | data | settings | results | date |" in table
    rows = [line for line in table.splitlines() if line.startswith("| knn |")]
    assert len(rows) == 1 and rows[0].startswith("| knn | trained | train ")
    assert "| k 200, temperature 0.1 | top1 41.23, top5 88.9, k 200, floor.top1 20.25, " \
           "gain_top1 20.98 |" in rows[0]  # fmt: skip
    assert "| fewshot | trained | cifar10 | shots 5 | top1 30.5 | 2025-01-03 |" in table
    assert table.index("| fewshot |") < table.index("| knn |")  # newest first
    assert "No evaluation recorded" not in card


# ----------------------------------------------------------------------------- load_backbone


def test_load_backbone_from_run_checkpoint_and_hf_folder(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    for kind in ("resnet", "vit"):
        run = runs[kind]
        folder = export_backbone(run, "hf", tmp_path / kind, verify=False).out_dir
        paths = [run, run / "checkpoints" / "last.pt", folder]
        if kind == "vit":
            paths.append(folder / "model.safetensors")  # a file of the folder: the folder
        nets = [selfsup.load_backbone(p) for p in paths]
        x = _x()
        want = _reference(run, x)
        for net in nets:
            assert not net.training
            with torch.no_grad():
                assert _max_diff(net(x), want) <= ATOL
            cfg = net.pretrained_cfg
            assert cfg == nets[0].pretrained_cfg and cfg["input_size"] == (3, SIZE, SIZE)
            data = timm.data.resolve_model_data_config(net)
            assert data["input_size"] == (3, SIZE, SIZE) and data["crop_pct"] == 1.0
            assert tuple(data["mean"]) == tuple(selfsup.load_config(run).data.mean)
        assert isinstance(nets[2], Backbone) and nets[2].embed_dim == want.shape[1]
    gray = selfsup.load_backbone(runs["gray"])
    assert gray.pretrained_cfg["input_size"] == (1, SIZE, SIZE)
    assert gray.pretrained_cfg["mean"] == (0.5,)


def test_load_backbone_errors_name_the_path_and_what_was_expected(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    expected = r"expected a run folder .*checkpoint file.*hf export folder"
    with pytest.raises(
        CheckpointError, match=rf"'{re.escape(str(tmp_path))}/nowhere' does not exist; {expected}"
    ):
        selfsup.load_backbone(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        CheckpointError, match=rf"empty' is not a selfsup run or export; {expected}"
    ):
        selfsup.load_backbone(tmp_path / "empty")
    tv = export_backbone(runs["resnet"], "torchvision", tmp_path / "tv", verify=False).out_dir
    with pytest.raises(
        CheckpointError, match="holds a torchvision export, which loads with its own"
    ):
        selfsup.load_backbone(tv)
    hf = export_backbone(runs["vit"], "hf", tmp_path / "hf", verify=False).out_dir
    with pytest.raises(ConfigError, match="an hf export holds one backbone"):
        selfsup.load_backbone(hf, which="teacher")
    with pytest.raises(ConfigError, match="single backbone"):
        selfsup.load_backbone(runs["vit"], which="teacher")
    (hf / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has config\.json but no model\.safetensors"):
        selfsup.load_backbone(hf)


def test_hf_refuses_what_timm_cannot_build() -> None:
    video = Backbone(nn.Linear(2, 2), 2, "video_vit_tiny")
    with pytest.raises(ConfigError, match=r"'video_vit_tiny' is neither.*safetensors, onnx or "
                                          "torchscript"):  # fmt: skip
        hub.hub_spec(video)
    odd = Backbone(nn.Linear(2, 2), 2, "timm:resnet18")
    odd.build_kwargs = {"num_classes": 0, "act_layer": nn.GELU}
    with pytest.raises(ConfigError, match=r"not JSON.*--format safetensors, onnx or torchscript"):
        hub.hub_spec(odd)


# ----------------------------------------------------------------------------- --out FILE


def test_out_with_the_formats_extension_is_that_file(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "deploy" / "model.onnx"
    argv = ["export", str(runs["vit"]), "--format", "onnx", "--out", str(target), "--no-verify"]
    assert cli.main(argv) == 0  # (the how_to_load lines are run below instead)
    assert target.is_file() and str(target) in capsys.readouterr().out
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx", "preprocessing.json"]
    info = json.loads((tmp_path / "deploy" / "preprocessing.json").read_text())
    assert info["files"] == ["model.onnx", "preprocessing.json"]
    scope: dict[str, Any] = {"x": _x()}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(target.parent)
        exec("\n".join(info["how_to_load"]), scope)
    assert _max_diff(torch.as_tensor(scope["features"]), _reference(runs["vit"], _x())) <= 1e-4

    weights = tmp_path / "w" / "weights.safetensors"
    res = export_backbone(runs["vit"], "safetensors", weights, verify=False)
    assert res.files == [weights, weights.parent / "preprocessing.json"] and weights.is_file()
    assert cli.main(["export", str(runs["vit"]), "--format", "safetensors", "--out",
                     str(weights)]) == 2  # fmt: skip
    assert "already holds an export" in capsys.readouterr().err
    res = export_backbone(runs["vit"], "safetensors", weights, verify=False, overwrite=True)
    assert load_file(str(weights)).keys() == _net(runs["vit"]).net.state_dict().keys()
    with pytest.raises(ConfigError, match=r"ends in \.onnx, but --format safetensors writes"):
        export_backbone(runs["vit"], "safetensors", tmp_path / "x" / "m.onnx")
    with pytest.raises(ConfigError, match="--format hf writes a folder"):
        export_backbone(runs["vit"], "hf", tmp_path / "y" / "model.safetensors")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--license", "hf:", "ending in the format's extension", "deploy/dino.onnx",
                   "(default: RUN/export/FORMAT)", "selfsup.load_backbone"):  # fmt: skip
        assert phrase in text, phrase
