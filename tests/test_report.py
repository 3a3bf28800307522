"""The HTML report (selfsup report): tiny real runs on real CIFAR-10 images, evaluation
results in the run folder, the parsed page (tables, embedded PNGs, nothing external), and
the page as headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from viz_runs import cifar_subset, shared, tiny_mae, tiny_simclr

import selfsup
from selfsup import experiments
from selfsup.cli import main
from selfsup.viz import write_report

# Images of the CNN report: curves, embedding-map, retrieval, gradcam, augmentations, and
# label_efficiency.png found in the run folder.
CNN_IMAGES = 6
# ViT (MAE) report: curves, embedding-map, retrieval, attention, patch-pca, augmentations,
# and the reconstruction the trainer saved in figures/.
VIT_IMAGES = 7


class Page(HTMLParser):
    """Tags, ids, images, table cells and any external address of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.starts: Counter[str] = Counter()
        self.ends: Counter[str] = Counter()
        self.images: list[str] = []
        self.ids: list[str] = []
        self.cells: list[str] = []
        self.headings: list[str] = []
        self.external: list[str] = []
        self.stack: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts[tag] += 1
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if a.get("id"):
            self.ids.append(str(a["id"]))
        for _, v in attrs:
            if v and re.match(r"\s*(https?:|//|file:|ftp:)", v):
                self.external.append(v)
        if tag not in ("img", "meta", "br", "hr", "input", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.ends[tag] += 1
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] in ("td", "th") and data.strip():
            self.cells.append(data.strip())
        if self.stack and self.stack[-1] in ("h2", "h3"):
            self.headings.append(data.strip())


def decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    raw = base64.b64decode(src[len(prefix) :], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    Image.open(io.BytesIO(raw)).verify()
    return Image.open(io.BytesIO(raw))


def check_page(path: Path, images: int) -> Page:
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>")
    for tag in ("html", "head", "body", "main", "section", "table", "tr", "figure", "h2", "h3"):
        assert page.starts[tag] == page.ends[tag], tag  # every element closed
    assert page.starts["script"] == 0 and page.starts["link"] == 0 and page.starts["iframe"] == 0
    assert page.external == []  # nothing to fetch: readable offline
    assert page.starts["style"] == 1
    assert len(page.images) == images, page.headings
    for src in page.images:
        img = decode_png(src)
        assert img.width >= 64 and img.height >= 64  # the trainer saves raw-size grids
    assert {"summary", "config", "curves", "evaluation", "figures"} <= set(page.ids)
    return page


@pytest.fixture(scope="module")
def data(cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared("cifar", tmp_path_factory, lambda d: cifar_subset(cifar10, d, 4, 10))


@pytest.fixture(scope="module")
def mae_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared("mae", tmp_path_factory, lambda d: tiny_mae(data, d))


@pytest.fixture(scope="module")
def cnn_report(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SimCLR run with a label-efficiency result and a kNN evaluation in its folder, and
    its report written by the command line."""
    run = shared("simclr", tmp_path_factory, lambda d: tiny_simclr(data, d))
    rows = [
        {"protocol": "ssl+linear", "shots": 2, "top1": 31.5, "balanced": 30.9, "top1_std": 2.5,
         "labels_used": 10, "seconds": 0.4},
        {"protocol": "scratch", "shots": 2, "top1": 22.0, "balanced": 21.0, "top1_std": None,
         "labels_used": 10, "seconds": 3.1},
    ]  # fmt: skip
    result = {"run": str(run), "train": str(data), "test": str(data), "shots": [2], "seeds": 3,
              "val_per_class": 2, "rows": rows, "finished": True}  # fmt: skip
    le = run / "label_efficiency"
    le.mkdir()
    (le / "label_efficiency.json").write_text(json.dumps(result))
    (le / "label_efficiency.md").write_text(experiments._markdown(result))
    experiments._plot(rows, le / "label_efficiency.png")
    knn = selfsup.evaluate_knn(run, str(data), str(data), k=5, limit_train=20, limit_test=20)
    (run / "knn_eval.json").write_text(json.dumps({"protocol": "knn", **knn.as_dict()}))
    assert main(["report", str(run), "--data", str(data), "--algo", "pca"]) == 0
    return run / "report.html"


def test_cnn_report_has_summary_config_tables_and_figures(cnn_report: Path) -> None:
    page = check_page(cnn_report, CNN_IMAGES)
    cells = page.cells
    assert cells[cells.index("method") + 1] == "simclr"
    assert cells[cells.index("backbone") + 1] == "resnet18"
    assert cells[cells.index("steps") + 1] == "2" and cells[cells.index("images seen") + 1] == "16"
    assert "images / s" in cells and "training time" in cells
    # label_efficiency.md's table and the rows of label_efficiency.json
    assert "ssl+linear" in cells and "31.5 ± 2.5 (30.9)" in cells and "scratch" in cells
    assert "knn_eval.json" in page.headings and "top1" in cells and "n_train" in cells
    assert "Training curves" in page.headings
    for kind in ("embedding-map", "retrieval", "gradcam", "augmentations"):
        assert kind in page.headings and f"fig-{kind}" in page.ids, kind
    assert "attention" not in page.headings and "reconstruction" not in page.headings
    text = cnn_report.read_text()
    assert "name: simclr" in text and "batch_size: 8" in text  # the resolved config


def test_vit_report_reuses_the_trainers_figures(data: Path, mae_run: Path, tmp_path: Path) -> None:
    run = mae_run
    saved = sorted((run / "figures").glob("reconstruction_step*.png"))
    assert saved
    messages: list[str] = []
    out = write_report(run, tmp_path / "page.html", str(data), algo="pca", log=messages.append)
    page = check_page(out, VIT_IMAGES)
    assert "reconstruction (saved by the trainer)" in page.headings
    assert "drawing reconstruction" not in messages and "drawing attention" in messages
    assert "gradcam" not in page.headings and {"attention", "patch-pca"} <= set(page.headings)
    raw = base64.b64encode(saved[-1].read_bytes()).decode()
    assert raw in out.read_text()  # the trainer's file itself, embedded


def test_report_says_why_figures_are_missing(cnn_report: Path, tmp_path: Path) -> None:
    out = write_report(cnn_report.parent, tmp_path / "r.html", data=str(tmp_path / "nowhere"))
    page = Page(out.read_text())
    assert len(page.images) == 2  # curves and label_efficiency.png: no images to draw from
    assert "notes" in page.ids and "does not exist" in out.read_text()


PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target || {};
    errors.push((t.tagName || "window") + ": " + (e.message || t.src || "load error").slice(0, 80));
  }, true);
  var log = console.error;
  console.error = function () { errors.push("console: " + Array.from(arguments).join(" ")); log.apply(console, arguments); };
  window.addEventListener("load", function () {
    var imgs = Array.from(document.images).map(function (i) {
      return {complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width};
    });
    var tables = Array.from(document.querySelectorAll("table")).map(function (t) {
      return {rows: t.rows.length, height: t.getBoundingClientRect().height};
    });
    var out = document.createElement("pre");
    out.id = "probe-result";
    out.textContent = JSON.stringify({images: imgs, tables: tables, errors: errors});
    document.body.appendChild(out);
  });
})();
</script>"""


def test_report_renders_in_headless_chromium(cnn_report: Path, tmp_path: Path) -> None:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)  # fmt: skip
    if exe is None:
        pytest.skip("no chromium binary on PATH: install Debian's chromium package (.ci/run "
                    "installs it where it can) to run the browser test")  # fmt: skip
    # A test-side copy with a probe script in <head> (the report itself has no scripts): it
    # records load errors and, once loaded, each image's decoded size and each table's height.
    page = tmp_path / "probe.html"
    page.write_text(cnn_report.read_text().replace("<head>", "<head>" + PROBE, 1))
    proc = subprocess.run(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["errors"] == []
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln]
    assert console == [], console
    assert len(result["images"]) == CNN_IMAGES
    for img in result["images"]:
        assert img["complete"] and img["w"] > 100 and img["h"] > 100 and img["shown"] > 0, img
    assert len(result["tables"]) >= 4  # summary, label-efficiency (md + json), kNN result
    assert all(t["rows"] >= 2 and t["height"] > 20 for t in result["tables"]), result["tables"]
