"""The one pass over the data: per image, the SSL embedding (the run's evaluation transform)
and the fingerprint of the decoded pixels plus a content hash, each file decoded once."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from selfsup.curation.fingerprints import empty_fingerprint, fingerprint
from selfsup.data import ImageSource
from selfsup.data.decode import to_tensor
from selfsup.data.sources import DataError, FolderSource, SubsetSource
from selfsup.embeddings import FeatureModel
from selfsup.eval.features import stream_features
from selfsup.transforms import eval_transform


def file_of(source: ImageSource, i: int) -> tuple[Path | None, str]:
    """(file path or None, path shown in reports: relative to the folder when there is one)."""
    if isinstance(source, FolderSource):
        return source.path(i), source.files[i]
    if isinstance(source, SubsetSource):
        return file_of(source.base, source.indices[i])
    return None, source.describe(i)


def root_of(source: ImageSource) -> Path | None:
    """The image folder behind ``source``; None for named sets."""
    if isinstance(source, FolderSource):
        return source.root
    if isinstance(source, SubsetSource):
        return root_of(source.base)
    return None


class CurationDataset(Dataset[tuple[torch.Tensor, int, bool, dict[str, torch.Tensor]]]):
    """``(model input, label, ok, fingerprint)`` per image, decoding each file once."""

    def __init__(self, source: ImageSource, image_size: int, mean: Sequence[float],
                 std: Sequence[float], channels: int) -> None:  # fmt: skip
        self.source = source
        self.transform = eval_transform(image_size, mean, std)
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool, dict[str, torch.Tensor]]:
        labels = self.source.labels
        label = labels[i] if labels is not None else -1
        path, _ = file_of(self.source, i)
        try:
            raw = to_tensor(self.source.load(i), self.channels, self.source.describe(i))
            x = self.transform(raw)
            fp = fingerprint(raw)
            data = path.read_bytes() if path is not None else raw.numpy().tobytes()
            fp["sha1"] = torch.frombuffer(bytearray(hashlib.sha1(data).digest()), dtype=torch.uint8)
            fp["bytes"] = torch.tensor(len(data), dtype=torch.int64)
            return x, label, True, fp
        except Exception:  # unreadable: listed in the report, never flagged or moved
            blank = torch.zeros(self.channels, self.image_size, self.image_size)
            return blank, label, False, empty_fingerprint()


@dataclass
class Scan:
    """Per readable image: where it is, its embedding and its fingerprint."""

    index: list[int]  # positions in the source
    paths: list[str]
    labels: list[int]
    features: torch.Tensor  # (N, D)
    fp: dict[str, torch.Tensor]  # stacked fingerprints


def scan_source(source: ImageSource, fm: FeatureModel, device: torch.device, precision: str,
                batch_size: int, workers: int, progress: bool) -> Scan:  # fmt: skip
    """Embed and fingerprint every image of ``source``; unreadable ones are left out."""
    ds = CurationDataset(source, fm.image_size, fm.mean, fm.std, fm.channels)
    index: list[int] = []
    feats: list[torch.Tensor] = []
    labels: list[int] = []
    fps: dict[str, list[torch.Tensor]] = {}
    for b in stream_features(fm.net.to(device), ds, batch_size, device, precision,
                             num_workers=workers, progress=progress,
                             desc=f"curate {source.name}"):  # fmt: skip
        index += b.index.tolist()
        feats.append(b.features)
        labels += b.labels.tolist()
        for key, v in b.extra.items():
            fps.setdefault(key, []).append(v)
    if not index:
        raise DataError(
            f"none of the {len(source)} images of {source.name} could be read; check the "
            "folder with `selfsup data check`."
        )
    paths = [file_of(source, i)[1] for i in index]
    return Scan(index, paths, labels, torch.cat(feats),
                {k: torch.cat(v) for k, v in fps.items()})  # fmt: skip
