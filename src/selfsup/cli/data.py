"""``selfsup data check``: what is in an image folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from selfsup.cli.common import Formatter, Subparsers, print_table


def add_parser(sub: Subparsers) -> None:
    da = sub.add_parser(
        "data",
        help="inspect data: data check PATH",
        formatter_class=Formatter,
        description="Tools for image folders.",
    )
    da.set_defaults(handler=run_data)
    das = da.add_subparsers(dest="data_command", metavar="ACTION")
    dc = das.add_parser(
        "check", formatter_class=Formatter, help="scan a folder and report what is in it",
        description="Scan every image under PATH in parallel: counts, formats, colour modes, "
        "bit depths, channels, sizes, unreadable files, exact duplicates, and per-channel "
        "mean/std as training sees them (reused by pretrain --normalize auto).",
    )  # fmt: skip
    dc.add_argument("path", help="folder of images (any depth)")
    dc.add_argument(
        "--channels",
        type=int,
        default=3,
        help="channels the images are converted to for statistics (default: 3)",
    )
    dc.add_argument(
        "--out",
        default="data_report.json",
        help="report file (default: data_report.json); a copy is cached for --normalize auto",
    )
    dc.add_argument(
        "--workers",
        type=int,
        default=None,
        help="scanning processes (default: one per core, up to 8)",
    )
    dc.add_argument("--json", action="store_true", help="print the report as JSON (default: false)")


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def _rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    w, h = report["width"], report["height"]
    return [
        ("files", str(report["files"])),
        ("readable", str(report["readable"])),
        ("unreadable", str(len(report["unreadable"]))),
        ("exact duplicates", f"{report['duplicate_files']} in {len(report['duplicates'])} groups"),
        ("labelled (class folders)", f"{report['labelled']} ({len(report['classes'])} classes)"),
        ("formats", _counts(report["formats"])),
        ("modes", _counts(report["modes"])),
        ("bit depths", _counts(report["bit_depths"])),
        ("channels", _counts(report["native_channels"])),
        ("width min / median / max", f"{w.get('min')} / {w.get('median')} / {w.get('max')}"),
        ("height min / median / max", f"{h.get('min')} / {h.get('median')} / {h.get('max')}"),
        (f"mean ({report['channels']} ch)", ", ".join(f"{m:.4f}" for m in report["mean"])),
        (f"std ({report['channels']} ch)", ", ".join(f"{s:.4f}" for s in report["std"])),
        ("seconds", str(report["seconds"])),
    ]


def run_data(a: argparse.Namespace) -> int:
    from selfsup.config import ConfigError
    from selfsup.data.check import check_folder, save_report

    if a.data_command != "check":
        raise ConfigError("choose an action: selfsup data check PATH")
    report = check_folder(a.path, channels=a.channels, workers=a.workers)
    written = save_report(report, a.out)
    if a.json:
        print(json.dumps(report))
        return 0
    print_table(f"data check: {report['path']}", _rows(report))
    for bad in report["unreadable"][:10]:
        print(f"unreadable: {bad['file']}: {bad['error']}")
    if len(report["unreadable"]) > 10:
        print(f"... and {len(report['unreadable']) - 10} more (see the report)")
    print(f"report: {written[0]}")
    return 0
