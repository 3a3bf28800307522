"""Quarantine: move flagged files out of the data folder, keeping their relative paths, with
every move recorded in ``curation_manifest.json``; and move them back. Nothing is deleted."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from selfsup.config import ConfigError
from selfsup.curation.report import REPORT_VERSION, CurationReport
from selfsup.data.sources import DataError

MANIFEST = "curation_manifest.json"


def move_flagged(report: CurationReport, root: Path, quarantine: Path) -> list[str]:
    """Move flagged files under ``quarantine`` (same relative paths); return them."""
    reasons: dict[str, str] = {}
    for g in report.groups:
        for m in g.members:
            reasons[m.path] = f"{m.kind} duplicate of {g.keep}"
    for o in report.outliers:
        if o.flagged and o.path not in reasons:
            reasons[o.path] = f"outlier: {o.reason}"
    clash = [p for p in reasons if (quarantine / p).exists()]
    if clash:
        raise ConfigError(
            f"{len(clash)} flagged files already exist in --move-to {str(quarantine)!r} (e.g. "
            f"{clash[0]}); nothing was moved. Restore them first (selfsup curate --undo "
            f"{quarantine}) or choose another folder."
        )
    manifest = quarantine / MANIFEST
    record: dict[str, Any] = {"version": REPORT_VERSION, "moves": [], "restored": []}
    if manifest.is_file():
        record = json.loads(manifest.read_text())
    quarantine.mkdir(parents=True, exist_ok=True)
    moved: list[str] = []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        for rel, why in reasons.items():
            src, dst = root / rel, quarantine / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
            record["moves"].append({"from": str(src.resolve()), "to": str(dst.resolve()),
                                    "reason": why, "time": now})  # fmt: skip
            moved.append(rel)
    finally:
        manifest.write_text(json.dumps(record, indent=1))
    return moved


def restore_quarantine(path: str | Path) -> dict[str, int]:
    """Undo ``curate(move_to=...)``: move every file of the quarantine's manifest back to
    where it was. ``path`` is the quarantine folder or its ``curation_manifest.json``.
    Files whose original place is taken again are left where they are (and stay listed)."""
    p = Path(path).expanduser()
    manifest = p / MANIFEST if p.is_dir() else p
    if not manifest.is_file():
        raise DataError(
            f"no {MANIFEST} in {str(p)!r}: give the --move-to folder of an earlier curate run."
        )
    record = json.loads(manifest.read_text())
    keep, restored, missing = [], 0, 0
    for m in record.get("moves", []):
        src, dst = Path(m["from"]), Path(m["to"])
        if dst.exists() and not src.exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(dst), str(src))
            record.setdefault("restored", []).append(m)
            restored += 1
        else:
            missing += not dst.exists()
            keep.append(m)
    record["moves"] = keep
    manifest.write_text(json.dumps(record, indent=1))
    return {"restored": restored, "left": len(keep), "missing": missing}
