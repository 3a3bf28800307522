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


def colourise_depth(depth: torch.Tensor, lo: float, hi: float,
                    valid: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Depth ``(H, W)`` in metres -> uint8 ``(3, H, W)`` through matplotlib's ``magma``
    (near bright, far dark, as depth papers draw it) over ``[lo, hi]``; invalid pixels
    black."""
    from matplotlib import colormaps

    t = ((hi - depth.float()) / max(hi - lo, 1e-6)).clamp(0, 1)
    rgb = torch.from_numpy(colormaps["magma"](t.numpy())[..., :3]).permute(2, 0, 1)
    out = (rgb * 255).round().to(torch.uint8)
    if valid is not None:
        out[:, ~valid] = 0
    return out


def depth_figure(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], path: Path,
                 max_depth: float = 10.0) -> Path:  # fmt: skip
    """One row per frame: the image uint8 ``(3, H, W)``, the predicted depth, the true depth
    and the absolute relative error (black 0, white >= 50%), all ``(H, W)`` in metres; the
    colour range is the true depth's 2-98th percentile of each frame."""
    from torchvision.utils import save_image

    tiles = []
    for image, pred, truth in rows:
        valid = (truth > 0) & (truth < max_depth)
        vals = truth[valid] if bool(valid.any()) else pred.flatten()
        lo, hi = float(vals.quantile(0.02)), float(vals.quantile(0.98))
        err = ((pred - truth).abs() / truth.clamp_min(1e-6) / 0.5).clamp(0, 1)
        err_img = (err * 255).round().to(torch.uint8).expand(3, -1, -1).clone()
        err_img[:, ~valid] = 0
        tiles += [image, colourise_depth(pred, lo, hi), colourise_depth(truth, lo, hi, valid),
                  err_img]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.stack(tiles).float() / 255, path, nrow=4, padding=4, pad_value=1.0)
    return path
