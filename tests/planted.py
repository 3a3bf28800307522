"""A CIFAR-10 folder with planted duplicates and out-of-domain images, and its ground truth.

Shared by ``tests/test_curate.py`` and ``benchmarks/curation.py`` so the acceptance test and
the documented figure measure the same kind of data. Everything is written under ``out``;
the shared data sets are only read.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

NEAR_KINDS = ("upscaled", "downscaled", "jpeg", "cropped")
OOD_KINDS = ("xray", "noise", "flat")


@dataclass
class Planted:
    """Ground truth, paths relative to the planted folder."""

    root: Path
    originals: list[str] = field(default_factory=list)
    exact: list[tuple[str, str]] = field(default_factory=list)  # (original, copy)
    near: list[tuple[str, str, str]] = field(default_factory=list)  # (original, copy, kind)
    ood: list[tuple[str, str]] = field(default_factory=list)  # (file, kind)

    def save(self, path: Path) -> None:
        d = asdict(self)
        d["root"] = str(self.root)
        path.write_text(json.dumps(d, indent=1))


def _near_copy(img: Image.Image, kind: str, rng: random.Random) -> tuple[Image.Image, int]:
    """A near-duplicate of ``img`` and the JPEG quality to save it with (0: PNG)."""
    w, h = img.size
    if kind == "upscaled":
        return img.resize((w * 2, h * 2), Image.Resampling.BICUBIC), 92
    if kind == "downscaled":
        return img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS), 0
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=30)  # saved again below: re-encoded twice, lossy
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), 40
    # ~10% of the side cut away (at a random corner offset), resized back.
    cw, ch = round(w * 0.9), round(h * 0.9)
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = img.crop((x0, y0, x0 + cw, y0 + ch))
    return crop.resize((w, h), Image.Resampling.BICUBIC), 90


def _ood_image(kind: str, xrays: list[Path], rng: random.Random) -> Image.Image:
    if kind == "xray":
        return Image.open(xrays.pop()).convert("L")
    if kind == "noise":
        arr = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (32, 32, 3))
        return Image.fromarray(arr.astype(np.uint8))
    colour = tuple(rng.randrange(256) for _ in range(3))
    return Image.new("RGB", (32, 32), colour)  # type: ignore[arg-type]


def plant_curation_set(
    cifar_train: Path,
    xray_train: Path,
    out: Path,
    per_class: int = 20,
    exact: int = 10,
    near: int = 20,
    ood: int = 15,
    seed: int = 0,
) -> Planted:
    """Copy ``per_class`` CIFAR-10 training images of each class into ``out/<class>/``, then
    plant ``exact`` byte-identical copies, ``near`` near-duplicates (cycling through
    upscaled 2x, downscaled to 3/4, re-encoded at JPEG quality 30 then 40, and cropped by 10%
    then resized back) of distinct originals, and ``ood`` out-of-domain images (chest X-rays,
    uniform noise, flat colour) scattered into the class folders."""
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out)
    truth = Planted(root=out)
    classes = sorted(p.name for p in cifar_train.iterdir() if p.is_dir())
    for c in classes:
        files = sorted((cifar_train / c).iterdir())
        (out / c).mkdir(parents=True)
        for f in rng.sample(files, per_class):
            shutil.copyfile(f, out / c / f.name)
            truth.originals.append(f"{c}/{f.name}")
    bases = rng.sample(truth.originals, exact + near)
    for i, rel in enumerate(bases[:exact]):
        copy = f"{rel.rsplit('.', 1)[0]}_x{i}.jpg"
        shutil.copyfile(out / rel, out / copy)
        truth.exact.append((rel, copy))
    for i, rel in enumerate(bases[exact:]):
        kind = NEAR_KINDS[i % len(NEAR_KINDS)]
        img, quality = _near_copy(Image.open(out / rel).convert("RGB"), kind, rng)
        copy = f"{rel.rsplit('.', 1)[0]}_n{i}.{'jpg' if quality else 'png'}"
        img.save(out / copy, **({"quality": quality} if quality else {}))
        truth.near.append((rel, copy, kind))
    xrays = sorted(xray_train.rglob("*.png"))
    rng.shuffle(xrays)
    for i in range(ood):
        kind = OOD_KINDS[i % len(OOD_KINDS)]
        rel = f"{rng.choice(classes)}/ood_{i:03d}.png"
        _ood_image(kind, xrays, rng).save(out / rel)
        truth.ood.append((rel, kind))
    return truth


def _ratio(hits: int, total: int) -> float:
    return hits / total if total else float("nan")


def score_curation(report: dict[str, Any], truth: Planted) -> dict[str, float]:
    """Precision and recall of a ``curation.json`` against the planted truth.

    A planted copy is recalled when it lands in the same group as its original. Precision
    is per flagged file: the pair (flagged file, kept image) must be a planted pair of that
    kind, so a genuine near-duplicate already in CIFAR-10 counts against it. Outliers are
    scored at the threshold (the flagged list) and among the top K of the ranking, K the
    number planted (``recall_at_k``).
    """
    group_of: dict[str, int] = {}
    flagged: dict[str, tuple[str, str]] = {}
    for g in report["duplicate_groups"]:
        group_of[g["keep"]] = g["id"]
        for m in g["members"]:
            group_of[m["path"]] = g["id"]
            flagged[m["path"]] = (m["kind"], g["keep"])

    def together(a: str, b: str) -> bool:
        return a in group_of and group_of[a] == group_of.get(b)

    out: dict[str, float] = {}
    for kind, pairs in (("exact", truth.exact), ("near", [(o, c) for o, c, _ in truth.near])):
        planted = {frozenset(p) for p in pairs}
        mine = [(p, k) for p, (kd, k) in flagged.items() if kd == kind]
        out[f"{kind}_recall"] = _ratio(sum(together(o, c) for o, c in pairs), len(pairs))
        out[f"{kind}_precision"] = _ratio(
            sum(frozenset((p, k)) in planted for p, k in mine), len(mine)
        )
        out[f"{kind}_flagged"] = len(mine)
    for kind in NEAR_KINDS:
        pairs = [(o, c) for o, c, k in truth.near if k == kind]
        out[f"near_recall_{kind}"] = _ratio(sum(together(o, c) for o, c in pairs), len(pairs))
    ood = {p for p, _ in truth.ood}
    flagged_out = set(report["outliers"]["flagged"])
    ranking = [r["path"] for r in report["outliers"]["ranking"]]
    top = set(ranking[: len(ood)])
    out["outlier_precision"] = _ratio(len(flagged_out & ood), len(flagged_out))
    out["outlier_recall"] = _ratio(len(flagged_out & ood), len(ood))
    out["outlier_recall_at_k"] = _ratio(len(top & ood), len(ood))
    out["outlier_flagged"] = len(flagged_out)
    for kind in OOD_KINDS:
        mine = {p for p, k in truth.ood if k == kind}
        out[f"outlier_recall_{kind}"] = _ratio(len(flagged_out & mine), len(mine))
        out[f"outlier_recall_at_k_{kind}"] = _ratio(len(top & mine), len(mine))
    return out
