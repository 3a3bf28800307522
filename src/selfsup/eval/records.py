"""Every evaluation of a run, kept in the run: ``<run>/evaluations.jsonl``.

One JSON object a line, appended by each ``selfsup eval ...`` on a run folder or
checkpoint: ``protocol``, ``checkpoint``, ``random_init``, ``data`` (the folders and frame
ranges evaluated on), ``settings`` (every other option), ``results`` (what ``--json``
prints), ``date`` (ISO 8601, UTC) and ``selfsup`` (the version). The HTML report and the
exported model card read it; a run that used MLflow or W&B also gets the figures there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FILE = "evaluations.jsonl"
# Options that name what was evaluated on (the rest are settings).
DATA_KEYS = ("train", "test", "data", "data_root", "train_frames", "test_frames", "frames",
             "also_test", "val")  # fmt: skip
# Options that change nothing in the result.
QUIET_KEYS = ("handler", "command", "protocol", "json", "no_progress", "checkpoint",
              "random_init", "save", "out", "no_cache")  # fmt: skip
# The headline figures of each protocol, in the order the report shows them.
HEADLINES: dict[str, tuple[str, ...]] = {
    "knn": ("top1", "top5", "floor_top1", "k"),
    "linear": ("top1", "top5", "floor_top1"),
    "fewshot": (),
    "segment": ("miou", "dice", "pixel_acc"),
    "detect": ("box_ap", "box_ap50", "mask_ap"),
    "depth": ("abs_rel", "rmse", "delta1"),
    "video": ("knn.top1_mean", "linear.top1_mean", "linear.balanced_mean"),
}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


def _absolute(v: Any) -> Any:
    """A relative path that exists, made absolute (the record outlives the working
    directory); anything else as given."""
    if isinstance(v, str | Path) and str(v) and Path(v).exists():
        return str(Path(v).resolve())
    return v


def run_dir_of(checkpoint: str | Path | None) -> Path | None:
    """The run folder a ``--checkpoint`` names (a run folder or a checkpoint file in one);
    None for anything else (a bare weights file, a named model)."""
    if checkpoint is None:
        return None
    from selfsup.runs import run_folder
    from selfsup.train import checkpoint as ckpt_io

    try:
        file = ckpt_io.resolve(checkpoint)
    except Exception:
        return None
    folder = run_folder(file)
    return folder if (folder / "config.yaml").is_file() else None


def record_evaluation(checkpoint: str | Path | None, protocol: str, results: Mapping[str, Any],
                      options: Mapping[str, Any], random_init: bool = False) -> Path | None:  # fmt: skip
    """Append one evaluation to its run's ``evaluations.jsonl`` and send its numbers to the
    run's trackers; returns the file written (None when ``checkpoint`` is not a run)."""
    run = run_dir_of(checkpoint)
    if run is None:
        return None
    settings = {k: _jsonable(v) for k, v in options.items()
                if k not in DATA_KEYS and k not in QUIET_KEYS and not callable(v)}  # fmt: skip
    data = {k: _jsonable(_absolute(v)) for k, v in options.items()
            if k in DATA_KEYS and v is not None}  # fmt: skip
    record = {
        "protocol": protocol,
        "checkpoint": str(Path(str(checkpoint)).resolve()),
        "random_init": random_init,
        "data": data,
        "settings": settings,
        "results": _jsonable(results),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "selfsup": _version(),
    }
    path = run / FILE
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    _to_trackers(run, record)
    return path


def read_evaluations(run: str | Path) -> list[dict[str, Any]]:
    """The records of ``<run>/evaluations.jsonl``, oldest first (damaged lines skipped)."""
    path = Path(run) / FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def headline(record: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) of the figures a table of evaluations shows for ``record``: the
    protocol's headline keys, or else its top-level numbers (at most six)."""
    from selfsup.train.trackers import flatten

    flat = flatten(record.get("results") or {})
    keys = [k for k in HEADLINES.get(str(record.get("protocol")), ()) if flat.get(k) is not None]
    if not keys:
        keys = [k for k, v in flat.items() if "." not in k and isinstance(v, int | float)
                and not isinstance(v, bool)][:6]  # fmt: skip
    return [(k, flat[k]) for k in keys]


def _to_trackers(run: Path, record: Mapping[str, Any]) -> None:
    import yaml

    from selfsup.config import from_dict
    from selfsup.train.trackers import flatten, numeric, reopen_trackers

    if not (run / "trackers.json").is_file():
        return
    try:
        cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    except Exception:  # a config this version cannot read: the defaults' trackers settings
        from selfsup.config import Config

        cfg = Config()
    trackers = reopen_trackers(run, cfg)
    init = "random_init" if record["random_init"] else "pretrained"
    values = numeric(flatten(record["results"], f"eval/{record['protocol']}/{init}/"))
    step = _last_step(run)
    for t in trackers:
        try:
            t.log_metrics(values, step)
        finally:
            t.finish("finished")


def _last_step(run: Path) -> int:
    try:
        summary = json.loads((run / "summary.json").read_text())
        return int(summary.get("state", {}).get("step", 0))
    except (OSError, ValueError, json.JSONDecodeError):
        return 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("selfsup")
    except Exception:
        return "unknown"
