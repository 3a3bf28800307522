"""Self-supervised monocular depth from video alone (Godard et al., "Digging Into
Self-Supervised Monocular Depth Estimation" (Monodepth2), ICCV 2019), as a task on the one
supervised loop.

A depth network (any run's CNN backbone as encoder, :class:`DispDecoder`) predicts the
target frame's disparity at four scales; a pose network (:class:`PoseNet`) predicts the
camera's motion to each source frame (``offsets`` frames away; handheld indoor video moves
little between neighbours, so farther sources help), or known poses are used. Each source
is inverse-warped into the target with the intrinsics; the loss is the per-pixel minimum
over sources of 0.85 (1 - SSIM) / 2 + 0.15 L1, with auto-masking of pixels an unwarped
source explains better, plus edge-aware smoothness (1e-3 / 2^scale), every scale's
disparity upsampled to full resolution first. No depth label is read in training; test
frames are scored against the sensor's depth after per-frame median scaling (monocular
depth has no scale).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from selfsup.data.depth import DepthFolder, open_depth, read_intrinsics
from selfsup.eval.depth import METRICS, DepthMetrics
from selfsup.heads.depth_decoder import DispDecoder, PoseNet
from selfsup.losses.photometric import min_reprojection_loss, smoothness_loss
from selfsup.modules.geometry import (
    disp_to_depth,
    inverse_warp,
    pose_matrix,
    relative_pose,
    scale_intrinsics,
)
from selfsup.train.supervised import LoopConfig, SupervisedLoop
from selfsup.transforms.dense import normalise, resize_image, short_side_size, to_unit

CONFIG_FILE = "monodepth.json"
MODEL_FILE = "model.pt"


@dataclass
class MonodepthConfig:
    """What a self-supervised depth run trains with (saved as ``monodepth.json``)."""

    # Shorter side of the frames the networks see (7-Scenes 240x320 -> 192x256).
    image_size: int = 192
    # Source frames relative to each target frame.
    offsets: list[int] = field(default_factory=lambda: [-3, 3])
    steps: int = 1000
    max_seconds: float | None = None
    batch_size: int = 8
    lr: float = 1e-4  # Monodepth2's Adam rate
    # The encoder's learning rate relative to the rest (1: Monodepth2 trains all alike).
    encoder_lr_scale: float = 1.0
    min_depth: float = 0.1
    max_depth: float = 10.0
    smoothness: float = 1e-3
    scales: int = 4
    automask: bool = True
    # Depth (metres) the decoder starts at. None: the geometric middle of [min_depth,
    # max_depth] with known poses (the warp is metric from the first step, so a start 9x
    # too near makes every warped source worse than the unwarped one and the auto-mask
    # drops most pixels); Monodepth2's default (sigmoid 0.5) with the pose network, whose
    # translation starts at zero and grows with the depth.
    init_depth: float | None = None
    # Use <stem>.pose.txt camera-to-world poses instead of the pose network.
    known_poses: bool = False
    decoder_width: int = 256
    # Pose network input: frames downscaled by this factor (pose is global; saves compute).
    pose_downscale: int = 2
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = -1
    # Filled in by train_monodepth.
    encoder: str | None = None
    random_init: bool = False
    frames: str = ""
    train_frames: str | None = None
    test_frames: str | None = None
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    backbone: dict[str, Any] = field(default_factory=dict)


class Triplets(Dataset[dict[str, torch.Tensor]]):
    """Every frame of ``folder`` whose sources (``offsets`` away, among all the folder's
    frames in ``allowed``) exist, as a training example: ``image`` (normalised target for the
    depth network), ``target`` and ``sources`` ``(S, 3, h, w)`` in [0, 1], ``k`` (3, 3) at
    this size, and ``poses`` ``(S, 4, 4)`` target-to-source when ``known_poses``."""

    def __init__(self, folder: DepthFolder, k: torch.Tensor, cfg: MonodepthConfig,
                 hflip: float = 0.5) -> None:  # fmt: skip
        self.folder, self.k, self.cfg, self.hflip = folder, k, cfg, hflip
        allowed = set(folder.stems)
        self.items: list[tuple[str, list[str]]] = []
        for stem in folder.stems:
            i = folder.index_of(stem)
            js = [i + o for o in cfg.offsets]
            if all(0 <= j < len(folder.all_stems) for j in js):
                srcs = [folder.all_stems[j] for j in js]
                if all(s in allowed for s in srcs):
                    self.items.append((stem, srcs))
        if not self.items:
            raise ValueError(
                f"no frame of {folder.root} has sources at offsets {cfg.offsets} within the "
                "frames given; use smaller offsets or more frames"
            )

    def __len__(self) -> int:
        return len(self.items)

    def _frame(self, stem: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """The frame in [0, 1] at the networks' size, and its original (H, W)."""
        x = to_unit(self.folder.load_image(stem))
        hw = (int(x.shape[1]), int(x.shape[2]))
        return resize_image(x, short_side_size(hw, self.cfg.image_size)), hw

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        stem, srcs = self.items[i]
        target, (h0, w0) = self._frame(stem)
        sources = torch.stack([self._frame(s)[0] for s in srcs])
        h, w = int(target.shape[-2]), int(target.shape[-1])
        k = scale_intrinsics(self.k, w / w0, h / h0)
        out = {"target": target, "sources": sources, "k": k}
        if self.cfg.known_poses:
            pt = self._pose(stem)
            out["poses"] = torch.stack([relative_pose(pt[None], self._pose(s)[None])[0]
                                        for s in srcs])  # fmt: skip
        if self.hflip > 0 and float(torch.rand(())) < self.hflip and not self.cfg.known_poses:
            # Flipping every frame mirrors the scene; the pose network sees mirrored motion and
            # cx moves to the mirrored centre. (Known poses would need mirroring too: skipped.)
            out["target"], out["sources"] = target.flip(-1), sources.flip(-1)
            out["k"] = k.clone()
            out["k"][0, 2] = (w - 1) - k[0, 2]
        out["image"] = normalise(out["target"], self.cfg.mean, self.cfg.std)
        return out

    def _pose(self, stem: str) -> torch.Tensor:
        p = self.folder.pose(stem)
        if p is None:
            raise ValueError(
                f"--poses needs {self.folder.root}/{stem}.pose.txt (4x4 camera-to-world)"
            )
        return p


def initial_disparity(cfg: MonodepthConfig) -> float | None:
    """The sigmoid output the decoder starts at for ``cfg.init_depth`` (see there)."""
    depth = cfg.init_depth
    if depth is None:
        if not cfg.known_poses:
            return None
        depth = math.sqrt(cfg.min_depth * cfg.max_depth)
    if not cfg.min_depth < depth < cfg.max_depth:
        raise ValueError(f"init_depth {depth} m must lie inside (min_depth, max_depth) = "
                         f"({cfg.min_depth}, {cfg.max_depth})")  # fmt: skip
    lo, hi = 1 / cfg.max_depth, 1 / cfg.min_depth
    return (1 / depth - lo) / (hi - lo)


class MonodepthModel(nn.Module):
    """Encoder (a backbone with ``forward_dense``), disparity decoder and pose network."""

    def __init__(self, encoder: nn.Module, cfg: MonodepthConfig, in_chans: int = 3) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = DispDecoder(encoder.dense_specs(), in_chans, cfg.decoder_width,  # type: ignore[operator]
                                   cfg.scales, initial_disparity(cfg))  # fmt: skip
        self.pose = PoseNet(in_chans)
        self.min_depth, self.max_depth = cfg.min_depth, cfg.max_depth

    def disparities(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.encoder.forward_dense(x)  # type: ignore[operator]
        out: list[torch.Tensor] = self.decoder(feats, x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised frames ``(B, 3, h, w)`` -> depth ``(B, 1, h, w)`` (up to scale)."""
        disp = F.interpolate(self.disparities(x)[0], size=x.shape[-2:], mode="bilinear",
                             align_corners=False)  # fmt: skip
        return disp_to_depth(disp, self.min_depth, self.max_depth)


class MonodepthTask:
    """View synthesis losses on training triplets; median-scaled depth metrics on test
    frames (``score`` = delta1)."""

    def __init__(self, model: MonodepthModel, cfg: MonodepthConfig) -> None:
        self.model, self.cfg = model, cfg

    def param_groups(self) -> list[dict[str, Any]]:
        enc = [p for p in self.model.encoder.parameters() if p.requires_grad]
        rest = [p for n, p in self.model.named_parameters() if not n.startswith("encoder.")]
        return [{"params": rest}, {"params": enc, "lr_scale": self.cfg.encoder_lr_scale}]

    def _poses(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if "poses" in batch:
            return list(batch["poses"].unbind(1))
        f = self.cfg.pose_downscale

        def prep(x: torch.Tensor) -> torch.Tensor:  # normalised, downscaled for the pose net
            x = normalise(x.float(), self.cfg.mean, self.cfg.std)
            return F.avg_pool2d(x, f) if f > 1 else x

        tgt = prep(batch["target"])
        out = []
        for s in batch["sources"].unbind(1):
            rot, trans = self.model.pose(tgt, prep(s))
            out.append(pose_matrix(rot, trans))
        return out

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        target, k = batch["target"].float(), batch["k"].float()
        sources = [s.float() for s in batch["sources"].unbind(1)]
        disps = self.model.disparities(batch["image"])
        poses = self._poses(batch)
        # Geometry and SSIM in float32 whatever the networks ran in: bf16 carries 8 bits of
        # mantissa, a pixel or more of error in coordinates of a few hundred.
        with torch.autocast(target.device.type, enabled=False):
            return self._view_synthesis(target, sources, k, [d.float() for d in disps],
                                        [p.float() for p in poses])  # fmt: skip

    def _view_synthesis(self, target: torch.Tensor, sources: list[torch.Tensor], k: torch.Tensor,
                        disps: list[torch.Tensor], poses: list[torch.Tensor]
                        ) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
        cfg = self.cfg
        h, w = int(target.shape[-2]), int(target.shape[-1])
        total = target.new_zeros(())
        logs: dict[str, Any] = {}
        for scale, disp in enumerate(disps):
            full = F.interpolate(disp, size=(h, w), mode="bilinear", align_corners=False)
            depth = disp_to_depth(full, cfg.min_depth, cfg.max_depth)
            pairs = [inverse_warp(s, depth, p, k) for s, p in zip(sources, poses, strict=True)]
            warped, valid = [im for im, _ in pairs], [v for _, v in pairs]
            photo, mask = min_reprojection_loss(warped, target,
                                                sources if cfg.automask else None, valid)  # fmt: skip
            small = F.interpolate(target, size=disp.shape[-2:], mode="bilinear",
                                  align_corners=False)  # fmt: skip
            smooth = smoothness_loss(disp, small)
            total = total + photo + cfg.smoothness * smooth / (2**scale)
            if scale == 0:
                logs = {"photometric": photo.detach(), "masked_share": 1 - mask.float().mean()}
        return total / len(disps), logs

    def eval_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> list[dict[str, float]]:
        x, gt = batch
        depth = F.interpolate(self.model(x).float(), size=gt.shape[-2:], mode="bilinear",
                              align_corners=False)[:, 0].cpu()  # fmt: skip
        m = DepthMetrics(self.cfg.min_depth, self.cfg.max_depth, median_scale=True)
        m.update(depth, gt.cpu())
        return m.rows

    def metrics(self, outputs: list[list[dict[str, float]]]) -> dict[str, float]:
        rows = [r for out in outputs for r in out]
        if not rows:
            raise ValueError("no test frame has valid depth in the range scored")
        res = {k: sum(r[k] for r in rows) / len(rows) for k in (*METRICS, "scale")}
        return {"score": res["delta1"], **res}


def _encoder(cfg: MonodepthConfig, encoder_run: str | Path | None,
             random_init: bool) -> nn.Module:  # fmt: skip
    """The run's backbone (or its untrained twin), or an untrained ResNet-18 without a run;
    records in ``cfg`` what is needed to rebuild it."""
    import copy

    from selfsup.backbones import create_backbone
    from selfsup.config import BackboneConfig

    if encoder_run is None:
        bcfg = BackboneConfig(name="resnet18", small_stem=False)
        cfg.backbone, cfg.encoder, cfg.random_init = asdict(bcfg), None, True
        return create_backbone(bcfg)
    from selfsup.runs import load_run
    from selfsup.tasks.segmentation import dense_backbone

    loaded = load_run(encoder_run, random_init)
    cfg.backbone = asdict(loaded.config.backbone)
    cfg.mean, cfg.std = list(loaded.config.data.mean), list(loaded.config.data.std)
    cfg.encoder, cfg.random_init = str(loaded.file), random_init
    return copy.deepcopy(dense_backbone(loaded.method)).float()


def _test_set(folder: DepthFolder, cfg: MonodepthConfig) -> Dataset[Any]:
    from selfsup.tasks.depth import DepthSet
    from selfsup.transforms.dense import DepthView

    return DepthSet(folder, DepthView(cfg.image_size, cfg.mean, cfg.std))


def _csv_log(path: Path) -> Any:
    """A loop log that appends each record to a CSV (header from the first record)."""
    import csv

    def log(record: dict[str, float]) -> None:
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(list(record))
            w.writerow([f"{float(v):.6g}" for v in record.values()])

    return log


def intrinsics_for(frames: str | Path, intrinsics: str | Path | None) -> torch.Tensor:
    from selfsup.data.sources import DataError

    path = Path(intrinsics) if intrinsics is not None else Path(frames) / "camera-intrinsics.txt"
    if not path.exists():
        raise DataError(
            f"no intrinsics: {path} does not exist. Give --intrinsics FILE (a 3x3 matrix "
            "[[fx, 0, cx], [0, fy, cy], [0, 0, 1]] for the frames' full size)."
        )
    return read_intrinsics(path)


def train_monodepth(
    frames: str | Path,
    out: str | Path,
    cfg: MonodepthConfig | None = None,
    *,
    encoder_run: str | Path | None = None,
    random_init: bool = False,
    intrinsics: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train depth and pose networks on the frames ``cfg.train_frames`` of ``frames`` (no
    depth read) into the run folder ``out`` (``monodepth.json``, ``model.pt``,
    ``metrics.csv``, ``checkpoints/``); when ``cfg.test_frames`` have depth, score them
    (median-scaled) and save ``result.json`` and a picture in ``out/dense``. ``resume``
    continues from ``out/checkpoints``. Returns the result (or the training report)."""
    cfg = cfg or MonodepthConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    k = intrinsics_for(frames, intrinsics)
    train = open_depth(frames, cfg.train_frames, require_depth=False)
    encoder = _encoder(cfg, encoder_run, random_init)
    cfg.frames = str(frames)
    data = Triplets(train, k, cfg)
    (out / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2))
    loop_cfg = LoopConfig(
        epochs=10**6, max_steps=cfg.steps, max_seconds=cfg.max_seconds,
        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=0.0, optimizer="adamw",
        warmup_steps=int(cfg.warmup_fraction * cfg.steps), device=cfg.device,
        precision=cfg.precision, num_workers=cfg.num_workers, seed=cfg.seed,
        progress=progress, desc="depth (self-supervised)", checkpoint_dir=out / "checkpoints",
        checkpoint_every=100, resume=resume,
    )  # fmt: skip
    in_chans = int(cfg.backbone.get("in_chans", 3))
    loop = SupervisedLoop(lambda: MonodepthTask(MonodepthModel(encoder, cfg, in_chans), cfg),
                          loop_cfg, log=_csv_log(out / "metrics.csv"))  # fmt: skip
    report = loop.fit(data)
    model: MonodepthModel = loop.task.model
    torch.save({k_: v.cpu() for k_, v in model.state_dict().items()}, out / MODEL_FILE)
    result: dict[str, Any] = {"steps": report.steps, "train_examples": len(data),
                              "seconds": time.perf_counter() - t0, "stopped": report.stopped}  # fmt: skip
    if cfg.test_frames is not None:
        result |= evaluate_monodepth(out, frames, cfg.test_frames, model=model, cfg=cfg)
        (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def load_monodepth(run: str | Path) -> tuple[MonodepthModel, MonodepthConfig]:
    """A trained run's model (eval mode, CPU) and config."""
    from selfsup.backbones import create_backbone
    from selfsup.config import BackboneConfig
    from selfsup.data.sources import DataError

    run = Path(run)
    if not (run / CONFIG_FILE).exists() or not (run / MODEL_FILE).exists():
        raise DataError(
            f"{run} is not a finished depth run (no {CONFIG_FILE} and {MODEL_FILE}); train "
            "one with selfsup depth train, or resume it with --resume."
        )
    raw = json.loads((run / CONFIG_FILE).read_text())
    cfg = MonodepthConfig(**raw)
    bcfg = BackboneConfig(**cfg.backbone)
    model = MonodepthModel(create_backbone(bcfg), cfg, bcfg.in_chans)
    model.load_state_dict(torch.load(run / MODEL_FILE, map_location="cpu", weights_only=True))
    return model.eval(), cfg


@torch.no_grad()
def evaluate_monodepth(
    run: str | Path,
    frames: str | Path,
    test_frames: str | None,
    *,
    model: MonodepthModel | None = None,
    cfg: MonodepthConfig | None = None,
    save: bool = True,
    n_pictures: int = 4,
) -> dict[str, Any]:
    """Median-scaled metrics of the run's depth on ``test_frames`` of ``frames`` (which need
    depth), beside the median-scaled constant; a picture of a few frames (image, predicted,
    true depth, error) and the result go to ``<run>/dense``."""
    from selfsup.runtime import resolve_device
    from selfsup.viz.dense import depth_figure

    if model is None or cfg is None:
        model, cfg = load_monodepth(run)
    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    test = open_depth(frames, test_frames)
    metrics = DepthMetrics(cfg.min_depth, cfg.max_depth, median_scale=True)
    constant = DepthMetrics(cfg.min_depth, cfg.max_depth, median_scale=True)
    data = _test_set(test, cfg)
    pictures: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    step = max(1, len(test) // max(1, n_pictures))
    for i in range(len(test)):
        x, gt = data[i]
        pred = model(x[None].to(device)).float().cpu()
        pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        metrics.update(pred, gt)
        constant.update(torch.ones_like(gt), gt)
        if i % step == 0 and len(pictures) < n_pictures:
            scale = float(metrics.rows[-1]["scale"]) if metrics.rows else 1.0
            pictures.append((test.load(i).image, pred * scale, gt))
    res = metrics.result()
    result = {k: res[k] for k in METRICS} | {
        "test_frames": res["images"], "scale_mean": res["scale_mean"],
        "scale_std": res["scale_std"], "median_scaled": True,
        "baselines": {"constant_median_scaled": {k: v for k, v in constant.result().items()
                                                 if k in METRICS}},
        "run": str(run), "frames": str(frames), "test": test_frames,
    }  # fmt: skip
    if save:
        # In the depth run's folder and, when the encoder came from a pretraining run, in
        # that run's dense/ too, so its report shows what its features gave.
        folders = [Path(run) / "dense"]
        if cfg.encoder is not None:
            from selfsup.runs import run_folder

            folders.append(run_folder(Path(cfg.encoder)) / "dense")
        name = f"depth-selfsup-{Path(frames).name}-{(test_frames or 'all').replace(':', '-')}"
        name += "-random-init" if cfg.random_init and cfg.encoder is not None else ""
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.json").write_text(json.dumps(result, indent=2))
            depth_figure(pictures, folder / f"{name}.png", cfg.max_depth)
    return result


@torch.no_grad()
def predict_depth(run: str | Path, data: str | Path, out: str | Path) -> list[Path]:
    """Depth of every image in ``data`` (any folder of frames) as a 16-bit PNG in
    millimetres of the network's own scale (monocular: unknown unless trained with known
    poses) and a colourised PNG, into ``out``."""
    import numpy as np
    from PIL import Image

    from selfsup.runtime import resolve_device
    from selfsup.viz.dense import colourise_depth

    model, cfg = load_monodepth(run)
    device = resolve_device(cfg.device)
    model = model.to(device)
    folder = open_depth(data, None, require_depth=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem in folder.stems:
        img = folder.load_image(stem)
        x = to_unit(img)
        x = resize_image(x, short_side_size((int(x.shape[1]), int(x.shape[2])), cfg.image_size))
        pred = model(normalise(x, cfg.mean, cfg.std)[None].to(device)).float().cpu()
        pred = F.interpolate(pred, size=img.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        mm = (pred * 1000).round().clamp(1, 65534).numpy().astype(np.uint16)
        Image.fromarray(mm).save(out / f"{stem}.depth.png")
        lo, hi = float(pred.quantile(0.02)), float(pred.quantile(0.98))
        rgb = colourise_depth(pred, lo, hi).permute(1, 2, 0).numpy()
        Image.fromarray(rgb).save(out / f"{stem}.depth-colour.png")
        written.append(out / f"{stem}.depth.png")
    return written
