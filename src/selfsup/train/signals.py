"""Ctrl-C, SIGTERM and SIGUSR1/SIGUSR2 during training: finish the step, save a
checkpoint, then stop.

SIGTERM is what schedulers send on preemption or at the time limit; SIGUSR1 / SIGUSR2 is
what SLURM sends ahead of the limit with ``#SBATCH --signal=USR1@90`` (see docs/slurm.sh,
which then requeues the job so that it resumes)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

from tqdm.auto import tqdm

# SIGUSR1/2 do not exist on Windows.
_SIGNALS = [int(getattr(signal, n)) for n in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
            if hasattr(signal, n)]  # fmt: skip


class StopSignals:
    """Records the first SIGINT / SIGTERM / SIGUSR1 / SIGUSR2 in ``received`` (a second one
    stops at once)."""

    def __init__(self) -> None:
        self.received: str | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self.received is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.received = signal.Signals(signum).name
            why = (
                " (the scheduler's warning before the time limit)" if "USR" in self.received else ""
            )
            tqdm.write(
                f"received {self.received}{why}: finishing this step, saving a checkpoint, "
                "then stopping (resume with --resume)."
            )

        old: dict[int, Any] = {}
        try:
            for s in _SIGNALS:
                old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
            pass
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
