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

Randomness is counter based (:class:`SampleRNG`): every number a sample's view needs is a
hash of that sample's own seed, the view and a draw counter. A sample is therefore
augmented the same way whatever the batch size, the number of workers or of processes, and
whichever rank it lands on, so a run on N GPUs sees the views a run on one would.
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


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 it is bit for bit."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_VIEW = 0xD1B54A32D192ED03


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors, wrapping like uint64 arithmetic."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


class SampleRNG:
    """Counter-based random numbers, one independent stream per row (sample x view).

    ``rand(*shape)`` returns ``(N, *shape)`` uniforms in [0, 1): row i's numbers are
    SplitMix64 outputs of ``keys[i] + (c + 1) * golden`` for consecutive counters c, so
    they depend only on that row's key and on how many numbers the row drew before, never
    on the other rows. Every row makes the same calls, so the counters stay in step.
    """

    def __init__(self, keys: torch.Tensor) -> None:
        if keys.dtype != torch.int64 or keys.dim() != 1:
            raise ValueError("SampleRNG keys must be a 1-d int64 tensor")
        self.keys = keys
        self.counter = 0

    @classmethod
    def for_view(cls, seeds: torch.Tensor, view: int) -> SampleRNG:
        """Streams for view number ``view`` of samples with per-sample ``seeds`` (B,)."""
        salt = _signed(((view + 1) * _VIEW) % (1 << 64))
        return cls(mix64(mix64(seeds.to(torch.int64)) + salt))

    @classmethod
    def for_views(cls, seeds: torch.Tensor, views: Sequence[int]) -> SampleRNG:
        """Rows ``[view_0 of all samples, view_1 of all samples, ...]``."""
        return cls(torch.cat([cls.for_view(seeds, v).keys for v in views]))

    @classmethod
    def from_seed(cls, seed: int, n: int, device: torch.device | str = "cpu") -> SampleRNG:
        """``n`` streams from one integer (tests, previews)."""
        seeds = torch.arange(n, dtype=torch.int64, device=device) + _signed(
            (seed * 0x9E3779B97F4A7C15) % (1 << 64)
        )
        return cls.for_view(seeds, 0)

    @property
    def n(self) -> int:
        return self.keys.shape[0]

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        m = math.prod(shape)
        idx = torch.arange(self.counter + 1, self.counter + m + 1, device=self.device)
        self.counter += m
        h = mix64(self.keys[:, None] + idx[None, :] * _GOLDEN)
        if dtype == torch.float64:
            u = _shr(h, 11).to(torch.float64) * 2.0**-53
        else:
            u = (_shr(h, 40).to(torch.float32) * 2.0**-24).to(dtype)
        return u.view(self.n, *shape)


def _exact_dtype(device: torch.device) -> torch.dtype:
    """float64 for box arithmetic, where the device has it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _uniform(lo: float, hi: float, rng: SampleRNG) -> torch.Tensor:
    return rng.rand() * (hi - lo) + lo


def _coin(p: float, rng: SampleRNG) -> torch.Tensor:
    return rng.rand() < p


def crop_params(
    sizes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: SampleRNG,
    attempts: int = 10,
) -> torch.Tensor:
    """Random resized crop boxes ``(N, 4)`` as (top, left, height, width) for images of
    ``sizes`` ``(N, 2)``, drawn as ``RandomResizedCrop.make_params`` draws them: up to 10
    tries of area fraction ~ U(scale) and log aspect ~ U(log ratio) until the box fits,
    else a centre crop clamped to the ratio range."""
    device = sizes.device
    dtype = _exact_dtype(device)
    n = sizes.shape[0]
    if rng.n != n:
        raise ValueError(f"crop_params: {n} sizes but {rng.n} random streams")
    height = sizes[:, 0].to(dtype)
    width = sizes[:, 1].to(dtype)
    area = (height * width)[:, None]
    frac = rng.rand(attempts, dtype=dtype)
    target = area * (frac * (scale[1] - scale[0]) + scale[0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    log_r = rng.rand(attempts, dtype=dtype)
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
    u_top = rng.rand(dtype=dtype)
    u_left = rng.rand(dtype=dtype)
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


def apply_view(crops: torch.Tensor, spec: ViewSpec, rng: SampleRNG) -> torch.Tensor:
    """Flip, colour jitter, grayscale, blur, solarise and normalise float crops in [0, 1]
    (N, C, s, s), each sample with its own random parameters (row i of ``rng``)."""
    n, device = crops.shape[0], crops.device
    if rng.n != n:
        raise ValueError(f"apply_view: {n} crops but {rng.n} random streams")
    x = crops
    flip = _coin(spec.hflip_prob, rng)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    ops = spec.jitter_ops()
    if spec.jitter_prob > 0 and ops:
        jitter = _coin(spec.jitter_prob, rng)
        strengths = (spec.brightness, spec.contrast, spec.saturation, spec.hue)
        factors = []
        for i, s in enumerate(strengths):
            if i == 3:
                factors.append(_uniform(-s, s, rng))
            else:
                factors.append(_uniform(max(0.0, 1 - s), 1 + s, rng))
        # A random order of the four operations per sample (ColorJitter draws randperm(4)).
        order = torch.argsort(rng.rand(4), dim=1)
        for slot in range(4):
            for op in ops:
                chosen = torch.nonzero(jitter & (order[:, slot] == op)).squeeze(1)
                if chosen.numel():
                    x[chosen] = _JITTER[op](x[chosen], factors[op][chosen])
    if spec.gray_prob > 0 and spec.channels == 3:
        gray = _coin(spec.gray_prob, rng)
        x = torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
    if spec.blur_prob > 0:
        blur = _coin(spec.blur_prob, rng)
        sigma = _uniform(spec.blur_sigma[0], spec.blur_sigma[1], rng)
        chosen = torch.nonzero(blur).squeeze(1)
        if chosen.numel():
            x[chosen] = gaussian_blur(x[chosen], spec.blur_kernel, sigma[chosen])
    if spec.solarize_prob > 0:
        sol = _coin(spec.solarize_prob, rng)
        solarized = torch.where(x >= spec.solarize_threshold, 1.0 - x, x)
        x = torch.where(sol.view(-1, 1, 1, 1), solarized, x)
    mean = torch.tensor(spec.mean, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


class BatchedViews:
    """Multi-view augmentation of a whole batch: ``(canvas, sizes, seeds) -> [view_0, ...]``,
    each view ``(B, C, size, size)`` float32, in the order of ``specs``.

    ``seeds`` (B,) int64 are the samples' own seeds (from :class:`selfsup.data.EpochSampler`):
    view v of a sample depends only on its pixels, its seed and v (:class:`SampleRNG`).
    Views with the same spec (the local crops of multi-crop) are made together.
    """

    def __init__(self, specs: Sequence[ViewSpec]) -> None:
        if not specs:
            raise ValueError("BatchedViews needs at least one view spec")
        self.specs = list(specs)

    def __call__(
        self,
        canvas: torch.Tensor,
        sizes: torch.Tensor,
        seeds: torch.Tensor,
        out_sizes: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """``out_sizes``: each view's side in pixels instead of its spec's (progressive
        resizing): the crops are resized straight to it, with the same random boxes."""
        b = canvas.shape[0]
        device = canvas.device
        if seeds.shape != (b,):
            raise ValueError(f"BatchedViews: {b} images but seeds of shape {tuple(seeds.shape)}")
        image = canvas.float().div_(255.0) if canvas.dtype == torch.uint8 else canvas.float()
        sizes = sizes.to(device)
        seeds = seeds.to(device)
        if out_sizes is not None and len(out_sizes) != len(self.specs):
            raise ValueError(f"BatchedViews: {len(self.specs)} views but {len(out_sizes)} sizes")
        groups: dict[tuple[ViewSpec, int], list[int]] = {}
        for i, spec in enumerate(self.specs):
            size = spec.size if out_sizes is None else int(out_sizes[i])
            groups.setdefault((spec, size), []).append(i)
        views: list[torch.Tensor | None] = [None] * len(self.specs)
        for (spec, size), positions in groups.items():
            k = len(positions)
            rng = SampleRNG.for_views(seeds, positions)
            boxes = crop_params(sizes.repeat(k, 1), spec.scale, spec.ratio, rng)
            crops = resized_crops(image, boxes.view(k, b, 4), size)
            out = apply_view(crops.reshape(k * b, *crops.shape[2:]).clamp_(0.0, 1.0), spec, rng)
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
