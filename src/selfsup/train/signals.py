"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, then stop."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

from tqdm.auto import tqdm


class StopSignals:
    """Records the first SIGINT / SIGTERM in ``received`` (a second one stops at once)."""

    def __init__(self) -> None:
        self.received: str | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self.received is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.received = signal.Signals(signum).name
            tqdm.write(
                f"received {self.received}: finishing this step, saving a checkpoint, "
                "then stopping (resume with --resume)."
            )

        old: dict[int, Any] = {}
        try:
            for s in (int(signal.SIGINT), int(signal.SIGTERM)):
                old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
            pass
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
