"""View presets: the SimCLR augmentation family (SimCLR, MoCo, BYOL, SimSiam, Barlow
Twins, VICReg), multi-crop (SwAV, DINO) and the light crops of masked image modelling."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torchvision.transforms import v2

from selfsup.transforms.base import MultiView, normalize, to_float
from selfsup.transforms.batched import ViewSpec

# Above this image size the papers' Gaussian blur is used by default; on CIFAR-sized images
# it hurts (SimCLR, Appendix B.9), so it is off at or below.
BLUR_MIN_SIZE = 64


@dataclass
class ViewsConfig:
    """Augmentations of SimCLR (Chen et al., 2020, Appendix A): random resized crop, flip,
    colour jitter, random grayscale, Gaussian blur, and solarisation (BYOL). Blur and
    solarisation take one probability per view where papers make the views asymmetric
    (BYOL: blur 1.0 / 0.1, solarise 0 / 0.2); a single value applies to every view."""

    # Random resized crop area range, as fractions of the image.
    min_scale: float = 0.08
    max_scale: float = 1.0
    # Colour jitter strength s. SimCLR uses 1.0 on ImageNet and 0.5 on CIFAR-10.
    cj_strength: float = 0.5
    cj_prob: float = 0.8
    # Brightness, contrast, saturation, hue jitter as multiples of s (SimCLR: 0.8 0.8 0.8
    # 0.2; BYOL: 0.8 0.8 0.4 0.2 at s = 0.5).
    cj_ratios: list[float] = field(default_factory=lambda: [0.8, 0.8, 0.8, 0.2])
    gray_prob: float = 0.2
    # Gaussian blur probability, per view. Unset: 0.5 above 64 px, 0 at or below.
    blur_prob: list[float] | None = None
    solarize_prob: list[float] = field(default_factory=lambda: [0.0])
    hflip_prob: float = 0.5


@dataclass
class MultiCropConfig(ViewsConfig):
    """Multi-crop (SwAV, Caron et al., 2020; DINO, Caron et al., 2021): a few global crops
    at full resolution plus several small local crops that only the student sees."""

    min_scale: float = 0.25
    global_crops: int = 2
    local_crops: int = 6
    # Local crop size in pixels. Unset: 3/7 of the image size (96 for 224 as in DINO).
    local_size: int | None = None
    local_min_scale: float = 0.05
    local_max_scale: float = 0.25
    # Blur probability of local crops (DINO: 0.5). Unset: follows the image size rule.
    local_blur_prob: float | None = None


@dataclass
class MaskedViewsConfig:
    """The light augmentation of masked image modelling (MAE, He et al., 2022): random
    resized crop and horizontal flip only."""

    min_scale: float = 0.2
    max_scale: float = 1.0
    hflip_prob: float = 0.5


def _pick(values: Sequence[float] | None, index: int, default: float) -> float:
    if values is None or len(values) == 0:
        return default
    return float(values[index] if index < len(values) else values[-1])


def _blur_kernel(size: int) -> int:
    k = max(3, int(0.1 * size))  # 10% of the image side, odd (SimCLR)
    return k if k % 2 == 1 else k + 1


def view_spec(
    cfg: ViewsConfig,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
    index: int = 0,
    scale: tuple[float, float] | None = None,
    blur_prob: float | None = None,
    solarize: bool = True,
) -> ViewSpec:
    """The random parameters of view number ``index`` of the family, as a :class:`ViewSpec`."""
    s = cfg.cj_strength
    rb, rc, rs, rh = (list(cfg.cj_ratios) + [0.0] * 4)[:4]
    auto_blur = 0.5 if image_size > BLUR_MIN_SIZE else 0.0
    p_blur = blur_prob if blur_prob is not None else _pick(cfg.blur_prob, index, auto_blur)
    lo, hi = scale or (cfg.min_scale, cfg.max_scale)
    return ViewSpec(
        size=image_size, scale=(lo, hi), hflip_prob=cfg.hflip_prob,
        jitter_prob=cfg.cj_prob if s > 0 else 0.0,
        brightness=rb * s, contrast=rc * s, saturation=rs * s, hue=rh * s,
        gray_prob=cfg.gray_prob if channels == 3 else 0.0,
        blur_prob=p_blur, blur_kernel=_blur_kernel(image_size),
        solarize_prob=_pick(cfg.solarize_prob, index, 0.0) if solarize else 0.0,
        mean=tuple(float(m) for m in mean), std=tuple(float(v) for v in std), channels=channels,
    )  # fmt: skip


def spec_transform(spec: ViewSpec) -> v2.Compose:
    """The per-image torchvision pipeline of a spec: uint8 (C, H, W) -> float32
    (C, size, size). :class:`BatchedViews` draws from the same distributions."""
    strengths = [spec.brightness, spec.contrast, spec.saturation, spec.hue]
    active = spec.jitter_ops()
    b, c, s, h = (strengths[i] if i in active else 0.0 for i in range(4))
    ops: list[torch.nn.Module] = [
        # Work in float [0, 1] so 8-bit and 16-bit images follow the same path.
        to_float(),
        v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True),
        v2.RandomHorizontalFlip(spec.hflip_prob),
    ]
    if spec.jitter_prob > 0 and active:
        ops.append(v2.RandomApply([v2.ColorJitter(b, c, s, h)], p=spec.jitter_prob))
    if spec.gray_prob > 0 and spec.channels == 3:
        ops.append(v2.RandomGrayscale(spec.gray_prob))
    if spec.blur_prob > 0:
        blur = v2.GaussianBlur(spec.blur_kernel, spec.blur_sigma)
        ops.append(v2.RandomApply([blur], p=spec.blur_prob))
    if spec.solarize_prob > 0:
        ops.append(v2.RandomSolarize(spec.solarize_threshold, p=spec.solarize_prob))
    ops.append(normalize(spec.mean, spec.std))
    return v2.Compose(ops)


def view_transform(
    cfg: ViewsConfig,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
    index: int = 0,
    scale: tuple[float, float] | None = None,
    blur_prob: float | None = None,
) -> v2.Compose:
    """View number ``index`` of the family: uint8 (C, H, W) -> float32 (C, size, size)."""
    return spec_transform(view_spec(cfg, image_size, mean, std, channels, index, scale, blur_prob))


def views_from_specs(specs: Sequence[ViewSpec]) -> MultiView:
    """A per-image :class:`MultiView` that also carries its specs, so the trainer can run the
    same augmentation batched on the device instead (``data.augment=device``)."""
    return MultiView([spec_transform(s) for s in specs], specs=specs)


def two_views(
    cfg: ViewsConfig,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
) -> MultiView:
    """The two views of SimCLR, MoCo, BYOL, SimSiam, Barlow Twins and VICReg."""
    return views_from_specs([view_spec(cfg, image_size, mean, std, channels, i) for i in range(2)])


def byol_views() -> ViewsConfig:
    """BYOL's asymmetric augmentation (Grill et al., 2020, Table 6), also MoCo v3's: crops
    from 8% of the image, flip, colour jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale
    0.2, blur 1.0 / 0.1 and solarisation 0 / 0.2 for the two views. ``blur_prob=None`` is
    resolved by :func:`resolve_byol_blur` from the image size."""
    return ViewsConfig(
        min_scale=0.08,
        cj_strength=0.5,
        cj_prob=0.8,
        cj_ratios=[0.8, 0.8, 0.4, 0.2],
        gray_prob=0.2,
        blur_prob=None,
        solarize_prob=[0.0, 0.2],
    )


def resolve_byol_blur(views: ViewsConfig, image_size: int) -> ViewsConfig:
    """Unset ``blur_prob``: BYOL's [1.0, 0.1] above 64 px; none at or below, where blur
    destroys most of a CIFAR-sized image (SimCLR, Appendix B.9)."""
    if views.blur_prob is not None:
        return views
    blur = [1.0, 0.1] if image_size > BLUR_MIN_SIZE else [0.0]
    return dataclasses.replace(views, blur_prob=blur)


def local_crop_size(cfg: MultiCropConfig, image_size: int) -> int:
    return cfg.local_size or max(8, round(image_size * 3 / 7))


def multi_crop(
    cfg: MultiCropConfig,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
) -> MultiView:
    """``global_crops`` views at ``image_size``, then ``local_crops`` small views."""
    specs = [view_spec(cfg, image_size, mean, std, channels, i) for i in range(cfg.global_crops)]
    size = local_crop_size(cfg, image_size)
    local_blur = cfg.local_blur_prob
    if local_blur is None:
        local_blur = 0.5 if image_size > BLUR_MIN_SIZE else 0.0
    # Local crops are never solarised (DINO).
    local = view_spec(
        cfg, size, mean, std, channels, index=cfg.global_crops,
        scale=(cfg.local_min_scale, cfg.local_max_scale), blur_prob=local_blur, solarize=False,
    )  # fmt: skip
    return views_from_specs(specs + [local] * cfg.local_crops)


def masked_view(
    cfg: MaskedViewsConfig,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> MultiView:
    """One lightly augmented view (MAE)."""
    spec = ViewSpec(
        size=image_size, scale=(cfg.min_scale, cfg.max_scale), hflip_prob=cfg.hflip_prob,
        mean=tuple(float(m) for m in mean), std=tuple(float(v) for v in std),
        channels=len(mean),
    )  # fmt: skip
    return views_from_specs([spec])


class ClipView(MultiView):
    """One view of a clip for video methods: uint8 ``(T, C, H, W)`` frames -> ``[(C, T, S,
    S)]``, the same random resized crop and flip for every frame (a tube stays on the same
    content), then normalised. ``clip`` = (frames, stride) tells the data loader to draw
    ``frames`` frames ``stride`` apart from a random start of the video."""

    def __init__(self, spec: ViewSpec, frames: int, stride: int) -> None:
        if frames < 1 or stride < 1:
            raise ValueError(f"a clip needs frames >= 1 and stride >= 1, got {frames}, {stride}")
        # No specs: clips are augmented per sample on the CPU, never batched on the device.
        super().__init__([spec_transform(spec)])
        self.clip = (frames, stride)

    def __call__(self, clip: torch.Tensor) -> list[torch.Tensor]:
        if clip.ndim != 4:
            raise ValueError(
                f"a video method takes clips (T, C, H, W), got {tuple(clip.shape)}: pretrain "
                "it on a folder of videos"
            )
        # torchvision's v2 transforms draw one set of parameters for all leading dimensions.
        return [self.transforms[0](clip).transpose(0, 1).contiguous()]

    def __repr__(self) -> str:
        return f"ClipView(frames={self.clip[0]}, stride={self.clip[1]}, {self.transforms[0]!r})"


def clip_view(cfg: MaskedViewsConfig, image_size: int, mean: Sequence[float],
              std: Sequence[float], frames: int, stride: int) -> ClipView:  # fmt: skip
    """The light augmentation of masked modelling, one crop and flip for a whole clip
    (VideoMAE: multi-scale crop and flip)."""
    spec = ViewSpec(
        size=image_size, scale=(cfg.min_scale, cfg.max_scale), hflip_prob=cfg.hflip_prob,
        mean=tuple(float(m) for m in mean), std=tuple(float(v) for v in std),
        channels=len(mean),
    )  # fmt: skip
    return ClipView(spec, frames, stride)


def frame_differences(clip: torch.Tensor) -> torch.Tensor:
    """A clip's motion: ``(T, C, H, W)`` -> the same shape, frame t replaced by frame t + 1
    minus frame t - 1 (one-sided at the ends, where the clip stops), so a still background
    becomes zero and what moves keeps its edges. A one-frame clip has no motion: zeros."""
    if clip.shape[0] < 2:
        return torch.zeros_like(clip)
    after = torch.cat([clip[1:], clip[-1:]])
    before = torch.cat([clip[:1], clip[:-1]])
    return after - before


class ClipViews(MultiView):
    """An image method's views, made of clips for a video backbone (the rho-methods of
    Feichtenhofer et al., "A Large-Scale Study on Unsupervised Spatiotemporal Representation
    Learning", CVPR 2021): view k is a clip of ``frames`` frames ``stride`` apart from its own
    moment of the video, given view k's augmentation with one set of random parameters for
    all its frames (a crop, flip or colour change that flickered from frame to frame would
    be motion the clip does not have). ``(n, T, C, H, W)`` -> ``[(C, T, S, S)] * n``.

    ``motion[k]``: the chance that view k's clip, once augmented, is replaced by its
    :func:`frame_differences` (motion as a view, after the RGB / motion views of MaCLR,
    Xiao et al., 2021, and CoCLR's RGB / flow, Han et al., NeurIPS 2020): its positive, a
    clip in colour, must then be found from what moves alone. Missing entries are 0.

    ``clip`` = (frames, stride) and ``clips`` = n tell the data loader to draw n clips of
    the video, their starts at most ``data.video_gap`` frames apart."""

    def __init__(
        self, views: MultiView, frames: int, stride: int, motion: Sequence[float] = ()
    ) -> None:
        if frames < 1 or stride < 1:
            raise ValueError(f"a clip needs frames >= 1 and stride >= 1, got {frames}, {stride}")
        if len(motion) > len(views.transforms) or any(not 0 <= p <= 1 for p in motion):
            raise ValueError(
                f"motion: at most one probability in [0, 1] a view ({len(views.transforms)} "
                f"views), got {list(motion)}"
            )
        # No specs: clips are augmented per sample on the CPU, never batched on the device.
        super().__init__(views.transforms)
        self.clip = (frames, stride)
        self.clips = len(self.transforms)
        self.motion = [float(p) for p in motion] + [0.0] * (self.clips - len(motion))

    def __call__(self, clips: torch.Tensor) -> list[torch.Tensor]:
        if clips.ndim != 5 or clips.shape[0] != self.clips:
            raise ValueError(
                f"{self.clips} clips (n, T, C, H, W) expected, got {tuple(clips.shape)}: "
                "pretrain a video backbone on a folder of videos"
            )
        out = []
        # torchvision's v2 transforms draw one set of parameters for all leading dimensions.
        for t, c, p in zip(self.transforms, clips, self.motion, strict=True):
            v = t(c)
            # The sample's seeded generator (torch's global one in the worker) draws the coin.
            if p > 0 and float(torch.rand(())) < p:
                v = frame_differences(v)
            out.append(v.transpose(0, 1).contiguous())
        return out

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        motion = f", motion={self.motion}" if any(self.motion) else ""
        return f"ClipViews(frames={self.clip[0]}, stride={self.clip[1]}{motion},\n  {inner}\n)"
