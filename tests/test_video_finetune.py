"""Fine-tuning on labelled clips (selfsup.tasks.video_finetune): the clip classifier's
pooling against a hand computation, clips that keep one crop for all frames, the mean of
clip probabilities, and a fold that learns what separates two kinds of synthetic video."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from selfsup.eval.video import fold_splits
from selfsup.tasks.classification import FinetuneConfig
from selfsup.tasks.video_finetune import (
    ClipClassifier,
    EvalClips,
    TrainClips,
    clip_probs,
    finetune_fold,
)
from selfsup.transforms import eval_transform


@dataclass
class FakeFolder:
    """What the clip datasets read of a VideoFolder: ``load(i)`` and ``labels``."""

    videos: list[torch.Tensor]
    labels: list[int] = field(default_factory=list)

    def load(self, i: int) -> torch.Tensor:
        return self.videos[i]


class Flat(nn.Module):
    """(B, 3, 4, 4) -> (B, 48): a backbone whose features are its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_clip_classifier_mean_pools_frames_or_embeds_whole_clips() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4, 4)  # (B, T, 3, S, S)
    frames = ClipClassifier(Flat(), 48, 3, video=False, channels=3)
    want = frames.head(x.flatten(2).mean(1))  # the head of the frames' mean feature
    torch.testing.assert_close(frames(x), want)
    grey = ClipClassifier(nn.Flatten(), 16, 3, video=False, channels=1)
    want = grey.head(x.mean(2).flatten(2).mean(1))
    torch.testing.assert_close(grey(x), want)
    seen: list[tuple[int, ...]] = []

    class Video(nn.Module):
        def forward(self, clip: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(clip.shape))
            return clip.flatten(1)[:, :7]

    clips = ClipClassifier(Video(), 7, 3, video=True, channels=3)
    assert clips(x).shape == (2, 3) and seen == [(2, 3, 5, 4, 4)]  # (B, 3, T, S, S)


def test_train_clips_take_stride_apart_frames_under_one_crop() -> None:
    # Frame t of the video is filled with t (a gradient across x makes crops visible).
    t, h = 40, 24
    ramp = torch.linspace(0, 100, h).expand(h, h)
    video = torch.stack([(ramp + 3 * i).clamp(0, 255).to(torch.uint8).expand(3, h, h)
                         for i in range(t)])  # fmt: skip
    ds = TrainClips(FakeFolder([video], [0]), [0], frames=4, stride=3, size=8,
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # fmt: skip
    for seed in range(5):
        torch.manual_seed(seed)
        clip, label = ds[0]
        assert clip.shape == (4, 3, 8, 8) and label == 0
        # One crop and flip for all frames: consecutive frames differ by exactly 3 * stride
        # grey levels everywhere (frames i and i + 3 of the ramp), so the crop is shared.
        diffs = (clip[1:] - clip[:-1]) * 255
        torch.testing.assert_close(diffs, torch.full_like(diffs, 9.0), atol=0.02, rtol=0)


def test_clip_probs_average_the_clips_of_each_video() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [1.0, 0.0]])

    class Table(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[x[:, 0, 0, 0, 0].long()]

    clips = torch.arange(4.0).reshape(2, 2, 1, 1, 1, 1).expand(2, 2, 1, 3, 1, 1)
    p = clip_probs(Table(), clips)
    s = logits.softmax(1)
    torch.testing.assert_close(p, torch.stack([(s[0] + s[1]) / 2, (s[2] + s[3]) / 2]))


def test_a_fold_learns_what_separates_two_kinds_of_video() -> None:
    # Class 0: dark videos, class 1: bright ones, with noise; 8 a class, 4 folds.
    g = torch.Generator().manual_seed(0)
    videos, labels = [], []
    for i in range(16):
        level = 60 if i % 2 == 0 else 190
        noise = torch.randint(-40, 41, (12, 3, 16, 16), generator=g)
        videos.append((level + noise).clamp(0, 255).to(torch.uint8))
        labels.append(i % 2)
    folder = FakeFolder(videos, labels)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    cfg = FinetuneConfig(epochs=30, batch_size=6, lr=0.1, device="cpu", precision="fp32",
                         num_workers=0)  # fmt: skip
    tops = []
    for tr, te in fold_splits(torch.tensor(labels), folds=4, seed=0):
        assert sorted(tr + te) == list(range(16)) and not set(tr) & set(te)
        train = TrainClips(folder, tr, frames=4, stride=2, size=12, mean=mean, std=std)
        test = EvalClips(folder, te, frames=4, stride=2, n_clips=2,
                         transform=eval_transform(12, mean, std))  # fmt: skip
        top1, balanced = finetune_fold(backbone, 8, 2, False, 3, train, test, cfg, 1.0, False)
        assert top1 == balanced  # two test videos a class
        tops.append(top1)
    assert tops == [100.0] * 4, tops
    # The backbone handed in is copied, never trained in place.
    assert all(p.grad is None for p in backbone.parameters())
