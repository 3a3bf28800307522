"""A one-page HTML report of a run: summary, resolved config, training curves, evaluation
tables found in the run folder, and the figures that apply to the run.

The page is self-contained (images as base64 ``data:`` URIs, inline CSS, no scripts, no
external resources), so it can be mailed, archived or opened offline as one file.
"""

from __future__ import annotations

import base64
import html
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfsup import __version__
from selfsup import config as C
from selfsup.backbones.vit import ViTBackbone
from selfsup.config import ConfigError
from selfsup.data import DataError, open_source
from selfsup.methods.mae import MAE
from selfsup.train.checkpoint import CheckpointError
from selfsup.viz.common import Run, data_spec, open_run
from selfsup.viz.curves import run_folder

# Folders of a run that hold no results to show.
SKIP_DIRS = {"eval_cache", "tensorboard", "checkpoints", "figures", "report_files", "wandb",
             "export"}  # fmt: skip
MAX_JSON_BYTES = 2_000_000
MAX_ROWS = 80

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 2px solid #e3e6eb; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.sub { color: #5b6475; margin: 0 0 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #d9dde3; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f3f4f7; border: 1px solid #e1e4ea; padding: 10px 12px; overflow-x: auto;
      font-size: 0.82em; max-height: 480px; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6eb; }
figcaption { color: #5b6475; font-size: 0.9em; margin-top: 4px; }
.note { color: #7a5b00; background: #fff8e1; border: 1px solid #f1e2a6; padding: 6px 10px; }
nav a { margin-right: 14px; }
"""


# ----------------------------------------------------------------------------- html pieces


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return str(v)


def _cell(v: Any) -> str:
    num = isinstance(v, int | float) and not isinstance(v, bool)
    return f'<td class="num">{_e(_fmt(v))}</td>' if num else f"<td>{_e(_fmt(v))}</td>"


def kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th>{_cell(v)}</tr>" for k, v in rows)
    return f"<table>{body}</table>"


def records_table(records: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    cols = columns or list(dict.fromkeys(k for r in records for k in r))
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(_cell(r.get(c)) for c in cols) + "</tr>" for r in records[:MAX_ROWS]
    )
    more = (
        f"<p class='sub'>{len(records) - MAX_ROWS} more rows not shown.</p>"
        if len(records) > MAX_ROWS
        else ""
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested JSON -> (dotted key, scalar) rows; lists of scalars are joined."""
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list):
        if all(not isinstance(v, dict | list) for v in obj):
            shown = ", ".join(_fmt(v) for v in obj[:12]) + (", ..." if len(obj) > 12 else "")
            return [(prefix, f"[{shown}]")]
        out = []
        for i, v in enumerate(obj[:20]):
            out += flatten(v, f"{prefix}[{i}]")
        return out
    return [(prefix, obj)]


def json_tables(obj: Any) -> str:
    """A JSON result as HTML: lists of records as tables, the rest as key / value rows."""
    parts: list[str] = []
    scalars: dict[str, Any] = {}
    items = obj.items() if isinstance(obj, dict) else [("", obj)]
    for k, v in items:
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            flat = [dict(flatten(r)) for r in v]
            parts.append((f"<h4>{_e(k)}</h4>" if k else "") + records_table(flat))
        else:
            scalars[k] = v
    rows = flatten(scalars)[:MAX_ROWS]
    return (kv_table(rows) if rows else "") + "".join(parts)


def markdown_tables(text: str) -> str:
    """The pipe tables and paragraphs of a small Markdown file as HTML."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head, body = (
                block[0],
                [r for r in block[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)],
            )
            out.append("<table><thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in head)
                       + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")  # fmt: skip
            continue
        if line:
            out.append(f"<p>{_e(line.replace('`', ''))}</p>")
        i += 1
    return "".join(out)


def img_tag(png: Path | bytes, alt: str) -> str:
    data = png if isinstance(png, bytes) else png.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{alt}: not a PNG file")
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(alt)}">'


def figure_html(png: Path | bytes, caption: str) -> str:
    return f"<figure>{img_tag(png, caption)}<figcaption>{_e(caption)}</figcaption></figure>"


# ----------------------------------------------------------------------------- content


def _duration(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def summary_rows(folder: Path, run: Run | None) -> list[tuple[str, Any]]:
    """Method, backbone, budget used and speed, from summary.json (or the checkpoint)."""
    summary: dict[str, Any] = {}
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
    cfg = C.to_dict(run.cfg) if run is not None else summary.get("config", {})
    if not cfg and (folder / "config.yaml").is_file():
        import yaml

        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    state = summary.get("state", {})
    if not state and run is not None:
        from selfsup.train import checkpoint as ckpt_io

        state = ckpt_io.load(run.checkpoint).get("state", {})
    rows: list[tuple[str, Any]] = [
        ("method", cfg.get("method", {}).get("name", "?")),
        ("backbone", cfg.get("backbone", {}).get("name", "?")),
        ("data", cfg.get("data", {}).get("path")),
        ("image size (px)", cfg.get("data", {}).get("image_size")),
        ("batch size", cfg.get("train", {}).get("batch_size")),
    ]
    if state:
        rows += [("steps", state.get("step")), ("epoch", state.get("epoch")),
                 ("images seen", state.get("images_seen"))]  # fmt: skip
        if state.get("elapsed") is not None:
            rows.append(("training time", _duration(float(state["elapsed"]))))
    if summary:
        rows += [
            ("images / s", summary.get("images_per_s")),
            ("wall time", _duration(float(summary["wall_s"])) if "wall_s" in summary else None),
            ("stopped by", summary.get("stopped_by")),
            ("final loss", summary.get("final_loss")),
            ("device / precision", f"{summary.get('device')} / {summary.get('precision')}"),
            ("peak memory (MiB)", summary.get("peak_memory_mb")),
        ]
        rows += [(f"kNN monitor {k}", v) for k, v in (summary.get("monitor") or {}).items()]
    else:
        rows.append(("summary.json", "missing: the run has not finished (or was interrupted)"))
    return [(k, v) for k, v in rows if v is not None]


def eval_sections(folder: Path) -> list[tuple[str, str]]:
    """(title, html) of the evaluation results in the run folder."""
    out: list[tuple[str, str]] = []
    recorded = evaluations_table(folder)
    if recorded:
        out.append(("Evaluations run on this run (evaluations.jsonl)", recorded))
    le = folder / "label_efficiency"
    le_json, le_md = le / "label_efficiency.json", le / "label_efficiency.md"
    if le_json.is_file():
        data = json.loads(le_json.read_text())
        rows = data.get("rows", [])
        body = records_table(rows, ["protocol", "shots", "top1", "top1_std", "balanced",
                                    "labels_used", "seconds"]) if rows else ""  # fmt: skip
        if le_md.is_file():
            body = markdown_tables(le_md.read_text()) + body
        if (le / "label_efficiency.png").is_file():
            body += figure_html(
                le / "label_efficiency.png", "label_efficiency/label_efficiency.png"
            )
        out.append(("Label efficiency", body))
    elif le_md.is_file():
        out.append(("Label efficiency", markdown_tables(le_md.read_text())))
    for path in sorted(folder.rglob("*.json")):
        rel = path.relative_to(folder)
        if (rel.parts[0] in SKIP_DIRS or path in (le_json, folder / "summary.json")
                or path.stat().st_size > MAX_JSON_BYTES):  # fmt: skip
            continue
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        body = json_tables(data)
        picture = path.with_suffix(".png")  # e.g. dense/<name>.png beside dense/<name>.json
        if picture.is_file():
            body += figure_html(picture, str(rel.with_suffix(".png")))
        out.append((str(rel), body))
    return out


def evaluations_table(folder: Path) -> str:
    """The records of ``selfsup eval ...`` on this run, newest first, one row each."""
    from selfsup.eval.records import headline, read_evaluations

    rows = []
    for rec in reversed(read_evaluations(folder)):
        data = rec.get("data") or {}
        test = data.get("test") or data.get("data") or ""
        frames = data.get("test_frames")
        rows.append({
            "date": str(rec.get("date", ""))[:16].replace("T", " "),
            "protocol": rec.get("protocol"),
            "weights": "random init" if rec.get("random_init") else "trained",
            "evaluated on": f"{test} [{frames}]" if frames else test,
            "results": ", ".join(f"{k} {_fmt(v)}" for k, v in headline(rec)),
        })  # fmt: skip
    return records_table(rows) if rows else ""


def trainer_figures(folder: Path) -> dict[str, Path]:
    """The latest picture of each name the trainer saved in ``figures/`` (name -> file)."""
    latest: dict[str, tuple[int, Path]] = {}
    for p in (folder / "figures").glob("*.png"):
        m = re.fullmatch(r"(.+)_step(\d+)", p.stem)
        name, step = (m.group(1), int(m.group(2))) if m else (p.stem, -1)
        if name not in latest or step > latest[name][0]:
            latest[name] = (step, p)
    return {k: v[1] for k, v in sorted(latest.items())}


def applicable(run: Run, has_labels: bool) -> list[str]:
    """The figure kinds that apply to ``run`` (curves aside)."""
    bb = run.method.feature_extractor()
    kinds = ["embedding-map", "retrieval"]
    if isinstance(bb, ViTBackbone):
        kinds += ["attention", "patch-pca"]
    elif has_labels:
        kinds.append("gradcam")
    if isinstance(run.method, MAE):
        kinds.append("reconstruction")
    return [*kinds, "augmentations"]


CAPTIONS = {
    "curves": "Training curves from metrics.csv.",
    "embedding-map": "Embeddings of the images projected to 2-D, coloured by class.",
    "retrieval": "Nearest neighbours by cosine similarity of the features "
    "(green: same class as the query, red: another class).",
    "attention": "Class-token self-attention of the last ViT block, per head.",
    "patch-pca": "PCA of the ViT patch features as colours (background removed).",
    "gradcam": "Grad-CAM of a logistic-regression probe's class on the CNN features.",
    "reconstruction": "MAE: masked input, reconstruction, original.",
    "augmentations": "The method's training views of a few images.",
}


def write_report(
    run: str | Path,
    out: str | Path | None = None,
    data: str | None = None,
    *,
    data_root: str | None = None,
    split: str = "test",
    algo: str = "tsne",
    limit: int = 2000,
    device: str = "auto",
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write the run's report (default ``<run>/report.html``) and return its path.

    ``data`` gives the images of the figures that need some (default: the run's own data
    when it is still there); figures that cannot be drawn are listed with the reason.
    """
    from selfsup import viz

    say = log or (lambda _msg: None)
    folder = run_folder(run)
    target = Path(out) if out is not None else folder / "report.html"
    opened: Run | None = None
    no_ckpt = ""
    try:
        opened = open_run(run)
    except CheckpointError as err:
        no_ckpt = str(err)
    notes: list[str] = []
    if opened is not None:
        config_text = C.to_yaml(opened.cfg)
    elif (folder / "config.yaml").is_file():
        config_text = (folder / "config.yaml").read_text()
    else:
        config_text = ""

    curves_html = ""
    figures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="selfsup-report-") as tmp:

        def draw(kind: str, source: Run | Path, **kw: Any) -> str:
            say(f"drawing {kind}")
            try:
                png = viz.make(kind, source, Path(tmp) / f"{kind}.png", **kw)
            except (ConfigError, DataError, CheckpointError) as err:
                notes.append(f"{kind}: {err}")
                return ""
            return figure_html(png, CAPTIONS[kind])

        if (folder / "metrics.csv").is_file():
            curves_html = draw("curves", folder)
        else:
            notes.append("training curves: no metrics.csv in the run folder.")
        saved = trainer_figures(folder)
        if opened is None:
            notes.append(f"figures of the model: {no_ckpt}")
        else:
            try:
                spec, root = data_spec(opened, data, "figures", data_root)
                has_labels = open_source(spec, split=split, root=root).labels is not None
            except (ConfigError, DataError) as err:
                spec, root, has_labels = None, None, False
                notes.append(f"figures that need images were not drawn: {err}")
            for kind in applicable(opened, has_labels) if spec is not None else []:
                if kind in saved:  # the trainer drew it already
                    continue
                kw: dict[str, Any] = {"data": spec, "data_root": root, "split": split}
                if kind in ("embedding-map", "gradcam"):
                    kw |= {"limit": limit, "device": device}
                if kind == "embedding-map":
                    kw["algo"] = algo
                elif kind == "retrieval":
                    kw["limit"] = limit
                if html_ := draw(kind, opened, **kw):
                    figures.append(f'<h3 id="fig-{kind}">{_e(kind)}</h3>{html_}')
    for name, path in saved.items():
        figures.append(f'<h3 id="fig-{_e(name)}">{_e(name)} (saved by the trainer)</h3>'
                       + figure_html(path, f"figures/{path.name}"))  # fmt: skip

    page = _page(folder, opened, config_text, curves_html, figures, notes)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target


def _page(folder: Path, opened: Run | None, config_text: str, curves_html: str,
          figures: list[str], notes: list[str]) -> str:  # fmt: skip
    """The report's HTML: its sections in order, with a navigation bar."""
    sections = [("summary", "Run summary", kv_table(summary_rows(folder, opened)))]
    if config_text:
        sections.append(("config", "Resolved config", f"<pre>{_e(config_text)}</pre>"))
    if curves_html:
        sections.append(("curves", "Training curves", curves_html))
    evals = eval_sections(folder)
    if evals:
        body = "".join(f"<h3>{_e(t)}</h3>{h}" for t, h in evals)
    else:
        body = ("<p class='sub'>No evaluation results in the run folder yet; e.g. "
                "<code>selfsup experiment label-efficiency --checkpoint RUN ...</code> writes "
                "label_efficiency/ here.</p>")  # fmt: skip
    sections.append(("evaluation", "Evaluation", body))
    if figures:
        sections.append(("figures", "Figures", "".join(figures)))
    if notes:
        items = "".join(f"<li class='note'>{_e(n)}</li>" for n in notes)
        sections.append(("notes", "Not shown", f"<ul>{items}</ul>"))

    name = opened.describe if opened is not None else folder.name
    nav = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in sections)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>selfsup report: {_e(folder.name)}</title><style>{CSS}</style></head>\n"
        f"<body><main><h1>selfsup report: {_e(folder.name)}</h1>"
        f'<p class="sub">{_e(name)} &middot; {_e(folder.resolve())} &middot; selfsup '
        f"{_e(__version__)}</p><nav>{nav}</nav>\n"
        + "\n".join(f'<section id="{a}"><h2>{_e(t)}</h2>{h}</section>' for a, t, h in sections)
        + "\n</main></body></html>\n"
    )
    return page
