"""Where a run stands (saved in every checkpoint) and what a finished ``fit`` reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Consecutive non-finite losses tolerated (each skipped) before training stops.
MAX_BAD_STEPS = 5


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    # Global samples already consumed in the current epoch (where a resumed run restarts).
    epoch_pos: int = 0
    images_seen: int = 0
    # Seconds spent training (monitors and checkpoints excluded); time budgets count these.
    elapsed: float = 0.0
    skipped_steps: int = 0
    finished: bool = False
    # Sharded data: (processes, loader workers, batch) that dealt the shards, so a resume
    # can tell whether it continues the epoch exactly (see selfsup.data.shards).
    data_layout: list[int] = field(default_factory=list)


@dataclass
class FitResult:
    out_dir: Path | None
    state: TrainState
    stopped_by: str
    images_per_s: float
    peak_memory_mb: float
    final_loss: float | None
    monitor: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir) if self.out_dir else None
        return d
