from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import selfsup
from selfsup import config as C
from selfsup.config import ConfigError, parse_duration


def test_defaults_round_trip_through_dict_and_yaml(tmp_path: Path) -> None:
    cfg = selfsup.make_config("simclr", overrides=["optim.lr=0.3", "method.temperature=0.2"])
    assert cfg.optim.lr == 0.3 and cfg.method.temperature == 0.2
    assert C.from_dict(C.to_dict(cfg)) == cfg
    f = tmp_path / "c.yaml"
    f.write_text(C.to_yaml(cfg))
    assert selfsup.make_config(config=f) == cfg


def test_sources_merge_in_order(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"train": {"epochs": 5, "batch_size": 64}, "optim": {"lr": 0.1}}))
    cfg = selfsup.make_config(config=f, overrides=["train.epochs=7"], batch_size=32)
    assert cfg.train.epochs == 7  # override beats file
    assert cfg.train.batch_size == 32  # option beats file
    assert cfg.optim.lr == 0.1  # file beats default
    assert cfg.train.seed == 0  # default


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["optim.lrr=3"], r"unknown config key 'optim.lrr'.*Did you mean optim.lr"),
        (["method.temprature=0.1"], r"unknown config key 'method.temprature'.*method.temperature"),
        (["nosuch.key=1"], r"unknown config key 'nosuch'"),
        (["train.batch_size=abc"], r"train.batch_size"),
        (["train.precision=fp8"], r"train.precision"),
        (["optim.name=rmsprop"], r"optim.name"),
        (["lr"], r"key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        selfsup.make_config("simclr", overrides=overrides)


def test_unknown_key_in_file_names_it(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train.epochz.*Did you mean train.epochs"):
        selfsup.make_config(config=f)
    with pytest.raises(ConfigError, match="does not exist"):
        selfsup.make_config(config=tmp_path / "missing.yaml")
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        selfsup.make_config(config=f)


def test_unknown_option_names_it() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'epoch'.*epochs"):
        selfsup.make_config("simclr", epoch=3)


def test_method_from_file_and_conflict(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("method:\n  name: simclr\n  temperature: 0.3\n")
    assert selfsup.make_config(config=f).method.temperature == 0.3


@pytest.mark.parametrize(
    "text,seconds",
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("45", 45), ("1.5h", 5400), (120, 120)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10x", "", "m10"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


def test_every_config_file_in_repo_loads() -> None:
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ should hold at least one complete config"
    for f in configs:
        cfg = selfsup.make_config(config=f)
        # Complete: the file names every key the schema has.
        data = yaml.safe_load(f.read_text())
        assert set(C.flat_defaults(cfg)) == set(_flat(data)), f


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
