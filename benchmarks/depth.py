"""Depth on 7-Scenes: the probe and self-supervised depth from video, SSL against random init.

Rows (each in its own process, appended to ``<out>/results.jsonl`` as it finishes; a rerun
skips rows already there, so an interrupted benchmark resumes):

- ``probe-linear`` / ``probe-decoder``: ``selfsup eval depth`` on the run's frozen backbone
  (frames 0-799 train, 800-999 test), and ``--random-init``; the constant baselines come
  with each result.
- ``monodepth``: ``selfsup depth train`` on frames 0-799 (no depth read) with the run's
  backbone as encoder, and with its untrained twin, the same steps; scored median-scaled on
  frames 800-999.

    python benchmarks/depth.py --run RUN --out /tmp/depth
    python benchmarks/depth.py --run RUN --out /tmp/depth --only probe --probe-steps 100

Budgets are optimiser steps, so figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEVEN = ROOT.parent / "shared" / "datasets" / "sevenscenes" / "seq"
KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


def jobs(a: argparse.Namespace) -> list[dict[str, Any]]:
    split = ["--train-frames", a.train_frames, "--test-frames", a.test_frames]
    out: list[dict[str, Any]] = []
    for protocol in ("linear", "decoder"):
        out.append({"row": f"probe-{protocol}", "cmd": [
            "eval", "depth", "--checkpoint", a.run, "--data", a.frames, *split, "--protocol",
            protocol, "--max-steps", str(a.probe_steps), "--json", "--no-progress"]})  # fmt: skip
    out.append({"row": "monodepth", "cmd": [
        "depth", "train", "--frames", a.frames, "--encoder", a.run, *split, "--steps",
        str(a.depth_steps), f"--offsets={a.offsets}", "--image-size", str(a.depth_size), "--json",
        "--no-progress", *(["--poses"] if a.poses else []),
        *(["--intrinsics", a.intrinsics] if a.intrinsics else [])]})  # fmt: skip
    return [j for j in out if not a.only or any(j["row"].startswith(o) for o in a.only)]


def run_one(job: dict[str, Any], random_init: bool, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "selfsup", *job["cmd"]]
    if job["row"] == "monodepth":
        cmd += ["--out", str(out / ("monodepth-random-init" if random_init else "monodepth-ssl"))]
    cmd += ["--random-init"] if random_init else []
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), command=" ".join(cmd[2:]))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| row | init | " + " | ".join(KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
    for r in rows:
        init = "random init" if r["random_init"] else "SSL"
        lines.append(f"| {r['row']} | {init} | " + " | ".join(f"{r[k]:.4f}" for k in KEYS) + " |")
    for r in rows[:1] + [x for x in rows if x["row"] == "monodepth"][:1]:
        for name, b in r.get("baselines", {}).items():
            if all(k in b for k in KEYS):
                lines.append(f"| {name} | - | " + " | ".join(f"{b[k]:.4f}" for k in KEYS) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", required=True, help="pretraining run (its backbone is the encoder)")
    p.add_argument("--frames", default=str(SEVEN))
    p.add_argument("--train-frames", default="0:800")
    p.add_argument("--test-frames", default="800:1000")
    p.add_argument("--probe-steps", type=int, default=300, help="probe steps (default: 300)")
    p.add_argument("--depth-steps", type=int, default=400,
                   help="self-supervised depth steps (default: 400)")  # fmt: skip
    p.add_argument("--offsets", default="-3,3", help="source frames (default: -3,3)")
    p.add_argument("--depth-size", type=int, default=128,
                   help="shorter side for self-supervised depth (default: 128; 2 CPU cores "
                   "run ~4 s a step at 192)")  # fmt: skip
    p.add_argument(
        "--poses",
        action="store_true",
        help="self-supervised depth with the known camera poses (no pose network)",
    )
    p.add_argument("--intrinsics", default=None,
                   help="intrinsics file for self-supervised depth (default: the frames' "
                   "camera-intrinsics.txt; 7-Scenes' is the depth camera's, see "
                   "benchmarks/depth_intrinsics.py)")  # fmt: skip
    p.add_argument("--only", type=lambda s: s.split(","), default=None, help="row prefixes")
    p.add_argument("--out", required=True, help="folder of results.jsonl, depth.md, runs")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    rows = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    done = {(r["row"], r["random_init"]) for r in rows}
    for job in jobs(a):
        for random_init in (False, True):
            if (job["row"], random_init) in done:
                continue
            res = dict(run_one(job, random_init, out), row=job["row"], random_init=random_init)
            with open(results, "a") as f:
                f.write(json.dumps(res) + "\n")
            rows.append(res)
            print(f"{job['row']} {'random init' if random_init else 'SSL'}: "
                  f"{json.dumps({k: round(res[k], 4) for k in KEYS})}", flush=True)  # fmt: skip
    text = table(rows)
    (out / "depth.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
