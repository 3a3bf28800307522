"""Batched on-device augmentation: each operation against torchvision's per-image kernel,
random parameters against torchvision's distributions (ranges, rates, two-sample tests), and
training with data.augment=device (exact resume, independent of the number of workers)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import make_images
from scipy.stats import ks_2samp
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import selfsup
from selfsup.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError
from selfsup.data import ImageDataset, collate_canvas, sample_seed, scan_folder
from selfsup.transforms import MultiCropConfig, MultiView, ViewsConfig, multi_crop, two_views
from selfsup.transforms import batched as B

N = 4000  # samples for statistics: a rate p is then known to about +-0.025 (3 sigma)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rng(n: int, seed: int = 0) -> B.SampleRNG:
    return B.SampleRNG.from_seed(seed, n)


def _seeds(n: int, seed: int = 0) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64) + 1000 * seed


def _rate_ok(observed: float, p: float, n: int = N) -> bool:
    return abs(observed - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9


# ----------------------------------------------------------------- kernels = torchvision


@pytest.mark.parametrize(
    "name", ["brightness", "contrast", "saturation", "hue"]
)  # fmt: skip
def test_colour_kernels_equal_torchvision(name: str) -> None:
    x = torch.rand(6, 3, 12, 14, generator=_gen())
    if name == "hue":
        f = torch.tensor([-0.5, -0.2, 0.0, 0.1, 0.3, 0.49])
    else:
        f = torch.tensor([0.0, 0.6, 1.0, 1.3, 1.5, 0.1])
    mine = getattr(B, f"adjust_{name}")(x.clone(), f)
    ref = torch.stack([getattr(TF, f"adjust_{name}")(x[i], float(f[i])) for i in range(6)])
    torch.testing.assert_close(mine, ref, atol=2e-6, rtol=0)


def test_single_channel_contrast_and_grayscale_equal_torchvision() -> None:
    x = torch.rand(3, 1, 10, 10, generator=_gen())
    f = torch.tensor([0.5, 1.0, 1.4])
    ref = torch.stack([TF.adjust_contrast(x[i], float(f[i])) for i in range(3)])
    torch.testing.assert_close(B.adjust_contrast(x.clone(), f), ref, atol=1e-6, rtol=0)
    rgb = torch.rand(4, 3, 8, 8, generator=_gen(1))
    torch.testing.assert_close(B.grayscale(rgb), TF.rgb_to_grayscale(rgb), atol=1e-6, rtol=0)


def test_gaussian_blur_per_sample_sigma_equals_torchvision() -> None:
    x = torch.rand(5, 3, 16, 16, generator=_gen())
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.7, 2.0])
    mine = B.gaussian_blur(x, 5, sigma)
    ref = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(5)])
    torch.testing.assert_close(mine, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [7, 16, 32])  # shrink and enlarge
def test_resized_crops_equal_torchvision_resized_crop(size: int) -> None:
    img = torch.rand(2, 3, 40, 50, generator=_gen())
    boxes = torch.tensor([[[3, 5, 20, 30], [10, 0, 30, 17]], [[0, 0, 40, 50], [31, 44, 9, 6]]])
    out = B.resized_crops(img, boxes, size)
    assert out.shape == (2, 2, 3, size, size)
    for k in range(2):
        for i in range(2):
            t, l_, h, w = (int(v) for v in boxes[k, i])
            ref = TF.resized_crop(img[i], t, l_, h, w, [size, size], antialias=True)
            torch.testing.assert_close(out[k, i], ref, atol=1e-5, rtol=0)


def test_resized_crops_in_chunks_equal_one_pass() -> None:
    img = torch.rand(5, 3, 20, 20, generator=_gen())
    boxes = B.crop_params(torch.tensor([[20, 20]] * 10), (0.1, 1.0), (0.75, 4 / 3), _rng(10))
    whole = B.resized_crops(img, boxes.view(2, 5, 4), 8)
    chunked = B.resized_crops(img, boxes.view(2, 5, 4), 8, max_elements=1)
    torch.testing.assert_close(whole, chunked)


# ------------------------------------------------- parameters = torchvision's distribution


def _tv_crop_params(h: int, w: int, scale: tuple[float, float], n: int) -> torch.Tensor:
    t = v2.RandomResizedCrop(8, scale=scale)
    img = torch.zeros(1, h, w)
    torch.manual_seed(0)
    rows = []
    for _ in range(n):
        p = t.make_params([img])
        rows.append([p["top"], p["left"], p["height"], p["width"]])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("hw,scale", [((32, 32), (0.08, 1.0)), ((40, 90), (0.2, 1.0))])
def test_crop_parameters_follow_torchvision(
    hw: tuple[int, int], scale: tuple[float, float]
) -> None:
    h, w = hw
    mine = B.crop_params(torch.tensor([[h, w]] * N), scale, (3 / 4, 4 / 3), _rng(N)).double()
    ref = _tv_crop_params(h, w, scale, N)
    top, left, ch, cw = mine.unbind(1)
    # Ranges: inside the image, area and aspect within the requested bounds (+ rounding).
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + ch <= h).all() and (left + cw <= w).all() and (ch > 0).all() and (cw > 0).all()
    area = ch * cw / (h * w)
    assert area.max() <= 1.0

    # Same distribution of area, aspect and position: two-sample Kolmogorov-Smirnov tests.
    def stats(p: torch.Tensor) -> dict[str, torch.Tensor]:
        t, l_, hh, ww = p.unbind(1)
        return {
            "area": hh * ww / (h * w),
            "log_aspect": torch.log(ww / hh),
            "top": (t + hh / 2) / h,
            "left": (l_ + ww / 2) / w,
        }

    a, b = stats(mine), stats(ref)
    for key in a:
        assert ks_2samp(a[key].numpy(), b[key].numpy()).pvalue > 1e-3, key
        assert abs(float(a[key].mean() - b[key].mean())) < 0.02 + 0.05 * float(b[key].std()), key


def test_crop_fallback_equals_torchvision() -> None:
    # A 10 x 200 strip with a large minimum area: no try fits, both fall back the same way.
    mine = B.crop_params(torch.tensor([[10, 200]] * 50), (0.9, 1.0), (3 / 4, 4 / 3), _rng(50))
    ref = _tv_crop_params(10, 200, (0.9, 1.0), 1)
    assert (mine == ref.long()).all()


def _spec(**kw: object) -> B.ViewSpec:
    base: dict[str, object] = dict(size=8, scale=(1.0, 1.0), hflip_prob=0.0)
    base.update(kw)
    return B.ViewSpec(**base)  # type: ignore[arg-type]


def _raw(spec: B.ViewSpec, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """apply_view without the normalisation."""
    out = B.apply_view(x.clone(), spec, _rng(x.shape[0], seed))
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return out * std + mean


def test_flip_rate() -> None:
    ramp = torch.linspace(0, 1, 8).expand(N, 3, 8, 8).contiguous()
    out = _raw(_spec(hflip_prob=0.5), ramp)
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert _rate_ok(flipped.float().mean().item(), 0.5)
    assert torch.allclose(out[flipped], ramp[flipped].flip(-1), atol=1e-6)


def test_jitter_rate_and_factor_distribution() -> None:
    x = torch.full((N, 3, 4, 4), 0.4)
    out = _raw(_spec(size=4, jitter_prob=0.8, brightness=0.5), x)
    factor = out[:, 0, 0, 0] / 0.4
    changed = (factor - 1).abs() > 1e-6
    assert _rate_ok(changed.float().mean().item(), 0.8)
    f = factor[changed]
    assert f.min() >= 0.5 - 1e-5 and f.max() <= 1.5 + 1e-5
    assert ks_2samp(f.numpy(), torch.rand(N, generator=_gen(3)).add(0.5).numpy()).pvalue > 1e-3


def test_jitter_order_is_random_per_sample() -> None:
    # Brightness then contrast differs from contrast then brightness once values clip:
    # both orders must occur, about equally often.
    x = torch.rand(N, 3, 6, 6, generator=_gen()) * 0.5 + 0.5
    spec = _spec(size=6, jitter_prob=1.0, brightness=0.9, contrast=0.9)
    out = B.apply_view(x.clone(), spec, _rng(N, 7))
    # The factors each sample drew: its stream's 3rd and 4th numbers, after the flip and
    # jitter coins.
    replay = _rng(N, 7)
    replay.rand(2)
    b, c = (replay.rand(2) * 1.8 + 0.1).unbind(1)
    unnorm = out * torch.tensor(spec.std).view(1, -1, 1, 1) + torch.tensor(spec.mean).view(
        1, -1, 1, 1
    )
    bc = B.adjust_contrast(B.adjust_brightness(x.clone(), b), c)
    cb = B.adjust_brightness(B.adjust_contrast(x.clone(), c), b)
    is_bc = (unnorm - bc).abs().amax(dim=(1, 2, 3)) < 1e-5
    is_cb = (unnorm - cb).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (is_bc | is_cb).all()
    distinct = (bc - cb).abs().amax(dim=(1, 2, 3)) > 1e-4
    share = (is_bc & distinct).float().sum() / distinct.float().sum()
    assert abs(share.item() - 0.5) < 0.05


def test_grayscale_solarize_and_blur_rates() -> None:
    x = torch.rand(N, 3, 8, 8, generator=_gen())
    out = _raw(_spec(gray_prob=0.2), x)
    gray = (out[:, 0] - out[:, 1]).abs().amax(dim=(1, 2)) < 1e-6
    assert _rate_ok(gray.float().mean().item(), 0.2)
    const = torch.full((N, 3, 4, 4), 0.7)
    out = _raw(_spec(size=4, solarize_prob=0.2), const)
    assert _rate_ok((out[:, 0, 0, 0] - 0.3).abs().lt(1e-5).float().mean().item(), 0.2)
    impulse = torch.zeros(N, 1, 9, 9)
    impulse[:, :, 4, 4] = 1.0
    spec = _spec(size=9, blur_prob=0.5, blur_kernel=5, mean=(0.0,), std=(1.0,), channels=1)
    out = _raw(spec, impulse)
    blurred = out[:, 0, 4, 4] < 1.0 - 1e-6
    # The centre weight of the kernel falls with sigma; below sigma ~ 0.19 a 5-tap kernel is
    # an identity in float32, so such blurs cannot be seen: compare with what can be.
    grid = torch.linspace(0.1, 2.0, 19001)
    w = B.gaussian_kernels(5, grid)[:, 2] ** 2
    visible = w < 1.0 - 1e-6
    assert _rate_ok(blurred.float().mean().item(), 0.5 * visible.float().mean().item())
    centre = out[blurred, 0, 4, 4]
    sigma = grid[(w[None, :] - centre[:, None]).abs().argmin(dim=1)]
    ref = torch.rand(4 * N, generator=_gen(5)) * 1.9 + 0.1
    ref = ref[B.gaussian_kernels(5, ref)[:, 2] ** 2 < 1.0 - 1e-6]
    assert ks_2samp(sigma.numpy(), ref.numpy()).pvalue > 1e-3


def test_whole_view_distribution_matches_the_per_image_pipeline() -> None:
    """End to end: the mean and contrast of views of one real-looking image have the same
    distribution from torchvision's per-image pipeline and from BatchedViews."""
    g = _gen()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 48), indexing="ij")
    img = torch.stack([xx, yy, (xx * yy) ** 0.5]) + 0.1 * torch.rand(3, 40, 48, generator=g)
    img = (img.clamp(0, 1) * 255).to(torch.uint8)
    cfg = ViewsConfig(blur_prob=[0.5], solarize_prob=[0.2])
    mv = two_views(cfg, 24, IMAGENET_MEAN, IMAGENET_STD)
    assert mv.specs is not None
    n = 1500
    torch.manual_seed(0)
    ref = torch.stack([mv.transforms[0](img) for _ in range(n)])
    canvas = img.expand(n, -1, -1, -1).contiguous()
    sizes = torch.tensor([[40, 48]] * n)
    mine = B.BatchedViews(mv.specs[:1])(canvas, sizes, _seeds(n, 1))[0]
    assert mine.shape == ref.shape and mine.dtype == torch.float32
    for stat in (lambda v: v.mean(dim=(1, 2, 3)), lambda v: v.std(dim=(1, 2, 3)),
                 lambda v: v[:, 0].mean(dim=(1, 2)) - v[:, 2].mean(dim=(1, 2))):  # fmt: skip
        assert ks_2samp(stat(mine).numpy(), stat(ref).numpy()).pvalue > 1e-3


# ------------------------------------------------------------ counter-based randomness


def _splitmix_ref(z: int) -> int:
    """SplitMix64's finaliser in Python's exact integers, mod 2**64."""
    m = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_mix64_is_splitmix64_bit_for_bit() -> None:
    values = [0, 1, 2, 12345, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 2**40 + 7]
    x = torch.tensor([v - 2**64 if v >= 2**63 else v for v in values], dtype=torch.int64)
    got = [int(v) % 2**64 for v in B.mix64(x)]
    assert got == [_splitmix_ref(v) for v in values]


def test_sample_rng_is_uniform_and_each_row_its_own_stream() -> None:
    seeds = torch.tensor([5, -3, 2**62, 7], dtype=torch.int64)
    rng = B.SampleRNG.for_view(seeds, 0)
    u = rng.rand(3000, dtype=torch.float64)
    assert u.shape == (4, 3000) and (u >= 0).all() and (u < 1).all()
    assert ks_2samp(u.flatten().numpy(), torch.rand(12000, generator=_gen()).numpy()).pvalue > 1e-3
    # Rows are uncorrelated with each other and with their own next draw.
    assert torch.corrcoef(u).sub(torch.eye(4, dtype=u.dtype)).abs().max() < 0.1
    assert torch.corrcoef(torch.stack([u[0, :-1], u[0, 1:]]))[0, 1].abs() < 0.1
    # A row depends only on its own seed and counter, never on the other rows: the same
    # sample alone, or in another batch, draws the same numbers; other views draw others.
    alone = B.SampleRNG.for_view(seeds[2:3], 0)
    torch.testing.assert_close(alone.rand(3000, dtype=torch.float64), u[2:3], rtol=0, atol=0)
    again = B.SampleRNG.for_view(seeds.flip(0), 0)
    first, rest = again.rand(1000), again.rand(2000)
    u32 = B.SampleRNG.for_view(seeds, 0).rand(3000)  # float32: the top 24 bits
    assert (u32 - u).abs().max() < 2**-24
    torch.testing.assert_close(torch.cat([first, rest], 1).flip(0), u32, rtol=0, atol=0)
    other = B.SampleRNG.for_view(seeds, 1).rand(3000, dtype=torch.float64)
    assert (other != u).float().mean() > 0.99
    both = B.SampleRNG.for_views(seeds, [1, 0]).rand(3000, dtype=torch.float64)
    assert torch.equal(both[:4], other) and torch.equal(both[4:], u)


def test_a_sample_gets_the_same_views_in_any_batch() -> None:
    """What DDP needs: each sample's views depend on its pixels and seed alone, not on the
    batch around it (its size, its other images, the canvas padding)."""
    g = _gen(2)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
              for h, w in [(40, 40), (32, 48), (50, 36), (36, 36), (44, 30), (40, 52)]]  # fmt: skip
    seeds = [sample_seed(0, 3, pos) for pos in range(6)]
    mv = multi_crop(MultiCropConfig(global_crops=2, local_crops=2), 24, IMAGENET_MEAN, IMAGENET_STD)
    assert mv.specs is not None
    batched = B.BatchedViews(mv.specs)

    def views(idx: list[int]) -> list[torch.Tensor]:
        canvas, sizes, s, _, _ = collate_canvas([(images[i], 0, [], seeds[i]) for i in idx])
        return batched(canvas, sizes, s)

    whole = views(list(range(6)))
    for part in ([4, 1], [3], [5, 2, 0]):  # as two ranks, or smaller batches, would see them
        for got, ref in zip(views(part), whole, strict=True):
            torch.testing.assert_close(got, ref[part], atol=2e-5, rtol=0)
    # ... while different seeds give different views of the same image.
    canvas, sizes, _, _, _ = collate_canvas([(images[0], 0, [], 0)] * 2)
    a, b = batched(canvas, sizes, torch.tensor([1, 2]))[0]
    assert (a - b).abs().max() > 0.1


def test_out_sizes_resize_the_same_crops_to_another_size() -> None:
    """Progressive resizing: a view made at 12 px instead of its spec's 24 is the view of a
    12-px spec (the same random boxes, flips and colours), the other views unchanged."""
    from dataclasses import replace

    g = _gen(3)
    canvas = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8, generator=g)
    sizes = torch.full((5, 2), 40)
    seeds = _seeds(5)
    spec = _spec(size=24, scale=(0.2, 1.0), hflip_prob=0.5, jitter_prob=0.8, brightness=0.4,
                 contrast=0.4, saturation=0.4, hue=0.1, gray_prob=0.2)  # fmt: skip
    small, full = B.BatchedViews([spec, spec])(canvas, sizes, seeds, out_sizes=[12, 24])
    ref = B.BatchedViews([replace(spec, size=12), spec])(canvas, sizes, seeds)
    assert small.shape == (5, 3, 12, 12) and full.shape == (5, 3, 24, 24)
    torch.testing.assert_close(small, ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(full, ref[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(full, B.BatchedViews([spec, spec])(canvas, sizes, seeds)[1])
    with pytest.raises(ValueError, match="2 views but 1 sizes"):
        B.BatchedViews([spec, spec])(canvas, sizes, seeds, out_sizes=[12])


# ------------------------------------------------------------ canvas, presets, decode cap


def test_canvas_of_mixed_sizes_crops_never_see_the_padding() -> None:
    images = [torch.full((3, h, w), 200, dtype=torch.uint8) for h, w in [(20, 30), (40, 12)]]
    canvas, sizes, seeds, labels, _skipped = collate_canvas(
        [(x, i, [], 10 + i) for i, x in enumerate(images)]
    )
    assert canvas.shape == (2, 3, 40, 30) and canvas.dtype == torch.uint8
    assert sizes.tolist() == [[20, 30], [40, 12]] and labels.tolist() == [0, 1]
    assert seeds.tolist() == [10, 11] and seeds.dtype == torch.int64
    spec = _spec(size=16, scale=(0.08, 1.0), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for seed in range(20):
        (view,) = B.BatchedViews([spec])(canvas, sizes, _seeds(2, seed))
        torch.testing.assert_close(view, torch.full_like(view, 200 / 255))


def test_deep_images_make_a_float_canvas() -> None:
    a = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    b = torch.full((1, 6, 9), 0.25)
    canvas, _sizes, _, _, _ = collate_canvas([(a, 0, [], 0), (b, 0, [], 1)])
    assert canvas.dtype == torch.float32
    assert canvas[0, 0, :8, :8].eq(1.0).all() and canvas[1, 0, :6, :9].eq(0.25).all()


def test_multi_crop_specs_and_views() -> None:
    cfg = MultiCropConfig(global_crops=2, local_crops=3, solarize_prob=[0.0, 0.2])
    mv = multi_crop(cfg, 32, IMAGENET_MEAN, IMAGENET_STD)
    assert mv.specs is not None and len(mv.specs) == 5
    assert [s.size for s in mv.specs] == [32, 32, 14, 14, 14]
    assert mv.specs[1].solarize_prob == 0.2 and mv.specs[4].solarize_prob == 0.0
    canvas = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=_gen())
    views = B.BatchedViews(mv.specs)(canvas, torch.tensor([[40, 40]] * 4), _seeds(4))
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 14, 14)] * 3
    assert not torch.equal(views[2], views[3])  # the local crops differ from each other


def test_decode_cap_keeps_detail_and_dataset_shrinks(tmp_path: Path) -> None:
    spec = _spec(size=32, scale=(0.08, 1.0))
    cap = B.BatchedViews([spec]).decode_cap()
    # The smallest crop of an image shrunk to `cap` (area 8%, aspect 3:4) is still at least
    # 32 px on each side, and a smaller cap would break that.
    assert math.sqrt(0.08 * 3 / 4) * cap >= 32 > math.sqrt(0.08 * 3 / 4) * (cap - 1)
    folder = make_images(tmp_path / "imgs", classes=1, per_class=2, size=300)
    ds = ImageDataset(scan_folder(folder), cap=cap)
    x, _label, skipped, seed = ds[(0, 17)]
    assert seed == 17 and x.dtype == torch.uint8 and min(x.shape[-2:]) == cap and not skipped


# --------------------------------------------------------------------------- training

TINY = dict(
    batch_size=8, image_size=16, progress=False,
    overrides=["monitor.knn=false", "train.log_every=1", "method.proj_hidden_dim=64",
               "data.augment=device"],
)  # fmt: skip


def _losses(run: Path) -> list[str]:
    with open(run / "metrics.csv") as f:
        return [r["loss"] for r in csv.DictReader(f) if r["loss"]]


def test_device_augmentation_trains_resumes_exactly_and_ignores_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_images(tmp_path / "imgs", classes=2, per_class=12)
    a, b = tmp_path / "a", tmp_path / "b"
    selfsup.pretrain("simclr", data=str(folder), out=a, steps=5, workers=0, **TINY)
    captured = capsys.readouterr()
    assert "augment on device" in captured.out + captured.err
    part = selfsup.pretrain("simclr", data=str(folder), out=b, steps=5, workers=2,
                            stop_at_step=2, **TINY)  # fmt: skip
    assert part.state.step == 2
    selfsup.pretrain(resume=b, progress=False, workers=1)
    la, lb = _losses(a), _losses(b)
    assert len(la) == 5 and la == lb and all(math.isfinite(float(v)) for v in la)


def test_device_augmentation_needs_specs(tmp_path: Path) -> None:
    from selfsup.train.trainer import Trainer

    mv = MultiView([lambda x: x])
    assert mv.specs is None
    with pytest.raises(ConfigError, match=r"data\.augment=cpu"):
        Trainer._augment_on_device("device", torch.device("cpu"), mv.specs)
    assert not Trainer._augment_on_device("auto", torch.device("cpu"), mv.specs)
    specs = two_views(ViewsConfig(), 32, IMAGENET_MEAN, IMAGENET_STD).specs
    assert not Trainer._augment_on_device("auto", torch.device("cpu"), specs)
    assert Trainer._augment_on_device("auto", torch.device("cuda"), specs)
    assert Trainer._augment_on_device("device", torch.device("cpu"), specs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_match_the_cpu() -> None:
    img = torch.rand(4, 3, 40, 50, generator=_gen())
    boxes = B.crop_params(torch.tensor([[40, 50]] * 8), (0.08, 1.0), (0.75, 4 / 3), _rng(8))
    cpu = B.resized_crops(img, boxes.view(2, 4, 4), 24)
    gpu = B.resized_crops(img.cuda(), boxes.view(2, 4, 4).cuda(), 24).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=0)
    f = torch.rand(4, generator=_gen()) + 0.5
    for fn in (B.adjust_brightness, B.adjust_contrast, B.adjust_saturation):
        torch.testing.assert_close(
            fn(img.cuda(), f.cuda()).cpu(), fn(img.clone(), f), atol=1e-5, rtol=0
        )
    batched = B.BatchedViews(two_views(ViewsConfig(), 24, IMAGENET_MEAN, IMAGENET_STD).specs or [])
    canvas, sizes = (img * 255).to(torch.uint8), torch.tensor([[40, 50]] * 4)
    views = batched(canvas.cuda(), sizes, _seeds(4).cuda())
    assert [tuple(v.shape) for v in views] == [(4, 3, 24, 24)] * 2 and views[0].is_cuda
    # Counter-based draws: the GPU makes the very views the CPU makes.
    for gpu, cpu in zip(views, batched(canvas, sizes, _seeds(4)), strict=True):
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
