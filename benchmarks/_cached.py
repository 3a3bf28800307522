"""Shared by the resumable benchmark runners: a CLI command's JSON answer kept in a file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def cached_json(cmd: list[str], file: Path, cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` (which prints one JSON object) unless ``file`` already holds its answer;
    a failure exits with the command and the end of its stderr."""
    if not file.exists() or not file.stat().st_size:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
        file.write_text(done.stdout)
    result: dict[str, Any] = json.loads(file.read_text())
    return result
