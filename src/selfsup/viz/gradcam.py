"""Grad-CAM for CNN backbones (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization", ICCV 2017): where in the image the evidence for
a class lies, by weighting the last convolutional feature map's channels with the average
gradient of the class score. A self-supervised backbone has no classes of its own, so the
score is that of a linear probe (logistic regression) fitted on the frozen features of
labelled images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import Backbone
from selfsup.backbones.vit import ViTBackbone
from selfsup.config import ConfigError
from selfsup.data import ImageSource, open_source, stratified_split
from selfsup.eval.fewshot import fit_logistic
from selfsup.viz.common import (
    Run,
    class_name,
    data_name,
    data_spec,
    image_grid,
    load_images,
    open_images,
    open_run,
    overlay,
    row_label,
    sample,
    save,
    show,
    to_display,
)

# Fraction of the labelled images held out to measure the probe's accuracy.
HOLDOUT = 0.2


@dataclass
class Probe:
    """A linear classifier on standardised features: ``((f - mean) / std) @ weight + bias``,
    with its accuracy (%) on the held-out part of its images (None when too few to hold
    any out) and the number of images it was fitted on."""

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    weight: torch.Tensor  # (D, K)
    bias: torch.Tensor  # (K,)
    heldout_accuracy: float | None
    fitted_on: int

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores (B, K) of features (B, D)."""
        return ((features.float() - self.mean) / self.std) @ self.weight + self.bias

    def describe(self) -> str:
        acc = self.heldout_accuracy
        return f"held-out accuracy {acc:.0f}%" if acc is not None else "no held-out images"


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    holdout: float = HOLDOUT,
    seed: int = 0,
) -> Probe:
    """Multinomial logistic regression on standardised ``features`` (N, D) of the labelled
    images (labels >= 0), fitted on all but a class-balanced ``holdout`` fraction that
    measures its accuracy (all of them when every class has fewer than 5 images)."""
    keep = labels >= 0
    x, y = features[keep].float(), labels[keep].long()
    if len(torch.unique(y)) < 2:
        raise ConfigError(
            "Grad-CAM's probe needs labelled images of at least two classes in --data "
            "(class sub-folders <class>/<image>)."
        )
    k = num_classes or int(y.max()) + 1
    counts = torch.bincount(y)
    held: list[int] = []
    fit = list(range(len(y)))
    if int(counts[counts > 0].min()) >= 5:
        held, fit = stratified_split(y.tolist(), len(y), round(holdout * len(y)), seed)
    xf, yf = x[fit], y[fit]
    mean, std = xf.mean(0), xf.std(0).clamp_min(1e-6)
    w, b = fit_logistic((xf - mean) / std, yf, k)
    probe = Probe(mean, std, w, b, None, len(fit))
    if held:
        probe.heldout_accuracy = float((probe(x[held]).argmax(1) == y[held]).float().mean() * 100)
    return probe


def target_layer(backbone: Backbone, images: torch.Tensor) -> nn.Module:
    """The last direct child of the backbone's network whose output is a spatial feature
    map (B, C, h, w) with h * w > 1: ``layer4`` of a ResNet (``layer3`` when the input is
    so small that ``layer4`` is 1x1), the stages of timm CNNs."""
    outputs: list[tuple[nn.Module, bool]] = []
    handles = []
    for child in backbone.net.children():

        def hook(m: nn.Module, args: Any, out: Any) -> None:
            spatial = (
                isinstance(out, torch.Tensor)
                and out.ndim == 4
                and out.shape[-2] * out.shape[-1] > 1
            )
            outputs.append((m, spatial))

        handles.append(child.register_forward_hook(hook))
    try:
        with torch.no_grad():
            backbone(images[:1])
    finally:
        for h in handles:
            h.remove()
    spatial = [m for m, ok in outputs if ok]
    if not spatial:
        raise ConfigError(
            f"{backbone.name} has no spatial feature map larger than 1x1 at this image size, "
            "so Grad-CAM has nothing to localise."
        )
    return spatial[-1]


def grad_cam(
    backbone: Backbone,
    probe: Probe,
    images: torch.Tensor,
    classes: torch.Tensor | None = None,
    pool: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM heat maps (B, H, W) at the images' resolution, for ``classes`` (B,) (default:
    each image's predicted class), and the probe's class probabilities (B, K).

    ``pool``: the B images are the frames of one clip, scored together from their mean
    feature (temporal average pooling); the class score's gradient reaches every frame's
    feature map, so each frame gets its own map of where the evidence for the clip's class
    lies. Probabilities are then (1, K)."""
    layer = target_layer(backbone, images)
    store: list[torch.Tensor] = []

    def hook(m: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        # A fresh leaf: gradients stop here, so nothing before the layer is differentiated
        # (cheaper), and frozen weights do not matter.
        a = out.detach().float().requires_grad_(True)
        store.append(a)
        return a

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            feats = backbone(images.float())
            scores = probe(feats.mean(0, keepdim=True) if pool else feats)
            target = scores.argmax(1) if classes is None else classes.long()
            picked = scores.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, store[-1])
    finally:
        handle.remove()
    act = store[-1].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): the paper's alpha_k^c
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0], scores.detach().softmax(1)


def clip_grad_cam(backbone: Any, probe: Probe, clip: torch.Tensor,
                  klass: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Grad-CAM of a space-time ViT (:class:`~selfsup.backbones.video_vit.VideoViTBackbone`)
    for one clip (1, C, T, H, W): heat maps (T, H, W) and the probe's probabilities (1, K).

    The activations are the final-normed tube tokens (N, D) (the transformer analogue of the
    last convolutional map, as Grad-CAM is applied to ViTs), weighted by the mean gradient of
    the class score (``klass``, default: the predicted one) over tokens; each tube's value
    covers its ``tubelet`` frames and ``p`` x ``p`` pixels, then is upsampled bilinearly."""
    store: list[torch.Tensor] = []

    def hook(m: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        a = out.detach().float().requires_grad_(True)
        store.append(a)
        return a

    handle = backbone.net.norm.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            scores = probe(backbone(clip.float()))
            target = int(scores.argmax(1)) if klass is None else klass
            (grad,) = torch.autograd.grad(scores[0, target], store[-1])
    finally:
        handle.remove()
    act = store[-1].detach()[0]  # (N, D)
    weights = grad[0].mean(0)  # (D,)
    gt, gh, gw = backbone.grid(clip)
    cam = F.relu(act @ weights).reshape(gt, 1, gh, gw)
    cam = cam.repeat_interleave(backbone.tubelet, dim=0)  # a tube covers tubelet frames
    cam = F.interpolate(cam, size=clip.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0], scores.detach().softmax(1)


def _class_index(spec: int | str, classes: list[str]) -> int:
    if isinstance(spec, int) or spec.isdigit():
        i = int(spec)
        if not 0 <= i < len(classes):
            raise ConfigError(
                f"--class-index {i} is out of range: the data has {len(classes)} classes."
            )
        return i
    if spec not in classes:
        raise ConfigError(
            f"--class-index {spec!r} is not a class of the data ({', '.join(classes)})."
        )
    return classes.index(spec)


def gradcam(
    run: str | Path | Run,
    out: str | Path,
    data: str | None = None,
    *,
    queries: str | ImageSource | None = None,
    class_index: int | str | None = None,
    num_images: int = 8,
    limit: int | None = 2000,
    split: str = "test",
    data_root: str | None = None,
    seed: int = 0,
    device: str = "auto",
) -> Path:
    """Grad-CAM of ``num_images`` images (from ``queries``, else drawn from ``data``) for
    a logistic-regression probe fitted on the frozen features of (at most ``limit``)
    labelled images of ``data``. ``class_index`` (an index or a class name) explains that
    class for every image; unset, each image's predicted class."""
    from selfsup import api

    r = open_run(run)
    bb = r.method.feature_extractor()
    if isinstance(bb, ViTBackbone) or not isinstance(bb, Backbone):
        raise ConfigError(
            f"gradcam works on CNN backbones (it weighs a convolutional feature map), but "
            f"{r.name} is a {r.describe} run. For ViTs use `selfsup viz attention` or "
            "`selfsup viz patch-pca`."
        )
    spec, root = data_spec(r, data, "gradcam", data_root)
    source = open_source(spec, split=split, root=root)
    if source.labels is None:
        raise ConfigError(
            f"gradcam explains the class of a linear probe, so --data {spec!r} must be labelled "
            "(class sub-folders <class>/<image>, or a named set)."
        )
    wanted = None if class_index is None else _class_index(class_index, source.classes)
    feats, labels = api.extract(r.checkpoint, spec, split, data_root=root, limit=limit,
                                device=device, progress=None)  # fmt: skip
    probe = fit_probe(feats, labels, len(source.classes))
    shown = source if queries is None else open_images(r, queries, "gradcam", split, data_root)
    x, y, _ = load_images(r, shown, sample(shown, num_images, seed + 1))
    target = None if wanted is None else torch.full((len(x),), wanted)
    heat, probs = grad_cam(bb, probe, x, target)
    explained = probs.argmax(1) if target is None else target
    what = (
        "each image's predicted class"
        if target is None
        else f"class {source.classes[int(target[0])]!r}"
    )
    fig, axes = image_grid(2, len(x), (
        f"{r.name} ({r.describe}): Grad-CAM of {what}\n"
        f"(logistic-regression probe fitted on {probe.fitted_on} {data_name(source)} images, "
        f"{probe.describe()})"
    ), captions=True, row_labels=True)  # fmt: skip
    img = to_display(x, r.mean, r.std)
    for i in range(len(x)):
        c = int(explained[i])
        show(axes[0, i], img[i], caption=f"true: {class_name(shown, y[i])}")
        overlay(axes[1, i], img[i], heat[i].numpy(),
                caption=f"{class_name(source, c)} p={float(probs[i, c]):.2f}")  # fmt: skip
    row_label(axes[0, 0], "image")
    row_label(axes[1, 0], "Grad-CAM")
    return save(fig, out)
