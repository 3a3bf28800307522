"""``selfsup embed``: streamed Parquet / .npy embeddings that match ``selfsup.extract``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CIFAR10, make_images
from viz_runs import cifar_subset

import selfsup
from selfsup.cli import main

FP32 = {"device": "cpu", "precision": "fp32", "workers": 0}


@pytest.fixture(autouse=True)
def _one_thread(_threads: None) -> None:
    """Tiny tensors: a second thread only adds synchronisation, which costs up to 10x on a
    busy two-core machine (after conftest's own setting)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("embed")
    data = cifar_subset(CIFAR10, tmp / "images", classes=2, per_class=10)  # real images
    run = tmp / "run"
    torch.set_num_threads(1)
    selfsup.pretrain("simclr", data=str(data), out=run, steps=1, batch_size=8, image_size=16,
                     workers=0, progress=False, threads=1,
                     overrides=["monitor.knn=false", "method.proj_hidden_dim=32"])  # fmt: skip
    return run, data


def test_parquet_is_written_batch_by_batch_and_matches_extract(
    run_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = run_and_data
    out = tmp_path / "emb.parquet"
    res = selfsup.embed(run, data, out, batch_size=7, **FP32)
    assert (res.rows, res.images, res.skipped, res.dim) == (20, 20, 0, 512)
    meta = pq.ParquetFile(out).metadata
    assert meta.num_rows == 20 and meta.num_row_groups == math.ceil(20 / 7)  # one per batch
    schema = pq.read_schema(out)
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[512]"
    assert json.loads(schema.metadata[b"selfsup"])["classes"] == sorted(
        p.name for p in data.iterdir()
    )
    emb = selfsup.read_embeddings(out)
    feats, labels = selfsup.extract(run, str(data), cache=False, device="cpu", precision="fp32")
    np.testing.assert_allclose(emb.vectors, feats.numpy(), rtol=1e-4, atol=1e-5)
    classes = sorted(p.name for p in data.iterdir())
    assert emb.labels == labels.tolist() == [0] * 10 + [1] * 10
    first = min((data / classes[0]).iterdir())
    assert emb.paths[0] == str(first) and emb.classes == classes
    table = pq.read_table(out)
    assert table.column("class").to_pylist()[-1] == classes[1]
    assert table.column("index").to_pylist() == list(range(20))
    assert not list(tmp_path.glob(".*partial"))


def test_npy_with_sidecars_l2_normalised_and_unreadable_files_skipped(
    run_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = run_and_data
    folder = tmp_path / "data"
    make_images(folder, classes=2, per_class=4, size=20, seed=3)
    (folder / "class1" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "e.npy"
    with pytest.warns(UserWarning, match="1 unreadable"):
        res = selfsup.embed(run, folder, out, batch_size=3, l2_normalize=True, **FP32)
    assert (res.rows, res.images, res.skipped) == (8, 9, 1)
    arr = np.load(out)
    assert arr.shape == (8, 512) and arr.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, rtol=1e-5)
    paths = (tmp_path / "e.paths.txt").read_text().splitlines()
    assert len(paths) == 8 and not any("broken" in p for p in paths)
    labels = (tmp_path / "e.labels.txt").read_text().splitlines()
    assert labels[0] == "0\tclass0" and labels[-1] == "1\tclass1" and len(labels) == 8
    emb = selfsup.read_embeddings(out)
    assert emb.labels == [0] * 4 + [1] * 4 and emb.classes == ["class0", "class1"]
    np.testing.assert_allclose(emb.vectors, arr)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_embed_and_its_errors(
    run_and_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = run_and_data
    out = tmp_path / "cli.parquet"
    common = ["--device", "cpu", "--precision", "fp32", "--workers", "0", "--no-progress"]
    rc = main(["embed", "--checkpoint", str(run), "--data", str(data), "--out", str(out),
               "--limit", "6", "--json", *common])  # fmt: skip
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 6 and info["dim"] == 512 and pq.read_metadata(out).num_rows == 6
    for args, message in [
        (["--out", str(tmp_path / "x.csv")], "must end in .parquet"),
        (["--out", str(tmp_path / "x.npy"), "--precision", "fp8"], "precision 'fp8'"),
        (["--out", str(tmp_path / "x.npy"), "--batch-size", "0"], "--batch-size"),
    ]:
        rc = main(["embed", "--checkpoint", str(run), "--data", str(data), *args])
        assert rc == 2 and message in capsys.readouterr().err
    rc = main(["embed", "--checkpoint", str(run), "--data", str(tmp_path / "nowhere"),
               "--out", str(tmp_path / "y.npy"), *common])  # fmt: skip
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["embed", "--checkpoint", str(tmp_path / "norun"), "--data", str(data)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "y.npy").exists()
