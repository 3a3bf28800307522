"""The command line: help, listing, errors, and a tiny pretrain -> eval round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_images

from selfsup.cli import build_parser, main


def _help(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main([*args, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_every_command_documents_every_option_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for args in (
        ["pretrain"], ["eval", "knn"], ["eval", "linear"], ["eval", "fewshot"],
        ["eval", "finetune"], ["eval", "scratch"], ["eval", "selftrain"], ["methods"],
        ["config"], ["data", "check"], ["experiment", "label-efficiency"],
    ):  # fmt: skip
        text = _help(args, capsys)
        # Every option line carries a "(default: ...)" (help itself excepted).
        parser = build_parser()
        sub = parser._subparsers._group_actions[0].choices[args[0]]  # type: ignore[union-attr]
        if len(args) > 1:
            sub = sub._subparsers._group_actions[0].choices[args[1]]  # type: ignore[union-attr]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                text_ = action.help or ""
                assert "default" in text_ or (action.required and "required" in text_), (
                    args,
                    action.option_strings,
                )
        assert "default" in text
    assert "(default: 256)" in " ".join(_help(["pretrain"], capsys).split())  # from the dataclass
    assert "pretrain" in _help([], capsys)


def test_methods_lists_simclr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    assert "simclr" in capsys.readouterr().out
    assert main(["methods", "--json"]) == 0
    assert any(m["name"] == "simclr" for m in json.loads(capsys.readouterr().out))


def test_config_prints_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--method", "simclr"]) == 0
    out = capsys.readouterr().out
    assert "temperature: 0.5" in out and "batch_size: 256" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["pretrain", "--method", "simclrr", "--data", "x"], "Did you mean simclr"),
        (["pretrain", "--data", "/no/such/dir", "--out", "OUT"], "does not exist"),
        (["pretrain", "--data", "x", "optim.lrr=1"], "optim.lrr"),
        (["pretrain", "--data", "x", "--backbone", "resnet19"], "unknown backbone"),
        (["pretrain", "--data", "x", "--max-time", "ten"], "duration"),
        (
            ["eval", "knn", "--checkpoint", "/no/run", "--train", "a", "--test", "b"],
            "does not exist",
        ),
    ],
)
def test_errors_are_one_clear_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    if args[0] == "pretrain" and "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    if "--backbone" in args or "--max-time" in args:
        args[args.index("x")] = str(make_images(tmp_path / "imgs"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_pretrain_then_eval_json_via_entry_point(tmp_path: Path) -> None:
    data = make_images(tmp_path / "imgs", classes=2, per_class=16)
    run = tmp_path / "run"
    pre = subprocess.run(
        [sys.executable, "-m", "selfsup", "pretrain", "--data", str(data), "--out", str(run),
         "--steps", "2", "--batch-size", "8", "--image-size", "16", "--no-progress",
         "monitor.holdout=8", "monitor.bank=16", "method.proj_hidden_dim=32"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pre.returncode == 0, pre.stderr
    assert "kNN monitor top-1" in pre.stdout and (run / "checkpoints" / "last.pt").exists()
    for protocol in ("knn", "linear"):
        ev = subprocess.run(
            [sys.executable, "-m", "selfsup", "eval", protocol, "--checkpoint", str(run),
             "--train", str(data), "--test", str(data), "--json", "--floor"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert ev.returncode == 0, ev.stderr
        out = json.loads(ev.stdout)  # exactly one JSON object on stdout
        for key in ("top1", "top5", "n_train", "n_test", "seconds", "floor", "gain_top1"):
            assert key in out, key
        if protocol == "knn":
            assert out["k"] == 32 and out["temperature"] == 0.1  # k capped by the bank size
        else:
            assert out["n_val"] >= 1 and "lr" in out


def test_every_pretrain_flag_reaches_the_config() -> None:
    # A flag missing from api.SHORTCUTS would be parsed and then silently dropped.
    from selfsup import api, cli

    keys = {key for _, key, _, _ in cli.PRETRAIN_FLAGS}
    assert keys <= set(api.SHORTCUTS.values())
    cfg = api.make_config("simclr", None, [], augment="device", cache="/tmp/c")
    assert cfg.data.augment == "device" and cfg.data.cache == "/tmp/c"
