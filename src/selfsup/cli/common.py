"""What every command shares: the help formatter, argument types, progress flags, tables and
the one place where errors become a line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

Handler = Callable[[argparse.Namespace], int]
# The `add_subparsers()` object commands are added to (argparse keeps its class private).
Subparsers = Any


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def fmt_default(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def parse_bool(text: str) -> bool:
    t = text.lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def signature_default(func: Callable[..., Any], name: str) -> Any:
    return inspect.signature(func).parameters[name].default


def add_progress_flags(p: argparse.ArgumentParser, legacy: bool = False) -> None:
    """``--no-progress`` for a long-running command; ``legacy`` keeps the old ``--progress``
    (progress is now shown by default) accepted, hidden from --help."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    if legacy:
        p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """A two-column table (name, right-aligned value) on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def print_columns(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table with a header row on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def run_handler(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command; the errors a user can fix become one line on stderr and exit code 2
    (set SELFSUP_DEBUG=1 for the traceback)."""
    from selfsup.config import ConfigError
    from selfsup.data import DataError
    from selfsup.registry import UnknownNameError
    from selfsup.train import TrainingError
    from selfsup.train.checkpoint import CheckpointError

    try:
        return handler(args)
    except (ConfigError, DataError, CheckpointError, UnknownNameError, TrainingError) as err:
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print(f"selfsup: error: {err}", file=sys.stderr)
        return 2


def record_eval(a: argparse.Namespace, results: dict[str, Any]) -> None:
    """Keep this evaluation in its run (``<run>/evaluations.jsonl``, see
    :mod:`selfsup.eval.records`) and say where, unless ``--json`` keeps stdout for JSON."""
    from selfsup.eval.records import record_evaluation

    random_init = bool(getattr(a, "random_init", False)) or a.protocol == "scratch"
    path = record_evaluation(getattr(a, "checkpoint", None), a.protocol, results, vars(a),
                             random_init=random_init)  # fmt: skip
    if path is not None and not getattr(a, "json", False):
        print(f"recorded in {path}", file=sys.stderr)
