"""A depth probe for any run: frozen backbone, a head trained on depth maps, metrics as the
field reports them (:mod:`selfsup.eval.depth`).

- **linear** (DINOv2, Oquab et al., 2023, Sec. 7.5 "lin. 1"): BatchNorm + 1x1 convolution on
  the last dense map of the frozen backbone, upsampled to the image.
- **decoder**: a light FPN over every level of the frozen backbone (a small stand-in for
  DPT's reassemble-and-fuse decoder, Ranftl et al., 2021).

Depth is ``max_depth * sigmoid(output)`` (DINOv2's and BTS's bounded output), trained with the
scale-invariant log loss (:func:`selfsup.losses.depth.silog_loss`) at the depth map's full
resolution over valid pixels. The same code scores two trivial baselines: the training set's
median depth everywhere, and that constant median-scaled per image. One task on the one
supervised loop; the random-init floor is the same network untrained.
"""

from __future__ import annotations

import copy
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

from selfsup.data.depth import DepthFolder, open_depth
from selfsup.eval.depth import METRICS, DepthMetrics
from selfsup.heads.dense import DenseModel, FPNDecoder, LinearSegHead
from selfsup.losses.depth import silog_loss
from selfsup.train.supervised import LoopConfig, SupervisedLoop
from selfsup.transforms.dense import DepthView

PROTOCOLS = ("linear", "decoder")


@dataclass
class DepthConfig:
    """Fixed hyper-parameters of the depth probe (the same for SSL and random init)."""

    protocol: str = "linear"
    # Shorter side the frames are resized to for the model (7-Scenes: 240, its own size);
    # depth is predicted and scored at the depth map's full resolution.
    image_size: int = 240
    max_steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    # Depth range scored (and the output's bound), in metres: indoor RGB-D (Kinect) reads
    # 0.5-4.5 m; outdoor (KITTI) uses 1e-3-80.
    min_depth: float = 0.1
    max_depth: float = 10.0
    decoder_width: int = 128
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = -1


@dataclass
class DepthResult:
    """Test metrics (``abs_rel`` ... ``delta3``; see :mod:`selfsup.eval.depth`) of the probe,
    and the same metrics of the trivial baselines under ``baselines``."""

    protocol: str
    abs_rel: float
    sq_rel: float
    rmse: float
    rmse_log: float
    delta1: float
    delta2: float
    delta3: float
    train_frames: int
    test_frames: int
    steps: int
    seconds: float
    image_size: int
    min_depth: float
    max_depth: float
    random_init: bool = False
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DepthSet(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Frames through :class:`DepthView`: ``(image (3, h, w), depth (H, W) metres)``."""

    def __init__(self, folder: DepthFolder, view: DepthView, channels: int = 3) -> None:
        self.folder, self.view, self.channels = folder, view, channels

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.folder.load(i)
        x, d = self.view(s.image, s.depth)
        if self.channels == 1:
            x = x.mean(0, keepdim=True)
        return x, d


class DepthHead(nn.Module):
    """A dense head with one output channel, bounded: ``max_depth * sigmoid(.)``."""

    def __init__(self, head: nn.Module, max_depth: float) -> None:
        super().__init__()
        self.head, self.max_depth = head, max_depth

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.max_depth * torch.sigmoid(self.head(feats).float())


def build_depth_model(backbone: nn.Module, cfg: DepthConfig) -> DenseModel:
    """The frozen backbone under a linear or FPN depth head."""
    specs = backbone.dense_specs()  # type: ignore[operator]
    if cfg.protocol == "linear":
        head = DepthHead(LinearSegHead([specs[-1].channels], 1), cfg.max_depth)
        return DenseModel(backbone, head, freeze_backbone=True, levels=[len(specs) - 1])
    if cfg.protocol == "decoder":
        head = DepthHead(FPNDecoder(specs, 1, width=cfg.decoder_width), cfg.max_depth)
        return DenseModel(backbone, head, freeze_backbone=True)
    raise ValueError(f"protocol {cfg.protocol!r} is not one of {', '.join(PROTOCOLS)}")


class DepthTask:
    """SILog on valid pixels of training frames; per-image metrics on test frames;
    ``score`` = delta1."""

    def __init__(self, model: DenseModel, cfg: DepthConfig) -> None:
        self.model, self.cfg = model, cfg

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.head.parameters() if p.requires_grad]}]

    def train_mode(self) -> None:
        self.model.train()

    def predict(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, C, h, w) -> depth (B, H, W) in metres at ``size``."""
        d = self.model(x).float()
        return F.interpolate(d, size=size, mode="bilinear", align_corners=False)[:, 0]

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        x, depth = batch
        pred = self.predict(x, (int(depth.shape[-2]), int(depth.shape[-1])))
        valid = (depth > self.cfg.min_depth) & (depth < self.cfg.max_depth)
        return silog_loss(pred, depth, valid), {}

    def eval_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> list[dict[str, float]]:
        x, depth = batch
        pred = self.predict(x, (int(depth.shape[-2]), int(depth.shape[-1]))).cpu()
        m = DepthMetrics(self.cfg.min_depth, self.cfg.max_depth)
        m.update(pred, depth.cpu())
        return m.rows

    def metrics(self, outputs: list[list[dict[str, float]]]) -> dict[str, float]:
        rows = [r for out in outputs for r in out]
        if not rows:
            raise ValueError("no test frame has valid depth in the range scored")
        res = {k: sum(r[k] for r in rows) / len(rows) for k in METRICS}
        return {"score": res["delta1"], **res}


def loop_config(cfg: DepthConfig, progress: bool | None) -> LoopConfig:
    return LoopConfig(
        epochs=10**6, max_steps=cfg.max_steps, batch_size=cfg.batch_size, eval_batch_size=1,
        lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer="adamw",
        warmup_steps=int(cfg.warmup_fraction * cfg.max_steps), device=cfg.device,
        precision=cfg.precision, num_workers=cfg.num_workers, seed=cfg.seed,
        progress=progress, desc=f"depth ({cfg.protocol})",
    )  # fmt: skip


def constant_baselines(train: DepthFolder, test: DepthFolder, cfg: DepthConfig,
                       limit: int = 200) -> dict[str, dict[str, float]]:  # fmt: skip
    """The training set's median valid depth (over up to ``limit`` frames spread through it)
    predicted everywhere, as it is and median-scaled per image."""
    step = max(1, len(train) // limit)
    vals = []
    for i in range(0, len(train), step):
        d = train.load(i).depth
        vals.append(d[(d > cfg.min_depth) & (d < cfg.max_depth)])
    median = float(torch.cat(vals).median())
    plain = DepthMetrics(cfg.min_depth, cfg.max_depth)
    scaled = DepthMetrics(cfg.min_depth, cfg.max_depth, median_scale=True)
    for i in range(len(test)):
        d = test.load(i).depth
        const = torch.full_like(d, median)
        plain.update(const, d)
        scaled.update(const, d)
    keep = (*METRICS, "images")
    return {
        "train_median": {"depth": median},
        "constant": {k: v for k, v in plain.result().items() if k in keep},
        "constant_median_scaled": {k: v for k, v in scaled.result().items() if k in keep},
    }


def train_depth_probe(
    backbone: nn.Module,
    train: DepthFolder,
    test: DepthFolder,
    mean: list[float],
    std: list[float],
    channels: int,
    cfg: DepthConfig,
    random_init: bool = False,
    progress: bool | None = None,
) -> tuple[DenseModel, DepthResult]:
    """Train the probe on ``train`` and score it once on ``test`` (with the baselines)."""
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"protocol {cfg.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    t0 = time.perf_counter()
    loop = SupervisedLoop(lambda: DepthTask(build_depth_model(backbone, cfg), cfg),
                          loop_config(cfg, progress))  # fmt: skip
    run = loop.fit(DepthSet(train, DepthView(cfg.image_size, mean, std, hflip=0.5), channels))
    m = loop.evaluate(DepthSet(test, DepthView(cfg.image_size, mean, std), channels))
    result = DepthResult(
        protocol=cfg.protocol, **{k: m[k] for k in METRICS}, train_frames=len(train),
        test_frames=len(test), steps=run.steps, seconds=time.perf_counter() - t0,
        image_size=cfg.image_size, min_depth=cfg.min_depth, max_depth=cfg.max_depth,
        random_init=random_init, baselines=constant_baselines(train, test, cfg),
        settings=asdict(cfg),
    )  # fmt: skip
    model: DenseModel = loop.task.model
    return model, result


def evaluate_depth(
    run: str | Path,
    data: str | Path | None = None,
    cfg: DepthConfig | None = None,
    *,
    train_frames: str | None = None,
    test_frames: str | None = None,
    train: str | Path | None = None,
    test: str | Path | None = None,
    scale: float | None = None,
    random_init: bool = False,
    progress: bool | None = None,
    save: str | Path | None = None,
) -> DepthResult:
    """The depth probe of a run: frames ``train_frames`` / ``test_frames`` (``"0:800"``) of one
    folder ``data`` (a split by time), or two folders ``train`` / ``test``. ``scale``:
    metres per stored depth unit (default: mm for 16-bit PNG, metres for float files).
    ``save``: a folder for ``<name>.json`` (the result) and ``<name>.png`` (image, predicted
    and true depth, error for four test frames); the run's report shows both."""
    from selfsup.config import ConfigError
    from selfsup.runs import load_run
    from selfsup.tasks.segmentation import dense_backbone

    cfg = cfg or DepthConfig()
    if data is not None:
        if train_frames is None or test_frames is None:
            raise ConfigError("with one folder, give train_frames and test_frames (e.g. 0:800)")
        train_folder = open_depth(data, train_frames, scale)
        test_folder = open_depth(data, test_frames, scale)
        overlap = set(train_folder.stems) & set(test_folder.stems)
        if overlap:
            raise ConfigError(
                f"train frames {train_frames} and test frames {test_frames} share "
                f"{len(overlap)} frames; split by time without overlap"
            )
    elif train is not None and test is not None:
        train_folder, test_folder = open_depth(train, None, scale), open_depth(test, None, scale)
    else:
        raise ConfigError("give data with train_frames/test_frames, or train and test folders")
    loaded = load_run(run, random_init)
    backbone = copy.deepcopy(dense_backbone(loaded.method)).float()
    d = loaded.config.data
    model, result = train_depth_probe(backbone, train_folder, test_folder, list(d.mean),
                                      list(d.std), loaded.config.backbone.in_chans, cfg,
                                      random_init, progress)  # fmt: skip
    result.settings |= {"checkpoint": str(loaded.file), "data": None if data is None else
                        str(data), "train_frames": train_frames, "test_frames": test_frames,
                        "train": None if train is None else str(train),
                        "test": None if test is None else str(test), "scale": scale}  # fmt: skip
    if any(math.isnan(getattr(result, k)) for k in METRICS):
        raise ValueError("depth metrics are NaN: the training diverged")
    if save is not None:
        split = Path(data if data is not None else str(test)).name
        frames = (test_frames or "all").replace(":", "-")
        name = f"depth-{cfg.protocol}-{split}-{frames}-seed{cfg.seed}"
        name += "-random-init" if random_init else ""
        folder = Path(save)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(result.as_dict(), indent=2))
        from selfsup.viz.dense import depth_figure  # matplotlib: only when saving

        view = DepthView(cfg.image_size, list(d.mean), list(d.std))
        depth_figure(predict_frames(model, test_folder, view), folder / f"{name}.png",
                     cfg.max_depth)  # fmt: skip
    return result


@torch.no_grad()
def predict_frames(model: nn.Module, folder: DepthFolder, view: DepthView, n: int = 4
                   ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """(image uint8, predicted depth, true depth) of ``n`` frames spread over ``folder``."""
    device = next(model.parameters()).device
    model.eval()
    rows = []
    for i in range(0, len(folder), max(1, len(folder) // n))[:n]:
        s = folder.load(i)
        x, gt = view(s.image, s.depth)
        pred = model(x[None].to(device)).float()
        pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        rows.append((s.image, pred[0, 0].cpu(), gt))
    return rows
