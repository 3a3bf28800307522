"""Progress bars for every long-running command: a live bar on a terminal, and a line every
``LOG_INTERVAL`` seconds (count, rate, ETA) when output goes to a log file.

Commands show progress by default; ``set_default(False)`` (the CLI's ``--no-progress``)
turns it off for the whole process, and library calls pass ``progress=`` to decide alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# Seconds between lines when the progress stream is not a terminal (a log file, CI).
LOG_INTERVAL = 30.0

_default = True


def set_default(enabled: bool) -> None:
    """Whether progress is shown when a caller passes ``progress=None``."""
    global _default
    _default = enabled


def wanted(progress: bool | None) -> bool:
    """``progress`` itself, or the process default when it is ``None``."""
    return _default if progress is None else progress


def _is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = None,
    initial: int = 0,
    leave: bool = False,
    **kwargs: Any,
) -> tqdm[T]:
    """A tqdm bar (count, rate, ETA) that also reads well in a log file: there it prints a
    plain line at most every ``LOG_INTERVAL`` seconds instead of redrawing."""
    terminal = _is_terminal()
    options: dict[str, Any] = {
        "total": total,
        "desc": desc,
        "unit": unit,
        "disable": not wanted(enabled),
        "initial": initial,
        "leave": leave if terminal else True,
        "dynamic_ncols": terminal,
    }
    if not terminal:
        options.update(mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL * 2, ascii=True)
        options.setdefault("ncols", 100)
    options.update(kwargs)
    return tqdm(iterable, **options)


def iterate(
    iterable: Iterable[T],
    *,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = None,
    total: int | None = None,
) -> Iterator[T]:
    """``iterable`` with a progress bar (see :func:`progress_bar`)."""
    yield from progress_bar(iterable, total=total, desc=desc, unit=unit, enabled=enabled)


def write(message: str) -> None:
    """Print a line without breaking a bar on screen."""
    tqdm.write(message, file=sys.stderr)
