"""Pictures of dense predictions: image, truth and prediction side by side for segmentation;
true boxes (green) and predicted boxes and masks (red) for detection."""

from __future__ import annotations

from pathlib import Path

import torch

# A fixed palette (class index -> RGB); the ignore index is drawn black.
_PALETTE = torch.tensor([
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
    [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0],
    [0, 128, 192], [255, 255, 255], [0, 200, 0], [200, 0, 200], [0, 200, 200], [250, 170, 30],
], dtype=torch.uint8)  # fmt: skip


def colourise(mask: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Class indices ``(H, W)`` -> uint8 colours ``(3, H, W)``; two classes: black / white."""
    palette = (
        torch.tensor([[0, 0, 0], [255, 255, 255]], dtype=torch.uint8)
        if num_classes == 2
        else _PALETTE[torch.arange(num_classes) % len(_PALETTE)]
    )
    ok = (mask >= 0) & (mask < num_classes) & (mask != ignore_index)
    out = palette[mask.clamp(0, num_classes - 1)]
    out[~ok] = torch.tensor([0, 0, 0], dtype=torch.uint8)
    return out.permute(2, 0, 1)


def segmentation_figure(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                        num_classes: int, ignore_index: int, path: Path) -> Path:  # fmt: skip
    """One row per example: image uint8 ``(3, H, W)``, truth and prediction ``(H, W)``."""
    from torchvision.utils import save_image

    tiles = []
    for image, truth, pred in rows:
        tiles += [image, colourise(truth, num_classes, ignore_index),
                  colourise(pred, num_classes, ignore_index)]  # fmt: skip
    h = max(t.shape[1] for t in tiles)
    w = max(t.shape[2] for t in tiles)
    padded = [torch.nn.functional.pad(t, (0, w - t.shape[2], 0, h - t.shape[1])) for t in tiles]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.stack(padded).float() / 255, path, nrow=3, padding=4, pad_value=1.0)
    return path


def detection_figure(rows: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]],
                     path: Path, threshold: float = 0.5) -> Path:  # fmt: skip
    """One tile per example: image uint8 ``(3, H, W)``, true boxes ``(N, 4)`` in green, the
    predictions scoring at least ``threshold`` in red (boxes, and masks when present)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, save_image

    tiles = []
    for image, truth, out in rows:
        keep = out["scores"] >= threshold
        img = image
        if "masks" in out and bool(keep.any()):
            masks = out["masks"][keep][:, 0] > 0.5
            img = draw_segmentation_masks(img, masks, alpha=0.4, colors="red")
        if len(truth):
            img = draw_bounding_boxes(img, truth, colors="lime", width=2)
        if bool(keep.any()):
            img = draw_bounding_boxes(img, out["boxes"][keep], colors="red", width=2)
        tiles.append(img)
    h = max(t.shape[1] for t in tiles)
    w = max(t.shape[2] for t in tiles)
    padded = [torch.nn.functional.pad(t, (0, w - t.shape[2], 0, h - t.shape[1])) for t in tiles]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.stack(padded).float() / 255, path, nrow=2, padding=4, pad_value=1.0)
    return path
