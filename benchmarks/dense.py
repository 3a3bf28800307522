"""Dense tasks, SSL-initialised against random-init with the same labels and budget.

Each row trains a segmenter or detector from a pretrained run's backbone and from the same
network untrained (``--random-init``), each in its own process (``selfsup eval segment|detect
--json``), and appends the result to ``<out>/results.jsonl`` as it finishes: a rerun skips
rows already there, so an interrupted benchmark resumes. The table (SSL, random init, gain)
is printed and written to ``<out>/dense.md``.

    python benchmarks/dense.py --street RUN --out /tmp/dense              # CamVid + Penn-Fudan
    python benchmarks/dense.py --vessels RUN --out /tmp/dense --only drive --vessel-decoder unet
    python benchmarks/dense.py --street RUN --out /tmp/dense --steps 100 --only camvid-linear

Budgets are optimiser steps (``--steps``), so figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def jobs(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (row, initialisation) the benchmark runs, as ``selfsup eval`` arguments."""
    out: list[dict[str, Any]] = []
    camvid, fudan, drive = Path(a.camvid), Path(a.pennfudan), Path(a.drive)
    transfer = ["--also-test", a.chasedb1] if a.chasedb1 else []
    if a.street:
        for row, extra in [
            ("camvid-finetune-10%", ["--protocol", "finetune", "--fraction", "0.1"]),
            ("camvid-linear-100%", ["--protocol", "linear"]),
            ("camvid-finetune-100%", ["--protocol", "finetune"]),
            ("camvid-linear-10%", ["--protocol", "linear", "--fraction", "0.1"]),
        ]:
            out.append({"row": row, "run": a.street, "args": [
                "segment", "--train", str(camvid / "train"), "--test", str(camvid / "test"),
                "--max-steps", str(a.steps), "--image-size", str(a.seg_size), *extra]})  # fmt: skip
        out.append({"row": "pennfudan-detect-100%", "run": a.street, "args": [
            "detect", "--train", str(fudan / "train"), "--test", str(fudan / "test"),
            "--max-steps", str(a.steps), "--image-size", str(a.det_size)]})  # fmt: skip
    if a.vessels:
        for shots, seeds in ((2, 3), (5, 3), (20, 1)):
            for seed in range(min(seeds, a.seeds)):
                out.append({"row": f"drive-{shots}-images", "seed": seed, "run": a.vessels,
                            "args": ["segment", "--train", str(drive / "train"), "--test",
                                     str(drive / "test"), "--protocol", "finetune", "--shots",
                                     str(shots), "--seed", str(seed), "--max-steps",
                                     str(a.steps), "--image-size", str(a.vessel_size),
                                     "--batch-size", str(a.vessel_batch), "--decoder",
                                     a.vessel_decoder, *transfer]})  # fmt: skip
    return [j for j in out if not a.only or any(j["row"].startswith(o) for o in a.only)]


def run_one(job: dict[str, Any], random_init: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "selfsup", "eval", *job["args"], "--checkpoint", job["run"],
           "--json", "--no-progress"] + (["--random-init"] if random_init else [])  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), command=" ".join(cmd[2:]))


def _metric(r: dict[str, Any]) -> float:
    return float(r["dice"] if r.get("dice") is not None else r.get("miou", r.get("box_ap")))


def table(rows: list[dict[str, Any]]) -> str:
    """Mean over seeds of each row's metric, SSL against random init; a row scored on a
    further test split (``--also-test``) adds a row ``<row> on <split>``; a second
    observer's agreement is listed below the table."""
    import statistics

    groups: dict[str, dict[bool, list[float]]] = {}
    observers: dict[str, Any] = {}
    for r in rows:
        groups.setdefault(r["row"], {True: [], False: []})[r["random_init"]].append(_metric(r))
        for t in r.get("transfer", []):
            name = f"{r['row']} on {Path(t['test']).name}"
            groups.setdefault(name, {True: [], False: []})[r["random_init"]].append(_metric(t))
            observers[Path(t["test"]).name] = t.get("observer")
        test = Path(r.get("settings", {}).get("test", ""))
        observers[f"{test.parent.name}/{test.name}"] = r.get("observer")
    lines = ["| row | metric | SSL | random init | gain | seeds |", "|---|---|---|---|---|---|"]
    for name, g in groups.items():
        if not g[True] or not g[False]:
            continue
        ssl, rnd = statistics.mean(g[False]), statistics.mean(g[True])
        what = "Dice" if name.startswith("drive") else "box AP" if "detect" in name else "mIoU"
        sd = f" ± {statistics.stdev(g[False]):.1f}" if len(g[False]) > 1 else ""
        lines.append(f"| {name} | {what} | {ssl:.2f}{sd} | {rnd:.2f} | {ssl - rnd:+.2f} | "
                     f"{len(g[False])} |")  # fmt: skip
    for split, obs in observers.items():
        if obs:
            lines.append(f"\nSecond observer on {split} ({obs.get('masks')}): Dice "
                         f"{obs.get('dice')} over {obs.get('images')} images; "
                         f"{len(obs.get('suspect') or [])} single-valued masks left out")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--street", help="run pretrained on street scenes (CamVid, Penn-Fudan rows)")
    p.add_argument("--vessels", help="run pretrained on fundus images (DRIVE rows)")
    p.add_argument("--camvid", default=str(SHARED / "camvid"))
    p.add_argument("--pennfudan", default=str(SHARED / "pennfudan"))
    p.add_argument("--drive", default=str(SHARED / "drive"))
    p.add_argument("--steps", type=int, default=300, help="optimiser steps a run (default: 300)")
    p.add_argument("--seg-size", type=int, default=256, help="CamVid crop side (default: 256)")
    p.add_argument(
        "--det-size", type=int, default=512, help="Penn-Fudan longer side (default: 512)"
    )
    p.add_argument("--vessel-size", type=int, default=384, help="DRIVE crop side (default: 384)")
    p.add_argument("--vessel-batch", type=int, default=4, help="DRIVE crops a step (default: 4)")
    p.add_argument("--vessel-decoder", choices=("fpn", "unet"), default="unet",
                   help="DRIVE decoder (default: unet)")  # fmt: skip
    p.add_argument("--chasedb1", default=str(SHARED / "chasedb1"),
                   help="DRIVE rows are also scored here ('' for none)")  # fmt: skip
    p.add_argument(
        "--seeds", type=int, default=3, help="at most this many draws a row (default: 3)"
    )
    p.add_argument("--only", type=lambda s: s.split(","), default=None, help="row prefixes")
    p.add_argument("--out", required=True, help="folder of results.jsonl and dense.md")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    rows = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    done = {(r["row"], r.get("seed", 0), r["random_init"]) for r in rows}
    for job in jobs(a):
        for random_init in (False, True):
            key = (job["row"], job.get("seed", 0), random_init)
            if key in done:
                continue
            res = dict(run_one(job, random_init), row=job["row"], seed=job.get("seed", 0))
            with open(results, "a") as f:
                f.write(json.dumps(res) + "\n")
            rows.append(res)
            print(f"{job['row']} seed {key[1]} {'random init' if random_init else 'SSL'}: "
                  f"{json.dumps({k: res.get(k) for k in ('miou', 'dice', 'box_ap', 'mask_ap')})}",
                  flush=True)  # fmt: skip
    text = table(rows)
    (out / "dense.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
