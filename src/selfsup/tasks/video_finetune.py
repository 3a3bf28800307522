"""Fine-tuning on labelled clips, under the same k-fold cross-validation over videos as the
frozen protocols of ``selfsup eval video`` (:func:`selfsup.eval.video.fold_splits`).

Fine-tuning is the protocol masked video models are judged by (VideoMAE, Tong et al. 2022,
reports fine-tuning; its frozen features are weak by design), and the one where what
pretraining gives the weights, not only the features, shows. Per fold: the run's backbone
plus a new linear head train on the training videos (each step a clip from a random moment,
one random resized crop and flip for all its frames), with the supervised loop and the fixed
hyper-parameters of :class:`~selfsup.tasks.classification.FinetuneConfig`; the held-out
videos are then classified from the mean probabilities of ``n_clips`` evenly spread clips.
There is no validation split (a few dozen videos): the last epoch is kept.

Clip encoders: an image backbone runs every frame and averages the frame features (temporal
average pooling); a video backbone (``is_video``) embeds the whole clip ``(B, 3, T, S, S)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from selfsup.data.video import VideoFolder, clip_indices, clip_starts
from selfsup.eval.video import balanced_accuracy, frame_batch
from selfsup.tasks.classification import (
    ClassificationTask,
    Classifier,
    FinetuneConfig,
    loop_config,
)
from selfsup.train.supervised import SupervisedLoop
from selfsup.transforms.base import normalize


class ClipClassifier(Classifier):
    """A clip encoder with a linear head: ``(B, T, 3, S, S)`` -> ``(B, classes)``.
    ``video``: the backbone takes whole clips; else frames, mean-pooled over time.
    ``channels`` 1: the backbone takes grey frames (the mean of the RGB channels)."""

    def __init__(self, backbone: nn.Module, embed_dim: int, num_classes: int,
                 video: bool, channels: int) -> None:  # fmt: skip
        super().__init__(backbone, embed_dim, num_classes)
        self.video = video
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:
            x = x.mean(2, keepdim=True)
        b, t = x.shape[:2]
        if self.video:
            feats = self.backbone(x.transpose(1, 2))
        else:
            frames = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
            feats = self.backbone(frames).reshape(b, t, -1).mean(1)
        out: torch.Tensor = self.head(feats)
        return out


class _Clips(Dataset[tuple[torch.Tensor, int]]):
    """Videos ``indices`` of ``folder``, read as clips of ``frames`` frames ``stride`` apart."""

    def __init__(self, folder: VideoFolder, indices: Sequence[int], frames: int,
                 stride: int) -> None:  # fmt: skip
        self.folder, self.indices = folder, list(indices)
        self.frames, self.stride = frames, stride

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, i: int) -> tuple[torch.Tensor, int, int]:
        """(the video's frames, the first frame a clip may start at past the last, its label)."""
        j = self.indices[i]
        video = self.folder.load(j)
        return video, (self.frames - 1) * self.stride + 1, self.folder.labels[j]

    def _clip(self, video: torch.Tensor, start: int) -> list[int]:
        return clip_indices(int(video.shape[0]), start, self.frames, self.stride)


class TrainClips(_Clips):
    """One clip a video per item: a random start, and one random resized crop and
    horizontal flip shared by all its frames (torchvision's v2 transforms draw one set of
    parameters for a stacked tensor). Randomness from torch's generator, which the loop
    seeds (and its loader seeds per worker)."""

    def __init__(self, folder: VideoFolder, indices: Sequence[int], frames: int, stride: int,
                 size: int, mean: Sequence[float], std: Sequence[float]) -> None:  # fmt: skip
        super().__init__(folder, indices, frames, stride)
        self.augment = v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            normalize(mean, std),
        ])  # fmt: skip

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        video, span, label = self._read(i)
        start = clip_starts(int(video.shape[0]), span, "random")[0]
        return self.augment(video[self._clip(video, start)]), label


class EvalClips(_Clips):
    """``n_clips`` evenly spread clips a video, under ``transform`` frame by frame (the
    frozen protocols' clips): items ``((n_clips, T, 3, S, S), label)``."""

    def __init__(self, folder: VideoFolder, indices: Sequence[int], frames: int, stride: int,
                 n_clips: int, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:  # fmt: skip
        super().__init__(folder, indices, frames, stride)
        self.n_clips, self.transform = n_clips, transform

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        video, span, label = self._read(i)
        starts = clip_starts(int(video.shape[0]), span, "uniform", self.n_clips)
        clips = [frame_batch(video, self.transform, self._clip(video, s)) for s in starts]
        return torch.stack(clips), label


class ClipTask:
    """Clip classification for the supervised loop: the image classification task's
    optimiser groups and label smoothing, on clip batches; held-out videos scored by their
    clips' mean probabilities."""

    def __init__(
        self, model: ClipClassifier, cfg: FinetuneConfig, backbone_lr_scale: float
    ) -> None:
        self.model = model
        self.label_smoothing = cfg.label_smoothing
        self.param_groups = ClassificationTask(model, cfg, backbone_lr_scale).param_groups

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        logits = self.model(x).float()
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), {}

    def eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return clip_probs(self.model, batch[0]), batch[1].cpu()

    def metrics(self, outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        pred = torch.cat([p for p, _ in outputs]).argmax(1)
        labels = torch.cat([y for _, y in outputs])
        top1 = float((pred == labels).float().mean() * 100)
        return {"score": top1, "top1": top1, "balanced": balanced_accuracy(pred, labels)}


def clip_probs(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """``(B, n_clips, T, 3, S, S)`` -> ``(B, classes)`` on the CPU: the mean over each
    video's clips of the softmax probabilities."""
    b, c = clips.shape[:2]
    logits: torch.Tensor = model(clips.flatten(0, 1)).float()
    return logits.softmax(1).reshape(b, c, -1).mean(1).cpu()


def finetune_fold(
    backbone: nn.Module,
    embed_dim: int,
    num_classes: int,
    video: bool,
    channels: int,
    train: TrainClips,
    test: EvalClips,
    cfg: FinetuneConfig,
    backbone_lr_scale: float,
    progress: bool | None = None,
) -> tuple[float, float]:
    """Fine-tune a copy of ``backbone`` with a new head on ``train``; (top-1, balanced
    accuracy) in percent on ``test``."""

    def build() -> ClipTask:  # called by the loop once seeded
        model = ClipClassifier(copy.deepcopy(backbone), embed_dim, num_classes, video, channels)
        if not video:
            model = model.to(memory_format=torch.channels_last)
        return ClipTask(model, cfg, backbone_lr_scale)

    lc = loop_config(cfg, progress)
    lc.desc = "fine-tune clips"
    lc.eval_batch_size = 16  # videos, each n_clips whole clips: keep batches of frames small
    loop = SupervisedLoop(build, lc)
    loop.fit(train, None)
    metrics = loop.evaluate(loop.eval_loader(test))
    return metrics["top1"], metrics["balanced"]
