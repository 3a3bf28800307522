"""The model card (``README.md``) of an ``hf`` export: what the network is, how the run
trained it (method, data, budget), its preprocessing, how to load it, and every evaluation
recorded against the run, with YAML front matter as the Hugging Face hub reads it.

Evaluations come from ``<run>/evaluations.jsonl`` (:mod:`selfsup.eval.records`: one JSON
object a line with ``protocol``, ``data``, ``settings``, ``results``, ``date``; unknown keys
are ignored, damaged lines skipped), their figures chosen as the HTML report chooses them,
and from the online kNN monitor figures in ``<run>/summary.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from selfsup import hub
from selfsup.config import Config

EVALUATIONS = "evaluations.jsonl"
SUMMARY = "summary.json"
EVAL_COLUMNS = ("protocol", "weights", "data", "settings", "results", "date")
# Evaluation options that do not change the figures (left out of the table).
QUIET = ("progress", "device", "batch_size", "backbone", "floor")


def write_card(folder: Path, spec: hub.HubSpec, info: dict[str, Any], cfg: Config,
               run_dir: Path, state: dict[str, Any], license: str) -> Path:  # fmt: skip
    """Write ``folder/README.md`` for the export of the run ``run_dir`` (config ``cfg``,
    checkpoint ``state``) that ``spec`` and ``info`` (preprocessing.json's content, with
    ``check``) describe; returns its path."""
    summary = _read_object(run_dir / SUMMARY)
    state = state or summary.get("state") or {}
    text = model_card(spec, info, cfg, run_dir, summary, state, license)
    file = folder / hub.CARD
    file.write_text(text)
    return file


def model_card(spec: hub.HubSpec, info: dict[str, Any], cfg: Config, run_dir: Path,
               summary: dict[str, Any], state: dict[str, Any], license: str) -> str:  # fmt: skip
    """The card's Markdown text."""
    method = info["source"]["method"]
    tags = ["image-feature-extraction", "timm", "selfsup", "self-supervised", method]
    front = ["---", "library_name: timm", f"license: {_yaml_str(license)}",
             "pipeline_tag: image-feature-extraction", "tags:", *[f"- {t}" for t in tags],
             "---", ""]  # fmt: skip
    title = f"# {info['architecture']['backbone']} pretrained with {method} (selfsup)"
    parts = [*front, title, "", *_about(spec, info, cfg), *_training(info, cfg, summary, state),
             *_preprocessing(info["input"]), *_evaluation(run_dir, cfg, summary, info["source"]),
             *_loading(spec, info), *_provenance(info, run_dir)]  # fmt: skip
    return "\n".join(parts).rstrip() + "\n"


# ----------------------------------------------------------------------------- sections


def _about(spec: hub.HubSpec, info: dict[str, Any], cfg: Config) -> list[str]:
    inp = info["input"]
    c, s, d = inp["channels"], inp["image_size"], info["embed_dim"]
    role = {
        "teacher": " These are the weights of the method's EMA teacher.",
        "student": " These are the weights of the online (student) network, not its EMA teacher.",
    }.get(info["source"]["role"], "")
    start = (f"from `{cfg.backbone.weights}`" if cfg.backbone.weights
             else "from a random initialisation")  # fmt: skip
    lines = [
        f"A `{spec.architecture}` feature extractor trained {start} without labels, by "
        f"self-supervised learning with [selfsup](https://pypi.org/project/selfsup/) "
        f"(`{info['source']['method']}`). It maps {c}-channel {s}×{s} images, normalised as "
        f"below, to {d}-dimensional features: there is no classifier (`num_classes: 0`) and "
        f"no projection head.{role}",
        "",
    ]
    if spec.small_stem:
        lines += [
            "> **Small-image stem.** As in CIFAR ResNets (He et al., 2016) and SimCLR's CIFAR "
            "models, the first layer is a 3×3 stride-1 convolution and there is no max-pool. "
            "timm has no architecture with this stem and no `model_args` express it, so "
            f"config.json names the plain `{spec.architecture}`, and `timm.create_model("
            '"hf-hub:…", pretrained=True)` stops with a size mismatch for `conv1.weight`. '
            "Build the plain model and replace the stem with the two lines under *How to "
            "load* (also in config.json, `selfsup.small_stem_lines`), or use "
            "`selfsup.load_backbone`, which does it.",
            "",
        ]
    return lines


def _training(info: dict[str, Any], cfg: Config, summary: dict[str, Any],
              state: dict[str, Any]) -> list[str]:  # fmt: skip
    method = info["source"]["method"]
    data = f"`{cfg.data.path}`" + (f" (root `{cfg.data.root}`)" if cfg.data.root else "")
    if cfg.data.limit:
        data += f", limited to {cfg.data.limit} images"
    t = cfg.train
    planned = ", ".join(f"{k} {v}" for k, v in (("epochs", t.epochs), ("steps", t.steps),
                                                ("max time", t.max_time)) if v)  # fmt: skip
    rows = [
        ("method", f"`{method}`: {_method_summary(method)}"),
        ("data", data),
        ("images", _images(state, cfg)),
        ("image size", f"{cfg.data.image_size} px, {cfg.backbone.in_chans} channel(s)"),
        ("batch size", t.batch_size),
        ("budget", planned or "100 epochs (default)"),
        ("trained", _trained(state)),
        ("wall time", _seconds(summary.get("wall_s"))),
        ("device / precision", _join(summary.get("device"), summary.get("precision"))),
        ("stopped by", summary.get("stopped_by")),
        ("final loss", _fmt(summary.get("final_loss"))),
        ("optimizer", f"{cfg.optim.name}, lr {_fmt(cfg.optim.lr)}, "
                      f"weight decay {_fmt(cfg.optim.weight_decay)}"),
    ]  # fmt: skip
    if not summary:
        rows.append(("summary.json", "missing: the run had not finished when exported"))
    table = ["| | |", "|---|---|", *(f"| {k} | {_cell(v, 600)} |" for k, v in rows
                                       if v not in (None, ""))]  # fmt: skip
    return ["## Training", "", *table, "",
            "The full configuration is in the run's `config.yaml`.", ""]  # fmt: skip


def _preprocessing(inp: dict[str, Any]) -> list[str]:
    steps = [f"{i}. {step}" for i, step in enumerate(inp["steps"], 1)]
    return [
        "## Preprocessing",
        "",
        *steps,
        "",
        f"mean {inp['mean']}, std {inp['std']}. The same, with torchvision:",
        "",
        "```python",
        *inp["preprocess"],
        "```",
        "",
        "or with timm, from config.json's `pretrained_cfg` (bilinear resize, "
        f"`crop_pct` {hub.crop_pct(inp['image_size']):.4g}):",
        "`timm.data.create_transform(**timm.data.resolve_model_data_config(net))`.",
        "",
    ]


def _evaluation(
    run_dir: Path, cfg: Config, summary: dict[str, Any], source: dict[str, Any]
) -> list[str]:
    from selfsup.eval.records import read_evaluations

    records = read_evaluations(run_dir)  # damaged lines are skipped
    rows = [_record_row(rec, source) for rec in reversed(records)]  # newest first
    monitor = summary.get("monitor") or {}
    if isinstance(monitor, dict) and monitor:
        m = cfg.monitor
        where = (f"`{m.val_path}`" if m.val_path
                 else f"{m.holdout} images held out of the training data")  # fmt: skip
        settings = f"k {m.k}, temperature {_fmt(m.temperature)}, bank {m.bank}"
        rows.append(["kNN monitor (online)", "trained", where, settings, _cell(monitor),
                     "end of training"])  # fmt: skip
    out = ["## Evaluation", ""]
    if not rows:
        return [*out, "No evaluation recorded: nothing in the run's `evaluations.jsonl` (written "
                "by `selfsup eval ... --checkpoint RUN`) and no online kNN monitor figure (it "
                "needs labelled data).", ""]  # fmt: skip
    out += [f"| {' | '.join(EVAL_COLUMNS)} |", "|" + "---|" * len(EVAL_COLUMNS),
            *(f"| {' | '.join(r)} |" for r in rows), "",
            "As recorded in the run's `evaluations.jsonl` (newest first) and `summary.json`; "
            "the features are frozen unless the protocol trains them.", ""]  # fmt: skip
    if source.get("evaluated") is False:
        out += [f"The evaluations measure the network the method evaluates with, not these "
                f"{source['role']} weights.", ""]  # fmt: skip
    return out


def _record_row(rec: dict[str, Any], source: dict[str, Any]) -> list[str]:
    """One evaluation record (``selfsup.eval.records``) as a table row."""
    from selfsup.eval.records import headline

    results = rec.get("results")
    figures = dict(headline(rec)) if isinstance(results, dict) else {}
    flat = _flat(results) if isinstance(results, dict) else {}
    for key in ("floor.top1", "gain_top1"):  # the random-init floor, when measured with it
        if key in flat and key.replace(".", "_") not in figures:
            figures[key] = flat[key]
    weights = "random init" if rec.get("random_init") else "trained"
    if _other_checkpoint(rec.get("checkpoint"), source.get("checkpoint")):
        weights += f" (checkpoint {Path(str(rec['checkpoint'])).name})"
    settings = rec.get("settings")
    if isinstance(settings, dict):
        settings = {k: v for k, v in settings.items() if v is not None and k not in QUIET}
    date = str(rec.get("date") or "")[:16].replace("T", " ")
    return [_cell(rec.get("protocol")), weights, _cell(rec.get("data")), _cell(settings),
            _cell(figures if figures else results), _cell(date)]  # fmt: skip


def _other_checkpoint(recorded: Any, exported: Any) -> bool:
    """Whether an evaluation ran on another checkpoint than the one exported."""
    from selfsup.train import checkpoint as ckpt_io

    if not recorded or not exported:
        return False
    try:
        return ckpt_io.resolve(str(recorded)).resolve() != Path(str(exported)).resolve()
    except Exception:  # moved or deleted since: the record cannot say
        return False


def _loading(spec: hub.HubSpec, info: dict[str, Any]) -> list[str]:
    c, s, d = info["input"]["channels"], info["input"]["image_size"], info["embed_dim"]
    shape = f"x: (B, {c}, {s}, {s}) normalised float32 -> (B, {d})"
    lines = hub.how_to_load(spec, shape, "path/to/this/folder", alternatives=True)
    return [
        "## How to load",
        "",
        "With timm alone (selfsup not needed):",
        "",
        "```python",
        *lines,
        "```",
        "",
        "With selfsup (the same from the run folder or its checkpoint):",
        "",
        "```python",
        "import selfsup",
        'net = selfsup.load_backbone("path/to/this/folder")  # eval mode, '
        f"(B, {c}, {s}, {s}) -> (B, {d})",
        "net.pretrained_cfg  # input_size, mean, std, interpolation, crop_pct, crop_mode",
        "```",
        "",
    ]


def _provenance(info: dict[str, Any], run_dir: Path) -> list[str]:
    check = info.get("check") or {}
    diff = check.get("max_abs_diff")
    checked = (f"Loaded back with timm (without selfsup's code) on a random batch, the "
               f"features differ from the run's by at most {diff:.2g}."
               if diff is not None else "Not checked after writing (--no-verify).")  # fmt: skip
    return [
        "## Provenance",
        "",
        f"Exported by selfsup {info['selfsup_version']} (torch {info['torch_version']}) from "
        f"step {info['source']['step']} of the run `{run_dir.name}`. {checked}",
        "",
    ]


# ----------------------------------------------------------------------------- records


def _read_object(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _method_summary(name: str) -> str:
    """The first paragraph of the method's docstring (it names the paper's idea)."""
    from selfsup.registry import get_method_class

    try:
        doc = get_method_class(name).__doc__ or ""
    except Exception:
        return ""
    first = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "`")
    return first[:-1] + "." if first.endswith(":") else first


def _images(state: dict[str, Any], cfg: Config) -> str:
    """Images per epoch, from the run's progress (no data set is opened at export time)."""
    epoch, seen, pos = state.get("epoch"), state.get("images_seen"), state.get("epoch_pos", 0)
    if not isinstance(epoch, int) or not isinstance(seen, int) or epoch < 1:
        return "not recorded (less than one epoch trained)" if seen else ""
    per_epoch = (seen - int(pos or 0)) // epoch // max(1, cfg.data.repeat)
    return f"{per_epoch} per epoch (after data.limit and the kNN monitor's held-out images)"


def _trained(state: dict[str, Any]) -> str:
    if not state:
        return ""
    parts = [_count(state.get("step"), "step"), _count(state.get("images_seen"), "image") + " seen",
             _count(state.get("epoch"), "full epoch")]  # fmt: skip
    if state.get("elapsed") is not None:
        parts.append(f"{_seconds(state['elapsed'])} of training")
    return ", ".join(parts)


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    s = round(float(value))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{float(value):.1f}s"


def _join(*values: Any) -> str:
    return " / ".join(str(v) for v in values if v is not None)


def _fmt(value: Any) -> str:
    """A value for a table cell: numbers to 4 significant digits, dicts as ``key value``
    pairs (nested keys joined by dots)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in _flat(value).items())
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "" if value is None else str(value)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cell(value: Any, width: int = 160) -> str:
    text = " ".join(_fmt(value).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _yaml_str(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+\-_]*", text) else json.dumps(text)
