"""COCO-format detection and instance segmentation folders.

A split folder holds ``annotations.json`` in COCO format: ``images`` (``file_name``
relative to the split folder, ``width``, ``height``), ``annotations`` (``bbox`` as
``[x, y, w, h]`` in pixels, ``category_id``, ``iscrowd``, and a mask as ``segmentation``
polygons or RLE, or as ``instance_value``: the value of this instance in
``masks/<image stem>.png``, where 0 is background and 1..N one instance each, as in
Penn-Fudan) and ``categories``.

Labels are contiguous, ``1..K`` in the order of the category ids (0 is the background
class of torchvision's detection models): label ``j + 1`` is ``classes[j]`` and COCO
category ``category_ids[j]``, the id to report when evaluating against ``coco``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data.segmentation import read_mask_array, sample_indices
from selfsup.data.sources import DataError

ANNOTATIONS = "annotations.json"
BOX_SLACK = 1.0  # pixels a box may stick out of its image (rounding in annotation tools)


def read_annotations(path: str | Path) -> dict[str, Any]:
    """The parsed COCO file, with ``images``, ``annotations`` and ``categories``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"{p} does not exist. A detection split holds annotations.json in COCO format "
            "(images, annotations with bbox [x, y, w, h] and category_id, categories) beside "
            "its images."
        )
    try:
        data: dict[str, Any] = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{p} is not readable JSON ({type(err).__name__}: {err}).") from None
    keys = ("images", "annotations", "categories")
    missing = [k for k in keys if k not in data] if isinstance(data, dict) else list(keys)
    if missing:
        raise DataError(
            f"{p} lacks the COCO keys {missing}; see https://cocodataset.org/#format-data"
        )
    return data


def quiet_coco(data: dict[str, Any]) -> Any:
    """A ``pycocotools.coco.COCO`` over ``data`` (without its progress prints)."""
    try:
        from pycocotools.coco import COCO
    except ImportError:  # pragma: no cover - a dependency
        raise DataError("COCO folders need pycocotools: pip install pycocotools") from None
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def has_mask(ann: dict[str, Any]) -> bool:
    """Whether an annotation carries an instance mask (segmentation or instance_value)."""
    return bool(ann.get("segmentation")) or "instance_value" in ann


def _listing(items: list[str]) -> str:
    return "; ".join(items[:5]) + (f" (and {len(items) - 5} more)" if len(items) > 5 else "")


def box_problems(data: dict[str, Any]) -> list[str]:
    """One line per box outside its image (by the width/height the file records)."""
    images = {im["id"]: im for im in data["images"]}
    out = []
    for ann in data["annotations"]:
        im = images.get(ann.get("image_id"))
        if im is None:
            out.append(f"annotation {ann.get('id')} points to image_id {ann.get('image_id')}, "
                       "which is not in images")  # fmt: skip
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        W, H = im.get("width"), im.get("height")
        if W is None or H is None:
            continue
        s = BOX_SLACK
        if x < -s or y < -s or x + w > W + s or y + h > H + s:
            out.append(f"annotation {ann.get('id')} bbox {ann['bbox']} is outside "
                       f"{im['file_name']} ({W}x{H})")  # fmt: skip
    return out


def _validate(root: Path, ann_file: Path, data: dict[str, Any]) -> None:
    missing = [im["file_name"] for im in data["images"] if not (root / im["file_name"]).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {ann_file} are missing under {root}: "
            f"{_listing(missing)}. file_name is relative to the folder of annotations.json."
        )
    boxes = box_problems(data)
    if boxes:
        raise DataError(
            f"{ann_file}: {len(boxes)} box(es) do not fit their image: {_listing(boxes)}. "
            "bbox is [x, y, width, height] in pixels of the listed image; fix the boxes or the "
            "image sizes."
        )


class CocoDetection:
    """A COCO split folder. ``load(i) -> (image, target)`` with image uint8 (3, H, W) and
    target ``boxes`` float32 (N, 4) xyxy, ``labels`` int64 (N,) in 1..K, ``iscrowd`` int64
    (N,), ``masks`` uint8 (N, H, W) when ``has_masks``, and ``image_id`` (the COCO id)."""

    def __init__(self, root: str | Path, annotations: str = ANNOTATIONS) -> None:
        self.root = Path(root).expanduser()
        self.ann_file = self.root / annotations
        data = read_annotations(self.ann_file)
        _validate(self.root, self.ann_file, data)
        self.coco = quiet_coco(data)
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.classes: list[str] = [str(c["name"]) for c in cats]
        # classes[j] is label j + 1 and COCO category category_ids[j].
        self.category_ids: list[int] = [int(c["id"]) for c in cats]
        self.label_of: dict[int, int] = {c: j + 1 for j, c in enumerate(self.category_ids)}
        anns = data["annotations"]
        self.has_masks = bool(anns) and all(has_mask(a) for a in anns)
        self.image_ids: list[int] = sorted(int(im["id"]) for im in data["images"])
        self.name = str(self.root)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.load(i)

    def image_path(self, i: int) -> Path:
        return self.root / str(self.coco.imgs[self.image_ids[i]]["file_name"])

    def load(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Image (3, H, W) and its target (see the class docstring)."""
        from selfsup.data.decode import open_file, to_tensor

        image_id = self.image_ids[i]
        info = self.coco.imgs[image_id]
        path = self.root / info["file_name"]
        image = to_tensor(open_file(path), 3, str(path))
        h, w = int(image.shape[1]), int(image.shape[2])
        if (info.get("width", w), info.get("height", h)) != (w, h):
            raise DataError(
                f"{path} is {w}x{h} but {self.ann_file} records {info.get('width')}x"
                f"{info.get('height')} for it; fix width/height in the annotations."
            )
        anns = sorted(self.coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        labels = [self.label_of[a["category_id"]] for a in anns]
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "image_id": int(image_id),
        }
        if self.has_masks:
            target["masks"] = self._masks(anns, path, h, w)
        return image, target

    def _masks(self, anns: list[dict[str, Any]], image: Path, h: int, w: int) -> torch.Tensor:
        """(N, H, W) uint8 instance masks from polygons, RLE or ``masks/<stem>.png``."""
        from pycocotools import mask as mask_utils

        out = np.zeros((len(anns), h, w), dtype=np.uint8)
        values: np.ndarray | None = None
        for k, a in enumerate(anns):
            if "instance_value" in a:
                if values is None:
                    values = self._instance_png(image, h, w)
                out[k] = values == int(a["instance_value"])
                continue
            seg = a["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, h, w)  # uncompressed RLE
            else:
                rle = seg
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy= notice
                warnings.simplefilter("ignore", DeprecationWarning)
                out[k] = mask_utils.decode(rle)
        return torch.from_numpy(out)

    def _instance_png(self, image: Path, h: int, w: int) -> np.ndarray:
        mpath = self.root / "masks" / f"{image.stem}.png"
        if not mpath.is_file():
            raise DataError(
                f"{self.ann_file} gives instance_value for {image.name} but {mpath} does not "
                "exist; instance masks live in masks/<image stem>.png (0 background, 1..N)."
            )
        arr = read_mask_array(mpath)
        if arr.shape != (h, w):
            raise DataError(
                f"{mpath} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image {image} is "
                f"{w}x{h}; re-export the instance mask at the image's size."
            )
        return arr

    def ground_truth(self) -> Any:
        """The ``COCO`` object to score against: every annotation has a ``segmentation``
        (an RLE made from ``masks/<stem>.png`` where the JSON gives ``instance_value``), as
        pycocotools' mask AP needs. Built once."""
        cached = getattr(self, "_ground_truth", None)
        if cached is not None:
            return cached
        from pycocotools import mask as mask_utils

        data = copy.deepcopy(self.coco.dataset)
        by_image: dict[int, list[dict[str, Any]]] = {}
        for a in data["annotations"]:
            if not a.get("segmentation") and "instance_value" in a:
                by_image.setdefault(int(a["image_id"]), []).append(a)
        for image_id, anns in by_image.items():
            info = self.coco.imgs[image_id]
            h, w = int(info["height"]), int(info["width"])
            values = self._instance_png(self.root / info["file_name"], h, w)
            for a in anns:
                binary = np.asfortranarray((values == int(a["instance_value"])).astype(np.uint8))
                rle = mask_utils.encode(binary)
                rle["counts"] = rle["counts"].decode("ascii")
                a["segmentation"] = rle
        self._ground_truth: Any = quiet_coco(data)
        return self._ground_truth

    def subset(self, indices: list[int] | torch.Tensor) -> CocoDetection:
        """The same folder restricted to ``indices``; ``coco`` then holds only those images,
        so evaluation on the subset scores only them."""
        out = copy.copy(self)
        out._ground_truth = None
        out.image_ids = [self.image_ids[int(i)] for i in indices]
        keep = set(out.image_ids)
        data = self.coco.dataset
        out.coco = quiet_coco({
            **data,
            "images": [im for im in data["images"] if im["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        })  # fmt: skip
        return out

    def sample(
        self, fraction: float | None = None, shots: int | None = None, seed: int = 0
    ) -> CocoDetection:
        """A labelled subset: ``fraction`` of the images or ``shots`` images (at least 1),
        drawn with a generator seeded by ``seed``."""
        return self.subset(sample_indices(len(self), fraction, shots, seed))


def open_coco(path: str | Path, annotations: str = ANNOTATIONS) -> CocoDetection:
    """Open a COCO split folder (``annotations.json`` beside the images)."""
    return CocoDetection(path, annotations)
