"""The command line: help, listing, errors, and a tiny pretrain -> eval round trip."""

from __future__ import annotations

import argparse
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
            # Hidden options (old spellings kept working, e.g. --progress) are not documented.
            if action.help == argparse.SUPPRESS:
                continue
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


LONG_RUNNING = (
    ["pretrain"], ["eval", "knn"], ["eval", "linear"], ["eval", "fewshot"], ["eval", "finetune"],
    ["eval", "scratch"], ["eval", "selftrain"], ["experiment", "label-efficiency"], ["embed"],
    ["curate"],
)  # fmt: skip


def test_long_running_commands_show_progress_unless_no_progress(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for args in LONG_RUNNING:
        text = " ".join(_help(args, capsys).split())
        assert "--no-progress no progress bar (default: shown)" in text, args
        assert "[--progress]" not in text, args  # the old flag is accepted, not advertised


def test_old_progress_flag_still_parses() -> None:
    for protocol in ("knn", "linear"):
        a = build_parser().parse_args(
            ["eval", protocol, "--checkpoint", "r", "--train", "a", "--test", "b", "--progress"]
        )
        assert a.progress and not a.no_progress


def test_eval_passes_progress_and_floor_to_the_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from selfsup import api, progress
    from selfsup.eval import KNNResult

    seen: list[tuple[bool, bool, bool]] = []

    def fake(protocol: str, model: str, train: str, test: str, **kw: object) -> api.Evaluation:
        seen.append((progress.wanted(None), bool(kw["progress"]), bool(kw["floor"])))
        res = KNNResult(top1=60.0, top5=90.0, k=5, temperature=0.1, n_train=4, n_test=4)
        floor = KNNResult(top1=50.0, top5=80.0, k=5, temperature=0.1, n_train=4, n_test=4)
        return api.Evaluation(protocol, res, floor if kw["floor"] else None)

    monkeypatch.setattr(api, "evaluate", fake)
    base = ["eval", "knn", "--checkpoint", "r", "--train", "a", "--test", "b", "--json"]
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == 60.0
    assert main([*base, "--no-progress", "--floor"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out)[:3] == ["protocol", "checkpoint", "random_init"]
    assert out["floor"]["top1"] == 50.0 and out["gain_top1"] == 10.0
    assert main([*base[:-1], "--floor"]) == 0
    table = capsys.readouterr().out
    assert "gain over floor (points)" in table and "+10.00" in table
    assert seen == [(True, True, False), (False, False, True), (True, True, True)]
    assert progress.wanted(None)  # main() leaves the process default as it found it


def test_api_evaluate_adds_the_random_init_floor(tmp_path: Path) -> None:
    import selfsup
    from selfsup.config import ConfigError

    data = str(make_images(tmp_path / "imgs", classes=2, per_class=8))
    run = tmp_path / "run"
    selfsup.pretrain("simclr", data=data, out=run, steps=1, batch_size=8, image_size=16,
                     workers=0, progress=False,
                     overrides=["monitor.knn=false", "method.proj_hidden_dim=32"])  # fmt: skip
    kw: dict[str, object] = dict(k=5, device="cpu", precision="fp32", progress=False)
    ev = selfsup.evaluate("knn", run, data, data, floor=True, **kw)
    assert ev.floor is not None and ev.gain_top1 is not None
    assert ev.floor.top1 == selfsup.evaluate_knn(run, data, data, random_init=True, **kw).top1
    assert ev.result.top1 == selfsup.evaluate_knn(run, data, data, **kw).top1
    assert ev.gain_top1 == pytest.approx(ev.result.top1 - ev.floor.top1)
    d = ev.as_dict()
    assert d["protocol"] == "knn" and d["floor"]["top1"] == ev.floor.top1 and "gain_top1" in d
    plain = selfsup.evaluate("knn", run, data, data, **kw)
    assert plain.floor is None and "floor" not in plain.as_dict()
    with pytest.raises(ConfigError, match="run folder"):
        selfsup.evaluate("knn", selfsup.load_method(run), data, data, floor=True, **kw)
    with pytest.raises(ConfigError, match="knn or linear"):
        selfsup.evaluate("fewshot", run, data, data)
