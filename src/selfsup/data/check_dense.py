"""``selfsup data check`` for dense-task folders: segmentation splits and COCO splits.

Recognised layouts (see :func:`dense_layout`): a segmentation split (``images/`` +
``masks/``), a COCO split (``annotations.json``), or a folder of such splits
(``camvid/{train,val,test}``). The report lists what would stop the readers
(:mod:`selfsup.data.segmentation`, :mod:`selfsup.data.coco`) before training does: unpaired
files, size mismatches (from file headers, without decoding), unreadable files, mask values
outside the classes; plus the class balance over up to ``limit`` masks.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from selfsup.data.coco import ANNOTATIONS, box_problems, has_mask, read_annotations
from selfsup.data.segmentation import (
    ClassSpec,
    Pairing,
    pair_files,
    read_mask_array,
    resolve_classes,
)
from selfsup.data.sources import DataError

LISTED = 20  # file names listed per kind of problem (the counts are always complete)
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF rotations by 90 degrees


def dense_layout(path: str | Path) -> str | None:
    """``"coco"``, ``"segmentation"``, ``"coco-splits"``, ``"segmentation-splits"`` or None.

    A COCO split wins over a segmentation split (Penn-Fudan has both ``annotations.json`` and
    ``masks/``, whose instance masks are not class masks)."""
    p = Path(path)
    if (p / ANNOTATIONS).is_file():
        return "coco"
    if (p / "images").is_dir() and (p / "masks").is_dir():
        return "segmentation"
    kids = [dense_layout(k) for k in _subdirs(p)]
    if "coco" in kids:
        return "coco-splits"
    if "segmentation" in kids:
        return "segmentation-splits"
    return None


def _subdirs(p: Path) -> list[Path]:
    if not p.is_dir():
        return []
    return sorted(k for k in p.iterdir() if k.is_dir() and not k.name.startswith("."))


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) as decoded (after EXIF rotation), from the file header only."""
    with Image.open(path) as img:
        w, h = img.size
        try:
            rotated = img.getexif().get(0x0112) in SWAPPING_ORIENTATIONS
        except Exception:  # a broken EXIF block is not the size's problem
            rotated = False
    return (h, w) if rotated else (w, h)


def _listed(items: list[Any]) -> dict[str, Any]:
    return {"count": len(items), "files": items[:LISTED]}


def _dist(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max())}


def _sizes(p: Pairing) -> dict[str, Any]:
    """Header sizes of every pair: mismatches, unreadable files, image size spread."""
    mismatches, unreadable, widths, heights = [], [], [], []
    for stem in p.paired:
        files = {"image": p.images[stem], "mask": p.masks[stem]}
        if stem in p.fov:
            files["fov"] = p.fov[stem]
        sizes: dict[str, tuple[int, int]] = {}
        for kind, f in files.items():
            try:
                sizes[kind] = header_size(f)
            except Exception as err:
                unreadable.append({"file": str(f), "error": f"{type(err).__name__}: {err}"})
        if "image" in sizes:
            widths.append(sizes["image"][0])
            heights.append(sizes["image"][1])
            for kind in ("mask", "fov"):
                if kind in sizes and sizes[kind] != sizes["image"]:
                    mismatches.append({"image": str(files["image"]), "image_size": sizes["image"],
                                       kind: str(files[kind]), f"{kind}_size": sizes[kind]})  # fmt: skip
    return {"size_mismatches": mismatches, "unreadable": unreadable,
            "width": _dist(widths), "height": _dist(heights)}  # fmt: skip


def _spread(n: int, limit: int) -> list[int]:
    """Up to ``limit`` indices spread evenly over ``range(n)``."""
    if n <= limit:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})


def class_histogram(p: Pairing, spec: ClassSpec, limit: int) -> dict[str, Any]:
    """Pixel share per class and ignored, over up to ``limit`` masks spread over the split."""
    counts = np.zeros(len(spec.classes), dtype=np.int64)
    ignored = outside = total = 0
    bad: list[dict[str, Any]] = []
    uniform: list[str] = []
    stems = [p.paired[i] for i in _spread(len(p.paired), limit)]
    read = 0
    for stem in stems:
        try:
            raw = read_mask_array(p.masks[stem])
            if stem in p.fov:
                inside = read_mask_array(p.fov[stem], grey=True) != 0
                if inside.shape == raw.shape:
                    outside += int((~inside).sum())
                    raw = raw[inside]
        except DataError:
            continue  # listed among unreadable files by the header pass or the reader
        read += 1
        if spec.binary:
            raw = np.where(raw == 255, 1, raw)
        vals, n = np.unique(raw, return_counts=True)
        if len(vals) == 1 and vals[0] not in (0, spec.ignore_index):
            uniform.append(str(p.masks[stem]))  # one object class everywhere: a broken export?
        total += int(raw.size)
        for v, k in zip(vals.tolist(), n.tolist(), strict=True):
            if v == spec.ignore_index and not spec.binary:
                ignored += k
            elif 0 <= v < len(spec.classes):
                counts[v] += k
            else:
                bad.append({"file": str(p.masks[stem]), "values": [v]})
    merged: dict[str, list[int]] = {}
    for b in bad:
        merged.setdefault(b["file"], []).extend(b["values"])
    all_px = max(total + outside, 1)
    return {
        "masks_read": read,
        "share": {c: float(counts[i]) / all_px for i, c in enumerate(spec.classes)},
        "ignore_share": (ignored + outside) / all_px,
        "outside_fov_share": outside / all_px,
        "bad_values": [{"file": f, "values": sorted(set(v))} for f, v in merged.items()],
        "uniform_masks": _listed(uniform),
    }


def check_segmentation_split(
    path: str | Path, limit: int = 200, masks: str = "masks"
) -> dict[str, Any]:
    """The report of one ``images/`` + ``masks/`` split (a JSON-ready dict). Other
    observers' masks (``masks_2nd/``) are checked too, under ``observers``."""
    rep = _split_report(path, limit, masks)
    rep["observers"] = {}
    for name in rep["other_masks"]:
        sub = _split_report(path, limit, name)
        rep["observers"][name] = sub
        rep["problems"] += [f"{name}: {line}" for line in sub["problems"]]
        rep["warnings"] += [f"{name}: {line}" for line in sub["warnings"]]
    return rep


def _split_report(path: str | Path, limit: int, masks: str) -> dict[str, Any]:
    p = pair_files(path, masks)
    problems: list[str] = []
    missing = p.missing_masks
    orphans = sorted(s for s in p.masks if s not in p.images)
    rep: dict[str, Any] = {
        "layout": "segmentation", "path": str(p.root.resolve()),
        "images": len(p.images), "masks": len(p.masks), "pairs": len(p.paired),
        "missing_masks": _listed([str(p.images[s]) for s in missing]),
        "masks_without_image": _listed([str(p.masks[s]) for s in orphans]),
        "fov": p.has_fov, "missing_fov": _listed([str(p.images[s]) for s in p.missing_fov]),
        "other_masks": [d.name for d in _subdirs(p.root)
                        if masks == "masks" and d.name.startswith("masks_")],
    }  # fmt: skip
    rep.update(_sizes(p))
    if missing:
        problems.append(f"{len(missing)} image(s) without a mask in {p.root / masks}, e.g. "
                        f"{p.images[missing[0]]}")  # fmt: skip
    if rep["missing_fov"]["count"]:
        problems.append(f"{rep['missing_fov']['count']} image(s) without a fov mask in "
                        f"{p.root / 'fov'}")  # fmt: skip
    for m in rep["size_mismatches"][:LISTED]:
        kind = "mask" if "mask" in m else "fov"
        problems.append(f"{m[kind]} is {m[kind + '_size']} but {m['image']} is {m['image_size']}")
    problems += [f"{u['file']} is unreadable: {u['error']}" for u in rep["unreadable"][:LISTED]]
    try:
        spec = resolve_classes(p)
    except DataError as err:
        problems.append(str(err))
        rep.update(problems=problems, warnings=[])
        return rep
    rep.update(classes=spec.classes, num_classes=len(spec.classes),
               ignore_index=spec.ignore_index, binary=spec.binary,
               classes_file=str(spec.file) if spec.file else None)  # fmt: skip
    rep["histogram"] = class_histogram(p, spec, limit)
    for b in rep["histogram"]["bad_values"][:LISTED]:
        problems.append(f"{b['file']} has values {b['values'][:10]} outside the "
                        f"{len(spec.classes)} classes and ignore_index {spec.ignore_index}")  # fmt: skip
    rep["problems"] = problems
    u = rep["histogram"]["uniform_masks"]
    rep["warnings"] = [f"{u['count']} mask(s) are one non-background class in every (scored) "
                       f"pixel, e.g. {u['files'][0]}: check the export"] if u["count"] else []  # fmt: skip
    return rep


def _coco_images(root: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Listed files: missing ones, and recorded sizes that differ from the file header."""
    missing, mismatches, unreadable = [], [], []
    for im in data["images"]:
        f = root / im["file_name"]
        if not f.is_file():
            missing.append(str(f))
            continue
        try:
            size = header_size(f)
        except Exception as err:
            unreadable.append({"file": str(f), "error": f"{type(err).__name__}: {err}"})
            continue
        recorded = (im.get("width", size[0]), im.get("height", size[1]))
        if size != recorded:
            mismatches.append({"image": str(f), "image_size": size, "recorded_size": recorded})
    return {"missing_images": _listed(missing), "size_mismatches": mismatches,
            "unreadable": unreadable}  # fmt: skip


def _coco_masks(root: Path, data: dict[str, Any]) -> list[str]:
    """Instance PNGs (``masks/<stem>.png``) that ``instance_value`` needs but are missing."""
    images = {im["id"]: im for im in data["images"]}
    need = {images[a["image_id"]]["file_name"] for a in data["annotations"]
            if "instance_value" in a and a.get("image_id") in images}  # fmt: skip
    paths = [root / "masks" / f"{Path(n).stem}.png" for n in sorted(need)]
    return [str(m) for m in paths if not m.is_file()]


def check_coco_split(path: str | Path) -> dict[str, Any]:
    """The report of one COCO split (``annotations.json`` beside the images)."""
    root = Path(path)
    ann_file = root / ANNOTATIONS
    rep: dict[str, Any] = {"layout": "coco", "path": str(root.resolve())}
    try:
        data = read_annotations(ann_file)
    except DataError as err:
        rep["problems"] = [str(err)]
        return rep
    anns = data["annotations"]
    names = {c["id"]: str(c["name"]) for c in data["categories"]}
    per = Counter(names.get(a.get("category_id"), f"unknown id {a.get('category_id')}")
                  for a in anns)  # fmt: skip
    annotated = {a.get("image_id") for a in anns}
    degenerate = [a.get("id") for a in anns if min(float(v) for v in a["bbox"][2:]) <= 0]
    rep.update(images=len(data["images"]), instances=len(anns),
               categories={n: per.get(n, 0) for n in names.values()} | dict(per),
               with_masks=sum(has_mask(a) for a in anns),
               without_masks=sum(not has_mask(a) for a in anns),
               crowd=sum(int(a.get("iscrowd", 0)) for a in anns),
               images_without_annotations=sum(im["id"] not in annotated for im in data["images"]),
               degenerate_boxes=len(degenerate))  # fmt: skip
    rep.update(_coco_images(root, data))
    boxes = box_problems(data)
    rep["boxes_outside"] = _listed(boxes)
    missing_pngs = _coco_masks(root, data)
    rep["missing_instance_masks"] = _listed(missing_pngs)
    problems = [f"{f} is listed in {ann_file} but missing" for f in rep["missing_images"]["files"]]
    problems += [f"{ann_file}: {b}" for b in boxes[:LISTED]]
    problems += [f"{m['image']} is {m['image_size']} but {ann_file} records {m['recorded_size']}"
                 for m in rep["size_mismatches"][:LISTED]]  # fmt: skip
    problems += [f"{u['file']} is unreadable: {u['error']}" for u in rep["unreadable"][:LISTED]]
    problems += [f"{m} is missing (instance_value masks)" for m in missing_pngs[:LISTED]]
    unknown = [n for n in per if n.startswith("unknown id")]
    problems += [f"{ann_file}: annotations with {n} (not in categories)" for n in unknown]
    rep["problems"] = problems
    return rep


def check_dense(path: str | Path, limit: int = 200) -> dict[str, Any]:
    """Report on a dense-task folder: one split, or ``{"splits": {name: report}}`` for a
    folder of splits; ``problems`` lists every issue as a line naming the file."""
    t0 = time.perf_counter()
    p = Path(path).expanduser()
    layout = dense_layout(p)
    if layout is None:
        raise DataError(
            f"{p} is not a dense-task folder: expected images/ + masks/ (segmentation), "
            "annotations.json (COCO), or sub-folders (splits) holding one of them."
        )
    if layout == "coco":
        rep = check_coco_split(p)
    elif layout == "segmentation":
        rep = check_segmentation_split(p, limit)
    else:
        splits: dict[str, Any] = {}
        for k in _subdirs(p):
            kind = dense_layout(k)
            if kind == "coco":
                splits[k.name] = check_coco_split(k)
            elif kind == "segmentation":
                splits[k.name] = check_segmentation_split(k, limit)
        problems = [f"{n}: {line}" for n, r in splits.items() for line in r["problems"]]
        warnings = [f"{n}: {line}" for n, r in splits.items() for line in r.get("warnings", [])]
        rep = {"layout": layout, "path": str(p.resolve()), "splits": splits,
               "problems": problems, "warnings": warnings}  # fmt: skip
    rep["seconds"] = round(time.perf_counter() - t0, 2)
    return rep
