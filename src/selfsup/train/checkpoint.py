"""Checkpoints: written atomically, loaded without executing code.

A checkpoint is a plain dict of tensors and primitive values, so ``torch.load(...,
weights_only=True)`` reads it. ``last.pt`` is replaced atomically (write to a temporary file,
fsync, rename); the one it replaces is kept as ``previous.pt``.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup.config import Config, to_dict

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
PREVIOUS = "previous.pt"
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or read, explained for the user."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (a full disk, say); the one before is intact."""


def capture_rng() -> dict[str, Any]:
    """The state of every random stream training uses."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict[str, Any], path: Path, keep_previous: bool = True,
                last_step: int | None = None) -> None:  # fmt: skip
    """Write ``obj`` to ``path`` so that a crash at any moment leaves a readable file.

    A failed write (a full disk, a quota, a read-only mount) leaves ``path`` as it was and
    raises :class:`CheckpointWriteError` saying what happened, what was needed and free, and
    how to resume; ``last_step`` is the step ``path`` already holds, for that message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:
            # torch's zip writer reports a full disk as "RuntimeError: [enforce fail at
            # inline_container.cc] unexpected pos ...": turn any failed write into words.
            raise _write_error(err, path, obj, last_step) from None
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREVIOUS))
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 1024:,.0f} KiB"


def _write_error(err: BaseException, path: Path, obj: dict[str, Any],
                 last_step: int | None) -> CheckpointWriteError:  # fmt: skip
    needed = _tensor_bytes(obj)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        free is not None and free < needed
    )
    what = (f"no space left on the disk of {str(path.parent)!r}" if full
            else f"could not write {str(path)!r} ({type(err).__name__}: {err})")  # fmt: skip
    room = f"; the checkpoint needs about {_mb(needed)}" + (
        f" and {_mb(free)} are free" if free is not None else ""
    )
    run = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
    if path.exists():
        step = f" (step {last_step})" if last_step is not None else ""
        kept = f"The last good checkpoint, {str(path)!r}{step}, is untouched."
        how = (f" Free some space (or copy the run folder to a disk that has it), then "
               f"continue with: selfsup pretrain --resume {run}")  # fmt: skip
    else:
        kept = "No checkpoint of this run was saved before this one."
        how = " Free some space (or choose another --out) and start again."
    return CheckpointWriteError(f"{what}{room}. {kept}{how}")


def resolve(path: str | Path) -> Path:
    """A run folder, its checkpoints folder, or a checkpoint file -> the checkpoint file."""
    p = Path(path).expanduser()
    for cand in (p, p / CHECKPOINT_DIR / LAST, p / LAST):
        if cand.is_file():
            return cand
    if p.is_dir():
        raise CheckpointError(
            f"no checkpoint in {str(p)!r} (looked for {CHECKPOINT_DIR}/{LAST}). Was the run "
            "started with this --out folder, and did it reach its first checkpoint?"
        )
    raise CheckpointError(f"checkpoint or run folder {str(p)!r} does not exist.")


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint (a run folder or a file) on the CPU, never executing code. A damaged
    ``last.pt`` falls back to the ``previous.pt`` beside it, with a warning."""
    return load_with_source(path)[0]


def load_with_source(path: str | Path) -> tuple[dict[str, Any], Path]:
    """:func:`load`, and the file actually read (``previous.pt`` when ``last.pt`` is
    damaged: a truncated copy, a disk that filled up in an older version)."""
    file = resolve(path)
    try:
        return _read(file), file
    except CheckpointError as err:
        prev = file.with_name(PREVIOUS)
        if file.name != LAST or not prev.is_file():
            raise
        first = err
    try:
        ckpt = _read(prev)
    except CheckpointError:
        raise first from None
    step = ckpt.get("state", {}).get("step")
    reason = str(first).split(": ", 1)[-1].split(". If the run")[0][:200]
    warnings.warn(
        f"{str(file)!r} cannot be read ({reason}); using "
        f"{PREVIOUS} beside it instead, from step {step}.",
        stacklevel=2,
    )
    return ckpt, prev


def _read(file: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint {str(file)!r}: {err}. If the run was interrupted while "
            f"writing, {PREVIOUS} beside it holds the one before."
        ) from None
    if not isinstance(ckpt, dict) or "method" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{str(file)!r} is not a selfsup checkpoint.")
    return ckpt


def training_checkpoint(
    cfg: Config,
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: dict[str, Any],
    rng_ranks: list[Any] | None,
    probe: dict[str, object] | None,
) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly: config, weights, optimiser and
    scaler state, where the run stands, and the random state of every rank."""
    from selfsup import __version__

    return {
        "format": FORMAT,
        "version": __version__,
        "config": to_dict(cfg),
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": state,
        "rng": capture_rng(),
        "rng_ranks": rng_ranks,
        "probe": probe,
    }
