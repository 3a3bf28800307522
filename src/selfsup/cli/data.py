"""``selfsup data check``: what is in an image folder, or in a dense-task folder
(segmentation ``images/`` + ``masks/``, COCO ``annotations.json``, or splits of either)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from selfsup.cli.common import Formatter, Subparsers, print_table


def add_parser(sub: Subparsers) -> None:
    da = sub.add_parser(
        "data",
        help="inspect data: data check PATH, data shard DIR --out SHARDS",
        formatter_class=Formatter,
        description="Tools for image folders.",
    )
    da.set_defaults(handler=run_data)
    das = da.add_subparsers(dest="data_command", metavar="ACTION")
    dc = das.add_parser(
        "check", formatter_class=Formatter, help="scan a folder and report what is in it",
        description="Scan every image under PATH in parallel: counts, formats, colour modes, "
        "bit depths, channels, sizes, unreadable files, exact duplicates, and per-channel "
        "mean/std as training sees them (reused by pretrain --normalize auto).\n\n"
        "DICOM (.dcm, .dicom, or no extension with the DICM preamble) and NIfTI (.nii, "
        ".nii.gz) count every frame or slice, and the report lists modalities, photometric "
        "interpretations, bit depths, transfer syntaxes and the compressed files that need "
        "an extra decoder, with the command that installs it (see docs/medical.md).\n\n"
        "Dense-task folders are recognised by their layout: a segmentation split (images/ + "
        "masks/, optional fov/ and classes.json), a COCO split (annotations.json) or a folder "
        "of splits. Then the check pairs images with masks, compares sizes from file headers, "
        "and reports the class balance; it exits with 1 when it finds problems.",
    )  # fmt: skip
    dc.add_argument("path", help="folder of images (any depth), a dense-task folder, or shards "
                    "(a folder or pattern written by selfsup data shard: counts from its index)")  # fmt: skip
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
    dc.add_argument(
        "--limit",
        type=int,
        default=200,
        help="dense folders: masks decoded for the class histogram, spread over each split "
        "(default: 200; sizes and pairing are checked for every file)",
    )
    _add_shard(das)


def _add_shard(das: Any) -> None:
    ds = das.add_parser(
        "shard", formatter_class=Formatter, help="write a folder into WebDataset tar shards",
        description="Write every image under DIR into WebDataset tar shards (the image bytes "
        "as they are, the label of class sub-folders as 'cls', the file's path as 'path'), "
        "and index.json with each shard's sample count. Train from them with --data "
        "'OUT/shard-{000000..000123}.tar' (or --data OUT, or URLs and pipe: commands as "
        "WebDataset accepts them, with index.json beside the shards). See docs/scale.md.",
    )  # fmt: skip
    ds.add_argument("path", metavar="DIR", help="folder of images (any depth)")
    ds.add_argument("--out", required=True, help="folder for the shards (new or empty)")
    ds.add_argument(
        "--shard-size", default="500MB",
        help="at most this many bytes per shard (default: 500MB). Large shards read fast "
        "from object storage; have many more shards than processes x loader workers (each "
        "reads its own).",
    )  # fmt: skip
    ds.add_argument(
        "--min-shards", type=int, default=64,
        help="split the images over at least this many shards, evenly (default: 64; fewer "
        "only when there are fewer images), so that every process and loader worker gets its "
        "own shards even for a small set",
    )  # fmt: skip
    ds.add_argument(
        "--no-shuffle", action="store_true",
        help="write the images in the folder's order (default: a seeded random order, so that "
        "each shard holds a mix of the folder and not one class)",
    )  # fmt: skip
    ds.add_argument("--seed", type=int, default=0, help="seed of the write order (default: 0)")


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
        *_medical_rows(report),
        *_stat_rows(report),
        ("seconds", str(report["seconds"])),
    ]


def _stat_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Mean and std per channel; one value for grey images (their channels are equal)."""
    ch = report["channels"]
    if report.get("grey") and ch > 1:
        return [
            ("mean (grey)", f"{report['mean'][0]:.4f}"),
            ("std (grey)", f"{report['std'][0]:.4f}"),
        ]
    return [(f"mean ({ch} ch)", ", ".join(f"{m:.4f}" for m in report["mean"])),
            (f"std ({ch} ch)", ", ".join(f"{s:.4f}" for s in report["std"]))]  # fmt: skip


def _medical_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    m = report.get("medical")
    if not m:
        return []
    return [("DICOM files (frames)", f"{m['dicom_files']} ({m['frames']})"),
            ("NIfTI files (slices)", f"{m['nifti_files']} ({m['slices']})"),
            ("samples (images, frames, slices)", str(report["samples"])),
            ("medical bit depths", _counts(m["bit_depths"]) or "-"),
            ("photometric", _counts(m["photometric"]) or "-"),
            ("modalities", _counts(m["modalities"]) or "-"),
            ("transfer syntaxes", _counts(m["transfer_syntaxes"]) or "-"),
            ("compressed, not decoded", str(len(m["undecodable"]))),
            ("DICOM without image", str(len(m["not_images"])))]  # fmt: skip


def _advice(report: dict[str, Any]) -> list[str]:
    """Lines after the table: grey images, compressed DICOM that need a decoder."""
    lines = []
    if report.get("grey") and report["channels"] > 1:
        lines.append(
            f"the images are grey: their {report['channels']} channels would be equal. Train "
            "on one channel with --channels 1 (the override backbone.in_chans=1); "
            "--normalize auto reuses this report's grey mean/std."
        )
    m = report.get("medical") or {}
    for syntax in sorted({u["transfer_syntax"] for u in m.get("undecodable", [])}):
        files = [u for u in m["undecodable"] if u["transfer_syntax"] == syntax]
        missing = all(u.get("decoder_missing", True) for u in files)
        why = "no decoder for it is installed" if missing else "decoding failed (corrupt?)"
        n = f"{len(files)} DICOM file{'s' if len(files) > 1 else ''}"
        lines.append(f"{n} compressed as {syntax}: {why}. "
                     f"Install a decoder: {files[0]['fix']}")  # fmt: skip
    for item in m.get("not_images", [])[:5]:
        lines.append(f"left out (no image): {item['file']}: {item['what']}")
    return lines


def run_data(a: argparse.Namespace) -> int:
    from selfsup.config import ConfigError
    from selfsup.data.check import check_folder, save_report

    if a.data_command == "shard":
        return run_shard(a)
    if a.data_command != "check":
        raise ConfigError("choose an action: selfsup data check PATH, selfsup data shard DIR")
    from selfsup.data.shards import is_shard_spec

    if is_shard_spec(a.path):
        return run_shard_check(a)
    from selfsup.data.check_dense import dense_layout

    if dense_layout(a.path) is not None:
        return run_dense_check(a)
    from selfsup.data.video import has_video_files

    if has_video_files(a.path):
        return run_video_check(a)
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
    for line in _advice(report):
        print(line)
    print(f"report: {written[0]}")
    return 0


def run_video_check(a: argparse.Namespace) -> int:
    """``data check`` of a folder of videos; 1 when some cannot be read."""
    from pathlib import Path

    from selfsup.data.video import check_videos

    r = check_videos(a.path)
    Path(a.out).write_text(json.dumps(r, indent=2))
    if a.json:
        print(json.dumps(r))
        return 1 if r["unreadable"] else 0

    def spread(d: dict[str, float], fmt: str) -> str:
        return " / ".join(format(d[k], fmt) for k in ("min", "median", "max")) if d else "-"

    rows = [("layout", "videos (files or frame folders)"),
            ("videos", f"{r['videos']} ({r['readable']} readable)"),
            ("classes", _counts(r["classes"]) if r["classes"] else "none"),
            ("frames (min / median / max)", spread(r["frames"], ".0f")),
            ("duration s (min / median / max)", spread(r["duration_s"], ".2f")),
            ("frame rate (min / median / max)", spread(r["fps"], ".2f")),
            ("sizes", _counts(r["sizes"])), ("formats", ", ".join(r["formats"]))]  # fmt: skip
    print_table(f"data check: {r['path']}", rows)
    for bad in r["unreadable"][:10]:
        print(f"unreadable: {bad['file']}: {bad['error']}")
    print(f"report: {a.out}")
    return 1 if r["unreadable"] else 0


def _share(x: float) -> str:
    return f"{100 * x:.2f}%"


def _counts_share(shares: dict[str, float]) -> str:
    return ", ".join(f"{k} {_share(v)}" for k, v in shares.items())


def _dense_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows of one dense split report (segmentation or COCO)."""
    if r["layout"] == "coco":
        if "images" not in r:
            return [("annotations", "unreadable")]
        cats = _counts(r["categories"])
        return [("layout", "COCO"), ("images", str(r["images"])),
                ("missing images", str(r["missing_images"]["count"])),
                ("instances", str(r["instances"])), ("per category", cats),
                ("with / without masks", f"{r['with_masks']} / {r['without_masks']}"),
                ("crowd", str(r["crowd"])),
                ("images without annotations", str(r["images_without_annotations"])),
                ("boxes outside the image", str(r["boxes_outside"]["count"])),
                ("empty boxes (w or h <= 0)", str(r["degenerate_boxes"])),
                ("size mismatches", str(len(r["size_mismatches"])))]  # fmt: skip
    rows = [("layout", "segmentation (images/ + masks/)"), ("images", str(r["images"])),
            ("pairs", str(r["pairs"])), ("missing masks", str(r["missing_masks"]["count"])),
            ("masks without image", str(r["masks_without_image"]["count"])),
            ("size mismatches", str(len(r["size_mismatches"]))),
            ("unreadable", str(len(r["unreadable"]))),
            ("fov", "yes" if r["fov"] else "no")]  # fmt: skip
    for name, sub in r.get("observers", {}).items():
        shares = sub.get("histogram", {}).get("share", {})
        rows.append((name, f"{sub['pairs']} pairs; " + _counts_share(shares)))
    if "histogram" in r:
        h = r["histogram"]
        kind = "binary 0/255" if r["binary"] else "class indices"
        rows += [("masks", f"{kind}, {r['num_classes']} classes, ignore {r['ignore_index']}"),
                 ("classes file", str(r["classes_file"] or "none")),
                 ("histogram over", f"{h['masks_read']} masks")]  # fmt: skip
        rows += [(f"  {c}", _share(x)) for c, x in h["share"].items()]
        rows.append(("  ignored" + (" (incl. outside fov)" if r["fov"] else ""),
                     _share(h["ignore_share"])))  # fmt: skip
    return rows


def run_dense_check(a: argparse.Namespace) -> int:
    """``data check`` of a segmentation or COCO folder; 1 when problems are found."""
    from selfsup.data.check_dense import check_dense

    report = check_dense(a.path, limit=a.limit)
    if a.out:
        from pathlib import Path

        Path(a.out).write_text(json.dumps(report, indent=2))
    if a.json:
        print(json.dumps(report))
        return 1 if report["problems"] else 0
    splits = report.get("splits", {"": report})
    for name, r in splits.items():
        print_table(f"data check: {r['path']}" if name else f"data check: {report['path']}",
                    _dense_rows(r))  # fmt: skip
    for line in report["problems"][:20]:
        print(f"problem: {line}")
    if len(report["problems"]) > 20:
        print(f"... and {len(report['problems']) - 20} more (see the report)")
    for line in report.get("warnings", [])[:20]:
        print(f"warning: {line}")
    if not report["problems"]:
        print("no problems found")
    if a.out:
        print(f"report: {a.out}")
    return 1 if report["problems"] else 0


def run_shard(a: argparse.Namespace) -> int:
    """``data shard``: a folder into WebDataset shards."""
    from selfsup.data.shards import parse_size, write_shards

    if a.min_shards < 1:
        raise SystemExit(f"--min-shards {a.min_shards}: give 1 or more.")
    index = write_shards(a.path, a.out, parse_size(a.shard_size), min_shards=a.min_shards,
                         shuffle_seed=None if a.no_shuffle else a.seed)  # fmt: skip
    shards = index["shards"]
    size = sum(s["bytes"] for s in shards)
    print(f"{index['samples']} images in {len(shards)} shards ({size / 1e6:.1f} MB) in {a.out}"
          + (f", {len(index['classes'])} classes" if index["labelled"] else ", unlabelled"))  # fmt: skip
    last = shards[-1]["name"].removesuffix(".tar").removeprefix("shard-")
    print(f"train with: --data '{a.out.rstrip('/')}/shard-{{000000..{last}}}.tar'")
    return 0


def run_shard_check(a: argparse.Namespace) -> int:
    """``data check`` of shards: counts from the index (the shards are not read)."""
    from selfsup.data.shards import open_shards

    src = open_shards(a.path)
    counts = src.counts
    report = {"path": a.path, "shards": len(counts), "samples": sum(counts),
              "classes": src.classes, "min_per_shard": min(counts),
              "max_per_shard": max(counts)}  # fmt: skip
    if a.json:
        print(json.dumps(report))
        return 0
    print_table(f"data check: {a.path}", [
        ("layout", "WebDataset shards"), ("shards", str(len(counts))),
        ("samples", str(sum(counts))),
        ("samples per shard (min / max)", f"{min(counts)} / {max(counts)}"),
        ("classes", str(len(src.classes)) if src.classes else "none"),
    ])  # fmt: skip
    return 0
