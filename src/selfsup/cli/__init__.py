"""The ``selfsup`` command line. Every command is a thin layer over :mod:`selfsup.api` (and
the modules it names); each module of this package owns one group of commands: its parser
(``add_*parser(subparsers)``) and its handler.

==============  ====================================================
module          commands
==============  ====================================================
``pretrain``    pretrain, methods, config
``eval``        eval knn, eval linear
``experiment``  eval fewshot / finetune / scratch / selftrain, experiment label-efficiency
``data``        data check
``export``      export
``viz``         viz, report
``embed``       embed, curate
``dense``       eval segment, eval detect
``depth``       eval depth, depth train / eval / predict
==============  ====================================================
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from selfsup import __version__, progress
from selfsup.cli import data, depth, embed, experiment, export, pretrain, viz
from selfsup.cli import eval as eval_
from selfsup.cli.common import Formatter, run_handler
from selfsup.cli.pretrain import PRETRAIN_FLAGS
from selfsup.cli.viz import VIZ_FLAGS

__all__ = ["PRETRAIN_FLAGS", "VIZ_FLAGS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfsup",
        description="Self-supervised pretraining for vision: learn from unlabeled images, "
        "then measure what was learned with few labels.",
        formatter_class=Formatter,
        epilog="run `selfsup COMMAND --help` for each command's options.",
    )
    p.add_argument("--version", action="version", version=f"selfsup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # The order here is the order of `selfsup --help`.
    pretrain.add_parser(sub)
    eval_.add_parser(sub)
    experiment.add_parser(sub)
    data.add_parser(sub)
    pretrain.add_methods_parser(sub)
    pretrain.add_config_parser(sub)
    export.add_parser(sub)
    depth.add_parser(sub)
    viz.add_viz_parser(sub)
    viz.add_report_parser(sub)
    embed.add_embed_parser(sub)
    embed.add_curate_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    # Long-running commands show progress unless --no-progress; restored afterwards so that
    # calling main() from Python leaves the process default as it was.
    before = progress.wanted(None)
    progress.set_default(not getattr(args, "no_progress", False))
    try:
        return run_handler(args.handler, args)
    finally:
        progress.set_default(before)
