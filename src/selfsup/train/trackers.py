"""Experiment trackers beside ``metrics.csv``: MLflow and Weights & Biases.

A run folder stays the run's own record; a tracker mirrors it where a team already looks.
Each tracker gets the resolved config as parameters, every row of ``metrics.csv`` (same
step), the evaluations run on the run later (``selfsup eval ...``, as ``eval/<protocol>/...``
metrics), and at the end ``config.yaml``, ``metrics.csv``, ``summary.json``, the figures and
the exported backbone as artifacts. Only rank 0 tracks.

The tracking run's id is kept in ``<run>/trackers.json``, so ``--resume`` and later
evaluations continue the same tracking run instead of opening a new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from selfsup.config import Config, ConfigError, LoggingConfig, to_dict

STATE_FILE = "trackers.json"
EXTERNAL = ("mlflow", "wandb")
# MLflow's limits (a parameter value of at most 6,000 characters, 100 parameters and 1,000
# metrics a batch).
_MAX_PARAM, _PARAMS_A_BATCH, _METRICS_A_BATCH = 6000, 100, 1000


class Tracker(Protocol):
    """What the trainer and the evaluation records need from a tracker."""

    name: str

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_files(self, files: Iterable[Path], folder: Path) -> None:
        """Upload ``files`` under their path relative to ``folder``."""

    def log_model(self, folder: Path, name: str) -> None:
        """Upload an exported model folder as the run's model."""

    def finish(self, status: str) -> None:
        """``status``: finished, stopped (a budget left: resumable) or failed."""


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = obj
    return out


def numeric(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (booleans and text left out)."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if v == v and v not in (float("inf"), float("-inf")):
            out[k] = float(v)
    return out


def _need(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(
            f"logging.backends asks for {extra}, which is not installed: "
            f'pip install "selfsup[{extra}]" (or drop {extra} from logging.backends).'
        ) from None


# ----------------------------------------------------------------------------- MLflow


class MLflowTracker:
    """An MLflow run through :class:`mlflow.MlflowClient` (no global active run, so several
    trackers and the user's own MLflow code do not interfere)."""

    name = "mlflow"

    def __init__(self, lg: LoggingConfig, run_name: str, state: dict[str, Any] | None) -> None:
        _need("mlflow", "mlflow")
        from mlflow import MlflowClient

        uri = (state or {}).get("uri") or lg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = uri or "sqlite:///mlflow.db"
        if self.uri.startswith("sqlite:///") and not self.uri.startswith("sqlite:////"):
            # A relative SQLite path would move with the working directory: pin it.
            self.uri = "sqlite:///" + str(Path(self.uri[len("sqlite:///") :]).resolve())
        self.client = MlflowClient(tracking_uri=self.uri)
        if state and state.get("run_id"):
            self.run_id: str = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            exp = self.client.get_experiment_by_name(lg.mlflow_experiment)
            exp_id = (
                exp.experiment_id
                if exp
                else self.client.create_experiment(
                    lg.mlflow_experiment, artifact_location=self._artifacts_beside_db()
                )
            )
            run = self.client.create_run(exp_id, run_name=run_name,
                                         tags={"mlflow.source.name": "selfsup"})  # fmt: skip
            self.run_id = run.info.run_id

    def _artifacts_beside_db(self) -> str | None:
        """For a SQLite store, artifacts in ``mlruns/`` beside the database file (MLflow
        would put them in the working directory of whichever process created the
        experiment); for servers, the server's choice."""
        if not self.uri.startswith("sqlite:///"):
            return None
        return (Path(self.uri[len("sqlite:///") :]).parent / "mlruns").as_uri()

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "uri": self.uri}

    def log_params(self, params: Mapping[str, Any], out: Path) -> None:
        """Parameters are immutable in MLflow: on resume only new keys are logged, and a
        changed value (a longer budget, say) goes to a ``resumed.<key>`` tag."""
        from mlflow.entities import Param, RunTag

        have = self.client.get_run(self.run_id).data.params
        new, tags = [], [RunTag("selfsup.run_dir", str(out.resolve()))]
        for k, v in params.items():
            text = str(v)[:_MAX_PARAM]
            if k not in have:
                new.append(Param(k, text))
            elif have[k] != text:
                tags.append(RunTag(f"resumed.{k}", text))
        for i in range(0, len(new), _PARAMS_A_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + _PARAMS_A_BATCH])
        self.client.log_batch(self.run_id, tags=tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), _METRICS_A_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _METRICS_A_BATCH])

    def log_files(self, files: Iterable[Path], folder: Path) -> None:
        for f in files:
            parent = f.relative_to(folder).parent.as_posix()
            self.client.log_artifact(self.run_id, str(f), None if parent == "." else parent)

    def log_model(self, folder: Path, name: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), name)

    def finish(self, status: str) -> None:
        mlflow_status = {"finished": "FINISHED", "stopped": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, status=mlflow_status)


# ----------------------------------------------------------------------------- W&B


class WandbTracker:
    """A Weights & Biases run written under ``<run>/wandb`` (offline runs sync later with
    ``wandb sync <run>/wandb/offline-run-*``)."""

    name = "wandb"

    def __init__(self, lg: LoggingConfig, run_name: str, out: Path,
                 state: dict[str, Any] | None, config: Mapping[str, Any] | None) -> None:  # fmt: skip
        wandb = _need("wandb", "wandb")
        state = state or {}
        self.wandb = wandb
        self.id: str = state.get("id") or uuid.uuid4().hex[:12]
        self.project = state.get("project") or lg.wandb_project
        self.entity = state.get("entity", lg.wandb_entity)
        self.mode = lg.wandb_mode or os.environ.get("WANDB_MODE") or "online"
        self.run = wandb.init(
            project=self.project, entity=self.entity, name=run_name, id=self.id,
            resume="allow", dir=str(out), config=dict(config) if config else None,
            mode=self.mode, reinit="create_new", allow_val_change=True,
            # Leave the terminal to selfsup's own progress bar.
            settings=wandb.Settings(console="off", quiet=True),
        )  # fmt: skip

    def state(self) -> dict[str, Any]:
        return {"id": self.id, "project": self.project, "entity": self.entity}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_files(self, files: Iterable[Path], folder: Path) -> None:
        # Files in the run's own folder are W&B's run files (uploaded, or kept with an
        # offline run for `wandb sync`); copies, not the symlinks wandb.save would make.
        for f in files:
            dest = Path(self.run.dir) / f.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)

    def log_model(self, folder: Path, name: str) -> None:
        # Artifact names allow letters, digits, '-', '_' and '.'.
        art = self.wandb.Artifact(re.sub(r"[^\w.-]", "-", name), type="model")
        art.add_dir(str(folder))
        self.run.log_artifact(art)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=1 if status == "failed" else 0)


# ----------------------------------------------------------------------------- opening


def _read_state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _open(names: Iterable[str], lg: LoggingConfig, out: Path, state: dict[str, Any],
          config: Mapping[str, Any] | None) -> list[Tracker]:  # fmt: skip
    run_name = lg.run_name or out.resolve().name
    trackers: list[Tracker] = []
    for name in names:
        if name == "mlflow":
            trackers.append(MLflowTracker(lg, run_name, state.get("mlflow")))
        elif name == "wandb":
            trackers.append(WandbTracker(lg, run_name, out, state.get("wandb"), config))
    return trackers


def open_trackers(cfg: Config, out: Path, resumed: bool) -> list[Tracker]:
    """The external trackers ``cfg.logging.backends`` asks for, started (or, when
    ``resumed``, continued) for the run in ``out``; their ids go to ``trackers.json``."""
    names = [b for b in cfg.logging.backends if b in EXTERNAL]
    if not names:
        return []
    state = _read_state(out) if resumed else {}
    params = flatten(to_dict(cfg))
    trackers = _open(names, cfg.logging, out, state, to_dict(cfg))
    for t in trackers:
        if isinstance(t, MLflowTracker):
            t.log_params(params, out)
    _write_state(out, trackers)
    return trackers


def _write_state(out: Path, trackers: list[Tracker]) -> None:
    state = {t.name: t.state() for t in trackers if isinstance(t, MLflowTracker | WandbTracker)}
    (out / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def reopen_trackers(run_dir: Path, cfg: Config) -> list[Tracker]:
    """The tracking runs a finished run folder used (for evaluations run on it later);
    none when it used none, or when a tracker is no longer installed (a warning then)."""
    state = _read_state(run_dir)
    names = [n for n in EXTERNAL if n in state]
    if not names:
        return []
    try:
        return _open(names, cfg.logging, run_dir, state, None)
    except ConfigError as err:
        import warnings

        warnings.warn(f"evaluation not sent to the run's tracker: {err}", stacklevel=2)
        return []


def run_artifacts(out: Path) -> list[Path]:
    """The files of a finished run that trackers keep: its record and its figures."""
    files = [out / n for n in ("config.yaml", "metrics.csv", "summary.json", "skipped.txt")]
    files += sorted((out / "figures").rglob("*.png")) if (out / "figures").is_dir() else []
    return [f for f in files if f.is_file()]


def finish_trackers(trackers: list[Tracker], out: Path, status: str,
                    model: Path | None = None) -> None:  # fmt: skip
    """Upload the run's files (and the exported ``model`` folder) unless it ``failed``,
    then close each tracking run with ``status`` (finished, stopped, failed)."""
    for t in trackers:
        try:
            if status != "failed":
                t.log_files(run_artifacts(out), out)
                if model is not None:
                    t.log_model(model, f"{out.resolve().name}-backbone")
        finally:
            t.finish(status)
