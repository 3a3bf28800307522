"""Edge: a teacher, its distilled student and the student in int8, side by side on this CPU.

For each model: parameters, FLOPs per image, ONNX file size, latency per image at batch 1
and throughput at batch 32 through onnxruntime on 1 and 2 threads, and kNN top-1 on
CIFAR-10 (k = 200, cosine, temperature 0.1, the full 50,000-image bank and 10,000 test
queries unless limited) computed through the ONNX files that are timed (the student in
float and int8 by default; ``--knn`` names the rows). Other runs
(e.g. the student's architecture trained by self-supervision alone, at the same budget) come
as extra float rows with ``--baseline``.

    python benchmarks/edge.py --teacher runs/teacher --student runs/student \\
        --baseline runs/vicreg-15m --out /tmp/edge

Exports go to ``<out>/<name>/`` (``selfsup export RUN --format onnx --quantize int8`` for
the student); every figure is appended to ``<out>/results.jsonl`` as it is measured, and a
rerun skips what is there, so an interrupted benchmark resumes. Timings need a quiet
machine: run nothing beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"


def load_results(file: Path) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    if file.exists():
        for line in file.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["model"], r["what"])] = r["value"]
    return out


def record(file: Path, done: dict[tuple[str, str], Any], model: str, what: str, value: Any) -> None:
    done[(model, what)] = value
    with file.open("a") as f:
        f.write(json.dumps({"model": model, "what": what, "value": value}) + "\n")


def export(run: str, out: Path, int8: bool, calibration: int, calibration_data: str) -> None:
    """``selfsup export RUN --format onnx [--quantize int8]`` into ``out`` (skipped if there)."""
    want = out / ("backbone.int8.onnx" if int8 else "backbone.onnx")
    if want.exists():
        return
    cmd = [sys.executable, "-m", "selfsup", "export", run, "--format", "onnx", "--out", str(out),
           "--overwrite"]  # fmt: skip
    if int8:
        cmd += ["--quantize", "int8", "--calibration", str(calibration), "--calibration-data",
                calibration_data]  # fmt: skip
    print("+", " ".join(cmd[2:]), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"export failed ({done.returncode}):\n{done.stderr[-3000:]}")


def size_and_flops(run: str) -> dict[str, float]:
    """Parameters (millions) and FLOPs per image (G; 2 per multiply-add, convolutions and
    matrix products as torch's FlopCounterMode counts them) at the run's input size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import selfsup

    net = selfsup.load_backbone(run)
    c, s = net.pretrained_cfg["input_size"][0], net.pretrained_cfg["input_size"][-1]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, c, s, s))
    params = sum(p.numel() for p in net.parameters())
    return {"params_m": params / 1e6, "gflops": counter.get_total_flops() / 1e9}


def timings(model: Path, threads: int, spec: dict[str, Any]) -> dict[str, float]:
    """Median latency (ms) per image at batch 1 and throughput (images/s) at batch 32."""
    from selfsup.quantize import onnx_session

    sess = onnx_session(model, threads)
    name = sess.get_inputs()[0].name
    c, s = int(spec["channels"]), int(spec["image_size"])
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for batch, warm, reps in ((1, 30, 300), (32, 3, 30)):
        x = rng.standard_normal((batch, c, s, s), dtype=np.float32)
        for _ in range(warm):
            sess.run(None, {name: x})
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        if batch == 1:
            out["latency_ms_b1"] = med * 1e3
        else:
            out["img_s_b32"] = batch / med
    return out


def knn(model: Path, a: argparse.Namespace) -> dict[str, float]:
    from selfsup.eval.knn import knn_classify
    from selfsup.quantize import onnx_features, read_input_spec

    spec = read_input_spec(model)
    kw: dict[str, Any] = {"preprocessing": spec, "threads": None, "batch_size": 256}
    ftr, ltr = onnx_features(model, a.train, limit=a.limit_train, **kw)
    fte, lte = onnx_features(model, a.test, limit=a.limit_test, **kw)
    res = knn_classify(ftr, ltr, fte, lte, k=200, temperature=0.1)
    return {"top1": res.top1, "top5": res.top5, "n_train": res.n_train, "n_test": res.n_test}


def models(a: argparse.Namespace) -> list[dict[str, Any]]:
    """(name, run, ONNX file, whether to export int8) of every row."""
    rows = [{"name": "teacher", "run": a.teacher, "int8": False},
            {"name": "student", "run": a.student, "int8": False},
            {"name": "student-int8", "run": a.student, "int8": True}]  # fmt: skip
    for b in a.baseline:
        label, _, run = b.rpartition("=")
        rows.append({"name": label or Path(run).name, "run": run, "int8": False})
    for r in rows:
        folder = a.out / ("student" if r["name"] == "student-int8" else r["name"])
        r["dir"] = folder
        r["file"] = folder / ("backbone.int8.onnx" if r["int8"] else "backbone.onnx")
    return rows


def table(rows: list[dict[str, Any]], done: dict[tuple[str, str], Any], threads: list[int]) -> str:
    head = ["model", "params (M)", "GFLOPs", "ONNX MB"]
    for t in threads:
        head += [f"ms/img b1 {t}T", f"img/s b32 {t}T"]
    head += ["kNN top-1"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        n = r["name"]
        sf = done.get((n, "size"), {})
        cells = [n, f"{sf.get('params_m', float('nan')):.2f}", f"{sf.get('gflops', float('nan')):.3f}",
                 f"{done.get((n, 'file_mb'), float('nan')):.1f}"]  # fmt: skip
        for t in threads:
            tm = done.get((n, f"time{t}"), {})
            cells += [f"{tm.get('latency_ms_b1', float('nan')):.2f}",
                      f"{tm.get('img_s_b32', float('nan')):.0f}"]  # fmt: skip
        k = done.get((n, "knn"), {})
        cells.append(f"{k.get('top1', float('nan')):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="teacher run folder")
    p.add_argument("--student", required=True, help="distilled student run folder")
    p.add_argument("--baseline", action="append", default=[], metavar="[LABEL=]RUN",
                   help="more runs as float rows, e.g. scratch=runs/vicreg-15m (repeatable)")  # fmt: skip
    p.add_argument(
        "--train", default=str(CIFAR / "train"), help="kNN bank (default: CIFAR-10 train)"
    )
    p.add_argument(
        "--test", default=str(CIFAR / "test"), help="kNN queries (default: CIFAR-10 test)"
    )
    p.add_argument("--limit-train", type=int, default=None, help="bank size (default: all)")
    p.add_argument("--limit-test", type=int, default=None, help="queries (default: all)")
    p.add_argument("--threads", default="1,2", help="onnxruntime threads to time (default: 1,2)")
    p.add_argument("--calibration", type=int, default=256, help="int8 calibration images")
    p.add_argument("--calibration-data", default=None,
                   help="int8 calibration images (default: --train)")  # fmt: skip
    p.add_argument("--knn", default="student,student-int8",
                   help="rows whose kNN to measure through their ONNX file, in this order "
                   "(~4 minutes a float model here), or none (default: %(default)s)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="folder for exports and results")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in a.threads.split(",")]
    file = a.out / "results.jsonl"
    done = load_results(file)
    rows = models(a)
    for r in rows:  # the student's int8 export writes its float file too
        if r["name"] != "student":
            export(r["run"], r["dir"], r["int8"], a.calibration, a.calibration_data or a.train)
    from selfsup.quantize import read_input_spec

    for r in rows:  # sizes and timings first: the cheap part, on a quiet machine
        n = r["name"]
        if (n, "size") not in done:
            record(file, done, n, "size", size_and_flops(r["run"]))
        if (n, "file_mb") not in done:
            mb = sum(f.stat().st_size for f in r["dir"].glob(r["file"].name + "*")) / 1e6
            record(file, done, n, "file_mb", mb)
        for t in threads:
            if (n, f"time{t}") not in done:
                record(file, done, n, f"time{t}", timings(r["file"], t, read_input_spec(r["file"])))
                print(n, t, "threads:", done[(n, f"time{t}")], flush=True)
    by_name = {r["name"]: r for r in rows}
    for n in [] if a.knn == "none" else a.knn.split(","):
        if n not in by_name:
            raise SystemExit(f"--knn: no row {n!r}; rows are {', '.join(by_name)}")
        if (n, "knn") not in done:
            record(file, done, n, "knn", knn(by_name[n]["file"], a))
            print(n, "kNN:", done[(n, "knn")], flush=True)
    print(table(rows, done, threads))
    for t in threads:
        s, q = done.get(("student", f"time{t}")), done.get(("student-int8", f"time{t}"))
        if s and q:
            print(f"int8 vs float student, {t} thread(s): latency x{s['latency_ms_b1'] / q['latency_ms_b1']:.2f} "
                  f"lower, throughput x{q['img_s_b32'] / s['img_s_b32']:.2f}")  # fmt: skip
    s, q = done.get(("student", "knn")), done.get(("student-int8", "knn"))
    if s and q:
        print(f"int8 kNN top-1 change: {q['top1'] - s['top1']:+.2f} points")


if __name__ == "__main__":
    main()
