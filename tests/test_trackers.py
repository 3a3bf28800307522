"""MLflow and W&B trackers, run for real without a network (a SQLite MLflow store, W&B in
offline mode), read back independently; evaluation records in the run folder."""

from __future__ import annotations

import csv
import glob
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import selfsup
from selfsup.cli import main as cli_main
from selfsup.config import ConfigError, build_config
from selfsup.eval.knn import knn_classify
from selfsup.eval.records import headline, read_evaluations, record_evaluation
from selfsup.viz.report import evaluations_table

TINY = dict(
    batch_size=8, image_size=16, progress=False, workers=0,
    overrides=["monitor.knn=false", "train.log_every=1", "method.proj_hidden_dim=64"],
)  # fmt: skip


def _csv(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["loss"]]


def _pretrain(folder: Path, out: Path, backends: str, extra: list[str], steps: int = 3) -> None:
    kw: dict[str, Any] = dict(TINY)
    kw["overrides"] = [*TINY["overrides"], f"logging.backends={backends}", *extra]
    selfsup.pretrain("simclr", data=str(folder), out=out, steps=steps, **kw)


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_run_params_metrics_artifacts_resume_and_evaluation(tiny_folder: Path,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    extra = [f"logging.mlflow_uri={uri}", "logging.mlflow_experiment=tests"]
    _pretrain(tiny_folder, run, "[csv,mlflow]", extra)
    state = json.loads((run / "trackers.json").read_text())
    run_id = state["mlflow"]["run_id"]
    client = MlflowClient(uri)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "run"
    assert r.data.params["train.batch_size"] == "8"
    assert r.data.params["method.name"] == "simclr"
    # Every metrics.csv row, at its step and value.
    rows = _csv(run)
    hist = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert sorted(hist) == [int(x["step"]) for x in rows] == [1, 2, 3]
    for x in rows:
        assert hist[int(x["step"])] == pytest.approx(float(x["loss"]), rel=1e-5)
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.csv", "summary.json", "run-backbone"} <= arts
    assert (tmp_path / "mlruns").is_dir()  # beside the database, not in the working dir
    model = {a.path for a in client.list_artifacts(run_id, "run-backbone")}
    assert {"run-backbone/backbone.safetensors", "run-backbone/preprocessing.json"} <= model

    # A resumed run continues the same tracking run; the changed budget becomes a tag.
    selfsup.pretrain(resume=run, steps=5, progress=False, workers=0)
    assert json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"] == run_id
    r = client.get_run(run_id)
    assert r.data.params["train.steps"] == "3" and r.data.tags["resumed.train.steps"] == "5"
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3, 4, 5]

    # An evaluation run later lands in the run folder and in the same tracking run.
    code = cli_main(["eval", "knn", "--checkpoint", str(run), "--train", str(tiny_folder),
                     "--test", str(tiny_folder), "--k", "3", "--no-progress", "--json"])  # fmt: skip
    assert code == 0
    (rec,) = read_evaluations(run)
    assert rec["protocol"] == "knn" and rec["settings"]["k"] == 3
    assert rec["data"]["train"] == str(tiny_folder.resolve())
    top1 = client.get_run(run_id).data.metrics["eval/knn/pretrained/top1"]
    assert top1 == pytest.approx(rec["results"]["top1"])


def test_missing_tracker_package_names_the_extra(tiny_folder: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import builtins

    real_import = builtins.__import__

    def no_wandb(name: str, *args: Any, **kw: Any) -> Any:
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ConfigError, match=r'pip install "selfsup\[wandb\]"'):
        _pretrain(tiny_folder, tmp_path / "run", "[csv,wandb]", [], steps=1)


def test_unknown_backend_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="'mlflow'"):
        build_config("simclr", overrides=["logging.backends=[csv,mlfow]"])


# ----------------------------------------------------------------------------- W&B


def _wandb_records(path: str) -> list[Any]:
    """The records of an offline run file, read independently of wandb's writer: a
    LevelDB-style log (7-byte file header, 32 KiB blocks, chunks with a 7-byte header of
    CRC32, length and type), each record a protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if n == 0 and kind == 0:  # zero padding up to the block end
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _finished_wandb_file(pattern: str, seconds: float = 60.0) -> tuple[str, list[Any]]:
    """The one offline file matching ``pattern`` and its records, once wandb has written its
    last one (``exit``). wandb's service process writes the file on its own: on a loaded
    machine it can appear, or still be partly written, a moment after run.finish() returns
    (seen in a full suite: the file held no run record yet)."""
    from google.protobuf.message import DecodeError

    records: list[Any] = []
    for _ in range(int(seconds / 0.5)):
        files = glob.glob(pattern)
        if len(files) == 1:
            try:
                records = _wandb_records(files[0])
            except (AssertionError, DecodeError, ValueError):  # not yet written in full
                records = []
            if records and records[-1].WhichOneof("record_type") == "exit":
                return files[0], records
        time.sleep(0.5)
    kinds = [r.WhichOneof("record_type") for r in records]
    raise AssertionError(
        f"no finished wandb offline file at {pattern} after {seconds:g} s: {kinds}"
    )


def test_wandb_offline_run_holds_config_metrics_and_model(tiny_folder: Path,
                                                          tmp_path: Path) -> None:  # fmt: skip
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    _pretrain(tiny_folder, run, "[csv,tensorboard,wandb]",
              ["logging.wandb_mode=offline", "logging.wandb_project=tests"])  # fmt: skip
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]["id"]
    pattern = str(run / "wandb" / "offline-run-*" / f"run-{run_id}.wandb")
    file, records = _finished_wandb_file(pattern)
    kinds = [r.WhichOneof("record_type") for r in records]
    (meta,) = [r.run for r, k in zip(records, kinds, strict=True) if k == "run"]
    assert meta.run_id == run_id and meta.project == "tests" and meta.display_name == "run"
    config = {i.key: json.loads(i.value_json) for i in meta.config.update}
    assert config["train"]["batch_size"] == 8 and config["method"]["name"] == "simclr"
    history = {}
    for r, k in zip(records, kinds, strict=True):
        if k == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in r.history.item}  # fmt: skip
            if "loss" in items:
                history[items["_step"]] = items["loss"]
    rows = _csv(run)
    assert sorted(history) == [int(x["step"]) for x in rows]
    for x in rows:
        assert history[int(x["step"])] == pytest.approx(float(x["loss"]), rel=1e-5)
    (art,) = [r.artifact for r, k in zip(records, kinds, strict=True) if k == "artifact"]
    assert art.type == "model" and art.name == "run-backbone"
    assert {m.path for m in art.manifest.contents} >= {"backbone.safetensors",
                                                       "preprocessing.json"}  # fmt: skip
    files = Path(file).parent / "files"
    assert (files / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert (files / "metrics.csv").is_file() and (files / "summary.json").is_file()
    assert (run / "tensorboard").is_dir()


# ----------------------------------------------------------------------------- records


def test_evaluation_records_kept_in_the_run_and_shown_in_the_report(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method:\n  name: simclr\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")  # a run folder is found by its file
    assert record_evaluation(tmp_path / "elsewhere", "knn", {"top1": 1.0}, {}) is None
    options = {"train": str(tmp_path), "test": "missing/dir", "k": 20, "json": True,
               "handler": print}  # fmt: skip
    path = record_evaluation(run, "knn", {"top1": 61.25, "top5": 90.0, "k": 20}, options)
    record_evaluation(run, "segment", {"miou": 40.5, "per_class_iou": {"a": 1.0}}, {},
                      random_init=True)  # fmt: skip
    assert path == run / "evaluations.jsonl"
    (path.open("a")).write("not json\n")  # a damaged line is skipped, not fatal
    knn, seg = read_evaluations(run)
    assert knn["data"] == {"train": str(tmp_path.resolve()), "test": "missing/dir"}
    assert knn["settings"] == {"k": 20}  # json and the handler are not settings
    assert headline(knn) == [("top1", 61.25), ("top5", 90.0), ("k", 20)]
    assert headline(seg) == [("miou", 40.5)] and seg["random_init"] is True
    html = evaluations_table(run)
    assert html.index("segment") < html.index("knn")  # newest first
    assert "random init" in html and "top1 61.2" in html


def test_knn_says_when_k_exceeds_the_smallest_class() -> None:
    feats = torch.eye(4).repeat(3, 1)  # 12 bank items, 3 of each of 4 classes
    labels = torch.arange(4).repeat(3)
    res = knn_classify(feats, labels, torch.eye(4), torch.arange(4), k=5)
    assert res.note is not None and "smallest class" in res.note and "--k 3" in res.note
    assert res.k == 5 and res.as_dict()["note"] == res.note
    assert knn_classify(feats, labels, torch.eye(4), torch.arange(4), k=3).note is None


def test_resuming_a_finished_run_says_so(tiny_folder: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    run = tmp_path / "run"
    _pretrain(tiny_folder, run, "[csv]", [], steps=2)
    before = (run / "summary.json").read_text()
    assert cli_main(["pretrain", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and "--steps 4" in out and "img/s" not in out
    assert (run / "summary.json").read_text() == before
