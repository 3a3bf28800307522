"""Sharded, streamed data: writing shards from a folder, reading back the same pixels, every
sample once an epoch over ranks and workers, exact resume mid-epoch, and bad samples."""

from __future__ import annotations

import json
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_images
from PIL import Image

import selfsup
from selfsup.cli import main
from selfsup.data import DataError, collate_canvas, scan_folder
from selfsup.data.decode import open_file, to_tensor
from selfsup.data.shards import (
    SAMPLE_LOG_ENV,
    ShardLoader,
    ShardStream,
    _samples,
    decode_bytes,
    index_url,
    open_shards,
    parse_size,
    write_shards,
)


def _folder(root: Path, bad: bool = False) -> Path:
    """24 labelled images: PNGs, a JPEG and a 16-bit PNG (and a corrupt PNG with ``bad``)."""
    make_images(root, classes=2, per_class=11)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "class0/j.jpg")
    deep = rng.integers(0, 65535, (20, 20), dtype=np.uint16)
    Image.fromarray(deep).save(root / "class1/deep.png")
    if bad:
        (root / "class1/zz_bad.png").write_bytes(b"\x89PNG not really")
    return root


def _pattern(folder: Path) -> str:
    """``folder/shard-{000000..<last>}.tar`` for the shards written into ``folder``."""
    last = len(json.loads((folder / "index.json").read_text())["shards"]) - 1
    return f"{folder}/shard-{{000000..{last:06d}}}.tar"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("shards")
    write_shards(_folder(base / "imgs"), base / "sh", shard_size=10_000, progress=False,
                 min_shards=5)  # fmt: skip
    return base


def test_shard_writes_labels_index_and_the_same_pixels(shards: Path) -> None:
    index = json.loads((shards / "sh/index.json").read_text())
    folder = scan_folder(shards / "imgs")
    assert index["samples"] == 24 and index["labelled"] and index["classes"] == folder.classes
    assert len(index["shards"]) > 2 and sum(s["samples"] for s in index["shards"]) == 24
    src = open_shards(_pattern(shards / "sh"))
    assert len(src) == 24 and src.counts == [s["samples"] for s in index["shards"]]
    seen = 0
    for url in src.urls:
        for sample in _samples(url):
            i = int(sample["__key__"])
            assert sample["path"].decode() == folder.files[i]
            assert folder.labels is not None and int(sample["cls"]) == folder.labels[i]
            ext = Path(folder.files[i]).suffix[1:]
            x = decode_bytes(sample[ext], ext, "here")
            y = to_tensor(open_file(folder.path(i)))
            assert x.dtype == y.dtype and torch.equal(x, y)
            seen += 1
    assert seen == 24
    assert any(to_tensor(open_file(folder.path(i))).dtype == torch.float32 for i in range(24))


def test_shard_cli_check_pipe_and_sizes(shards: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert parse_size("500MB") == 500_000_000 and parse_size("64kB") == 64_000
    assert main(["data", "shard", str(shards / "imgs"), "--out", str(tmp_path / "s"),
                 "--shard-size", "1GB", "--min-shards", "1"]) == 0  # fmt: skip
    assert "24 images in 1 shards" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "s"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 24
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(shards / "imgs", tmp_path / "s")
    # A pipe: command finds its index the same way (its shard name replaced).
    cmd = f"pipe:cat {tmp_path / 's'}/shard-{{000000..000000}}.tar"
    assert index_url(f"pipe:cat {tmp_path}/s/shard-000000.tar").endswith("/s/index.json")
    assert open_shards(cmd).counts == [24]
    with pytest.raises(DataError, match="does not exist"):
        open_shards(str(tmp_path / "s/shard-{000000..000003}.tar"))


def _keys(folder: Path) -> list[list[int]]:
    """The folder numbers (``__key__``) of the samples in each shard, in the index's order."""
    index = json.loads((folder / "index.json").read_text())
    return [[int(x["__key__"]) for x in _samples(str(folder / s["name"]))] for s in index["shards"]]


def test_shards_are_even_and_shuffled_unless_asked(shards: Path, tmp_path: Path) -> None:
    folder = scan_folder(shards / "imgs")
    assert folder.labels is not None
    # The default: at least --min-shards shards (here one per image), in a seeded order.
    index = write_shards(shards / "imgs", tmp_path / "a", progress=False)
    assert [s["samples"] for s in index["shards"]] == [1] * 24
    # Four even shards, each a mix of the two classes (the folder is sorted by class).
    write_shards(shards / "imgs", tmp_path / "b", progress=False, min_shards=4)
    keys = _keys(tmp_path / "b")
    assert [len(k) for k in keys] == [6, 6, 6, 6]
    written = [i for k in keys for i in k]
    assert sorted(written) == list(range(24)) and written != list(range(24))
    assert all(len({folder.labels[i] for i in k}) == 2 for k in keys)
    # The same seed writes the same shards; --no-shuffle keeps the folder's order.
    write_shards(shards / "imgs", tmp_path / "c", progress=False, min_shards=4)
    assert _keys(tmp_path / "c") == keys
    for name in ("shard-000000.tar", "shard-000003.tar"):  # byte for byte, no PAX headers
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
        with tarfile.open(tmp_path / "b" / name) as tar:
            assert all(m.pax_headers == {} and m.mtime == 0 for m in tar.getmembers())
    write_shards(shards / "imgs", tmp_path / "d", progress=False, min_shards=4, shuffle_seed=None)
    assert _keys(tmp_path / "d") == [list(range(i, i + 6)) for i in range(0, 24, 6)]
    assert all(len({folder.labels[i] for i in k}) == 1 for k in _keys(tmp_path / "d"))


def _epoch(src: Any, rank: int, world: int, start: int = 0, workers: int = 2, epoch: int = 1,
           batch: int = 2, seed: int = 3, buffer: int = 5, **kw: Any) -> list[int]:  # fmt: skip
    """The sample numbers one rank's loader yields in ``epoch``, from ``start`` on."""
    stream = ShardStream(src, batch, batch * world, seed, rank, world, buffer=buffer, **kw)
    loader = ShardLoader(stream, batch, workers, collate_canvas, False)
    stream.epoch, stream.start = epoch, start
    return [s for _, samples in loader.loader for s in samples]


def test_an_epoch_on_2_ranks_x_2_workers_is_every_sample_once_and_resumes_exactly(
    shards: Path,
) -> None:
    src = open_shards(str(shards / "sh"))
    full = [_epoch(src, r, 2) for r in range(2)]
    assert sorted(full[0] + full[1]) == list(range(24))
    # Interrupted after 3 steps (12 samples over both ranks): the rest is the same stream.
    assert [_epoch(src, r, 2, start=12) for r in range(2)] == [f[6:] for f in full]
    assert _epoch(src, 0, 2, epoch=2) != full[0]  # another epoch, another order
    # Padding (drop_last=false) and repeat wrap around the same stream.
    padded = _epoch(src, 0, 1, workers=1, repeat=2)
    assert Counter(padded) == Counter({i: 2 for i in range(24)})


TINY = dict(
    batch_size=8, image_size=16, progress=False, workers=2, epochs=2, precision="fp32", seed=0,
    overrides=["monitor.knn=false", "train.log_every=1", "method.proj_hidden_dim=32",
               "backbone.name=timm:vit_tiny_patch16_224",
               "backbone.kwargs={patch_size: 4, depth: 1, num_heads: 3}", "data.augment=device"],
)  # fmt: skip


def _log(path: Path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        epoch, sample = line.split("\t")
        out.setdefault(int(epoch), []).append(int(sample))
    return out


def test_pretrain_interrupted_and_resumed_sees_every_sample_once(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _pattern(shards / "sh")
    monkeypatch.setenv(SAMPLE_LOG_ENV, str(tmp_path / "b.log"))
    part = selfsup.pretrain("simclr", data=data, out=tmp_path / "b", stop_at_step=2, **TINY)  # type: ignore[arg-type]
    assert part.state.epoch_pos == 16
    done = selfsup.pretrain(resume=tmp_path / "b", progress=False)
    assert done.state.step == 6 and done.state.finished
    b = _log(tmp_path / "b.log")
    # What an uninterrupted run reads (the stream alone, without training).
    src = open_shards(data)
    a = {e: _epoch(src, 0, 1, epoch=e, batch=8, seed=0, buffer=1000) for e in range(2)}
    assert sorted(a[0]) == sorted(a[1]) == list(range(24)) and a[0] != a[1]
    assert b == a  # the same samples in the same order: the resume is exact


def test_bad_samples_are_skipped_counted_and_named(tmp_path: Path) -> None:
    write_shards(_folder(tmp_path / "imgs", bad=True), tmp_path / "sh", progress=False)
    src = open_shards(str(tmp_path / "sh"))
    stream = ShardStream(src, 5, 5, seed=0)
    items = list(stream)
    skipped = [s for item in items for s in item[2]]
    assert len(items) == 25 and len(skipped) == 1 and "zz_bad.png" in skipped[0]
    assert re.search(r"shard-\d{6}\.tar", skipped[0])
    with pytest.raises(DataError, match=r"zz_bad\.png"):
        list(ShardStream(src, 5, 5, seed=0, bad_files="fail"))
    # The per-image (CPU) augmentation path trains on shards too and lists the bad sample.
    out = tmp_path / "run"
    cpu = {**TINY, "overrides": [*TINY["overrides"][:-1], "data.augment=cpu"],  # type: ignore[index]
           "workers": 0, "epochs": 1, "batch_size": 5}  # fmt: skip
    selfsup.pretrain("simclr", data=str(tmp_path / "sh"), out=out, **cpu)  # type: ignore[arg-type]
    assert "zz_bad.png" in (out / "skipped.txt").read_text()
