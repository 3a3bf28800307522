"""Augmentations applied to whole batches on the training device.

The per-image presets of :mod:`selfsup.transforms.views` run in data-loader workers, one
image at a time. :class:`BatchedViews` draws the same random parameters from the same
distributions (torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip``,
``ColorJitter`` in random order, ``RandomGrayscale``, ``GaussianBlur``, ``RandomSolarize``)
but draws them for every sample of a batch at once and applies each operation to the whole
batch (or the subset of samples it was drawn for) on the device that trains. Workers then
only decode images and ship uint8 pixels; on a GPU the augmentation costs almost nothing,
and on a CPU it replaces thousands of small per-image calls by a few batched ones.

Inputs are a *canvas*: a ``(B, C, H, W)`` tensor (uint8, or float in [0, 1] for deep
images) holding images of possibly different sizes, each in its top-left corner with its
edge pixels repeated into the padding, plus their ``(B, 2)`` sizes ``(height, width)``.
Crops are cut and resized by two batched matrix products per image whose weights are those
of torchvision's antialiased bilinear resize, so a crop equals ``resized_crop`` of the
per-image pipeline to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class ViewSpec:
    """Everything random about one view, as plain numbers: the single description from
    which both the per-image torchvision pipeline and :class:`BatchedViews` are built."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.5
    jitter_prob: float = 0.0
    # Jitter strengths as torchvision's ColorJitter takes them (0 = that op is off).
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    gray_prob: float = 0.0
    blur_prob: float = 0.0
    blur_kernel: int = 3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channels: int = 3

    def jitter_ops(self) -> list[int]:
        """Which of brightness (0), contrast (1), saturation (2), hue (3) are active."""
        strengths = [self.brightness, self.contrast, self.saturation, self.hue]
        if self.channels == 3:
            allowed = [0, 1, 2, 3]
        elif self.channels == 1:  # saturation and hue do not exist for one channel
            allowed = [0, 1]
        else:  # contrast is defined through an RGB grayscale: brightness only
            allowed = [0]
        return [i for i in allowed if strengths[i] > 0]


def _exact_dtype(device: torch.device) -> torch.dtype:
    """float64 for box arithmetic, where the device has it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _uniform(
    n: int, lo: float, hi: float, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _coin(n: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def crop_params(
    sizes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """Random resized crop boxes ``(N, 4)`` as (top, left, height, width) for images of
    ``sizes`` ``(N, 2)``, drawn as ``RandomResizedCrop.make_params`` draws them: up to 10
    tries of area fraction ~ U(scale) and log aspect ~ U(log ratio) until the box fits,
    else a centre crop clamped to the ratio range."""
    device = sizes.device
    dtype = _exact_dtype(device)
    n = sizes.shape[0]
    height = sizes[:, 0].to(dtype)
    width = sizes[:, 1].to(dtype)
    area = (height * width)[:, None]
    frac = torch.rand(n, attempts, generator=generator, device=device, dtype=dtype)
    target = area * (frac * (scale[1] - scale[0]) + scale[0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    log_r = torch.rand(n, attempts, generator=generator, device=device, dtype=dtype)
    aspect = torch.exp(log_r * (hi - lo) + lo)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    found = ok.any(dim=1)
    first = torch.argmax(ok.to(torch.int8), dim=1)  # first fitting try
    rows = torch.arange(n, device=device)
    h_pick, w_pick = h[rows, first], w[rows, first]
    # Fallback: the whole image, narrowed to the ratio range.
    in_ratio = width / height
    fb_w = torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    fb_h = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    h_pick = torch.where(found, h_pick, fb_h)
    w_pick = torch.where(found, w_pick, fb_w)
    u_top = torch.rand(n, generator=generator, device=device, dtype=dtype)
    u_left = torch.rand(n, generator=generator, device=device, dtype=dtype)
    top = torch.where(
        found,
        torch.floor(u_top * (height - h_pick + 1)).clamp(max=height - h_pick),
        torch.div(height - h_pick, 2, rounding_mode="floor"),
    )
    left = torch.where(
        found,
        torch.floor(u_left * (width - w_pick + 1)).clamp(max=width - w_pick),
        torch.div(width - w_pick, 2, rounding_mode="floor"),
    )
    return torch.stack([top, left, h_pick, w_pick], dim=1).to(torch.long)


def resize_weights(
    start: torch.Tensor, length: torch.Tensor, out: int, extent: int
) -> torch.Tensor:
    """Linear maps (N, out, extent) that resize the span ``[start, start + length)`` of an
    axis of ``extent`` pixels to ``out`` pixels, with the weights of torchvision's
    antialiased bilinear resize: a triangle filter widened by the shrink factor when
    shrinking, plain bilinear (edge pixels repeated) when enlarging. Pixels outside the span
    get no weight, so a crop never sees its surroundings."""
    dtype = _exact_dtype(start.device)
    start = start.to(dtype)[:, None, None]
    length = length.to(dtype)[:, None, None]
    scale = length / out
    width = torch.clamp(scale, min=1.0)  # filter support in input pixels
    centre = start + scale * (
        torch.arange(out, device=start.device, dtype=dtype)[None, :, None] + 0.5
    )
    pos = torch.arange(extent, device=start.device, dtype=dtype)[None, None, :] + 0.5
    w = torch.clamp(1.0 - (pos - centre).abs() / width, min=0.0)
    inside = (pos > start) & (pos < start + length)
    w = w * inside
    return w / w.sum(dim=2, keepdim=True).clamp(min=1e-12)


def resized_crops(
    image: torch.Tensor, boxes: torch.Tensor, size: int, max_elements: int = 2**26
) -> torch.Tensor:
    """Cut ``boxes`` (K, B, 4: top, left, height, width; K crops of each of the B images)
    from a float canvas (B, C, H, W) and resize each to ``size`` x ``size``, as
    ``v2.functional.resized_crop(..., antialias=True)`` does one image at a time.

    Returns (K, B, C, size, size). Resizing is two batched matrix products per image, done
    in chunks of images so the intermediate stays under ``max_elements`` values.
    """
    k, b = boxes.shape[:2]
    _, c, h, w = image.shape
    top, left, bh, bw = boxes.reshape(k * b, 4).unbind(1)
    rows = resize_weights(top, bh, size, h).to(image.dtype).view(k, b, size, h)
    cols = resize_weights(left, bw, size, w).to(image.dtype).view(k, b, size, w)
    rows = rows.permute(1, 0, 2, 3).reshape(b, 1, k * size, h)
    cols = cols.permute(1, 0, 3, 2).unsqueeze(1)  # (B, 1, K, W, size)
    chunk = max(1, max_elements // max(1, c * k * size * max(w, size)))
    out = []
    for i in range(0, b, chunk):
        t = torch.matmul(rows[i : i + chunk], image[i : i + chunk])  # (b, C, K*size, W)
        t = t.view(t.shape[0], c, k, size, w)
        out.append(torch.matmul(t, cols[i : i + chunk]))  # (b, C, K, size, size)
    return torch.cat(out).permute(2, 0, 1, 3, 4)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    gray = grayscale(x) if x.shape[1] == 3 else x
    return _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` (N,) turns, through HSV."""
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = x.unbind(1)
    # Hue in sixths of a turn, by which channel is largest.
    hue = torch.where(
        argmax == 0,
        ((g - b) / safe) % 6,
        torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    sat = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    hue = (hue / 6 + shift.view(-1, 1, 1)) % 1.0
    # HSV -> RGB: channel n is v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hue * 6) % 6
        out.append(maxc - maxc * sat * torch.clamp(torch.minimum(k, 4 - k), 0.0, 1.0))
    return torch.stack(out, dim=1).clamp_(0.0, 1.0)


_JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def gaussian_kernels(kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """(N, kernel) one-dimensional kernels with torchvision's support and normalisation."""
    lim = (kernel - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, kernel, device=sigma.device, dtype=sigma.dtype)
    return torch.softmax(-((x[None, :] / sigma[:, None]) ** 2), dim=1)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, reflect padding."""
    n, c, h, w = x.shape
    k = gaussian_kernels(kernel, sigma.to(x.dtype))  # (N, K)
    weight = k.repeat_interleave(c, dim=0)  # one kernel per (image, channel) group
    pad = kernel // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, weight.view(n * c, 1, 1, kernel), groups=n * c)
    y = F.conv2d(y, weight.view(n * c, 1, kernel, 1), groups=n * c)
    return y.view(n, c, h, w)


def apply_view(crops: torch.Tensor, spec: ViewSpec, generator: torch.Generator) -> torch.Tensor:
    """Flip, colour jitter, grayscale, blur, solarise and normalise float crops in [0, 1]
    (N, C, s, s), each sample with its own random parameters."""
    n, device = crops.shape[0], crops.device
    x = crops
    flip = _coin(n, spec.hflip_prob, generator, device)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    ops = spec.jitter_ops()
    if spec.jitter_prob > 0 and ops:
        jitter = _coin(n, spec.jitter_prob, generator, device)
        strengths = (spec.brightness, spec.contrast, spec.saturation, spec.hue)
        factors = []
        for i, s in enumerate(strengths):
            if i == 3:
                factors.append(_uniform(n, -s, s, generator, device))
            else:
                factors.append(_uniform(n, max(0.0, 1 - s), 1 + s, generator, device))
        # A random order of the four operations per sample (ColorJitter draws randperm(4)).
        order = torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1)
        for slot in range(4):
            for op in ops:
                chosen = torch.nonzero(jitter & (order[:, slot] == op)).squeeze(1)
                if chosen.numel():
                    x[chosen] = _JITTER[op](x[chosen], factors[op][chosen])
    if spec.gray_prob > 0 and spec.channels == 3:
        gray = _coin(n, spec.gray_prob, generator, device)
        x = torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
    if spec.blur_prob > 0:
        blur = _coin(n, spec.blur_prob, generator, device)
        sigma = _uniform(n, spec.blur_sigma[0], spec.blur_sigma[1], generator, device)
        chosen = torch.nonzero(blur).squeeze(1)
        if chosen.numel():
            x[chosen] = gaussian_blur(x[chosen], spec.blur_kernel, sigma[chosen])
    if spec.solarize_prob > 0:
        sol = _coin(n, spec.solarize_prob, generator, device)
        solarized = torch.where(x >= spec.solarize_threshold, 1.0 - x, x)
        x = torch.where(sol.view(-1, 1, 1, 1), solarized, x)
    mean = torch.tensor(spec.mean, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


class BatchedViews:
    """Multi-view augmentation of a whole batch: ``(canvas, sizes) -> [view_0, ...]``, each
    view ``(B, C, size, size)`` float32, in the order of ``specs``.

    Views with the same spec (the local crops of multi-crop) are made together.
    """

    def __init__(self, specs: Sequence[ViewSpec]) -> None:
        if not specs:
            raise ValueError("BatchedViews needs at least one view spec")
        self.specs = list(specs)

    def __call__(
        self, canvas: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator
    ) -> list[torch.Tensor]:
        b = canvas.shape[0]
        device = canvas.device
        image = canvas.float().div_(255.0) if canvas.dtype == torch.uint8 else canvas.float()
        sizes = sizes.to(device)
        groups: dict[ViewSpec, list[int]] = {}
        for i, spec in enumerate(self.specs):
            groups.setdefault(spec, []).append(i)
        views: list[torch.Tensor | None] = [None] * len(self.specs)
        for spec, positions in groups.items():
            k = len(positions)
            boxes = crop_params(sizes.repeat(k, 1), spec.scale, spec.ratio, generator)
            crops = resized_crops(image, boxes.view(k, b, 4), spec.size)
            out = apply_view(
                crops.reshape(k * b, *crops.shape[2:]).clamp_(0.0, 1.0), spec, generator
            )
            for j, pos in enumerate(positions):
                views[pos] = out[j * b : (j + 1) * b]
        return [v for v in views if v is not None]

    def decode_cap(self) -> int:
        """The largest short side an image needs for these views: above it every crop is
        shrunk anyway, so workers may downscale images to it first without losing detail
        (this also bounds the canvas)."""
        cap = 0
        for s in self.specs:
            smallest_side = math.sqrt(s.scale[0] * min(s.ratio[0], 1 / s.ratio[1]))
            cap = max(cap, math.ceil(s.size / smallest_side))
        return cap

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(s) for s in self.specs)
        return f"BatchedViews(\n  {inner}\n)"
