"""A zoo of odd and broken image files: every supported kind loads with the right shape and
dtype; pretraining and evaluation run through the broken ones under 'skip' and stop naming
the file under 'fail'."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import selfsup
from selfsup.data import DataError, scan_folder
from selfsup.data.decode import open_file, to_tensor

RNG = np.random.default_rng(0)


def _rgb(h: int = 20, w: int = 24) -> np.ndarray:
    return RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)


def build_good(folder: Path) -> dict[str, tuple[tuple[int, int, int], torch.dtype]]:
    """Write one file of each supported kind; return name -> (shape at 3 channels, dtype)."""
    folder.mkdir(parents=True, exist_ok=True)
    u8, f32 = torch.uint8, torch.float32
    Image.fromarray(_rgb()).save(folder / "rgb.jpg")
    Image.fromarray(_rgb()[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([_rgb(), np.full((20, 24), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(_rgb()).convert("P").save(folder / "palette.png")
    Image.fromarray(_rgb()).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(_rgb()[..., 0] > 128).save(folder / "onebit.png")
    Image.fromarray(_rgb()).save(folder / "photo.webp")
    Image.fromarray(_rgb(2, 3)).save(folder / "tiny.png")  # smaller than any crop
    deep = (RNG.integers(0, 65535, (20, 24))).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    tifffile.imwrite(folder / "deep16.tif", deep)
    tifffile.imwrite(folder / "float.tif", RNG.random((20, 24), dtype=np.float32))
    # EXIF orientation 6 (rotate 90 degrees): stored 24 wide x 20 high, shown 20 wide x 24 high.
    img = Image.fromarray(_rgb())
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(folder / "rotated.jpg", exif=exif)
    return {
        "rgb.jpg": ((3, 20, 24), u8), "gray.png": ((3, 20, 24), u8), "rgba.png": ((3, 20, 24), u8),
        "palette.png": ((3, 20, 24), u8), "cmyk.jpg": ((3, 20, 24), u8),
        "onebit.png": ((3, 20, 24), u8), "photo.webp": ((3, 20, 24), u8),
        "tiny.png": ((3, 2, 3), u8), "deep16.png": ((3, 20, 24), f32),
        "deep16.tif": ((3, 20, 24), f32), "float.tif": ((3, 20, 24), f32),
        "rotated.jpg": ((3, 24, 20), u8),
    }  # fmt: skip


def build_bad(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    (folder / "noise.jpg").write_bytes(bytes(RNG.integers(0, 255, 300, dtype=np.uint8)))
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return ["empty.jpg", "notes.png", "noise.jpg", "truncated.jpg"]


def test_every_supported_kind_loads_with_shape_and_dtype(tmp_path: Path) -> None:
    expected = build_good(tmp_path)
    for name, (shape, dtype) in expected.items():
        t = to_tensor(open_file(tmp_path / name), 3, name)
        assert tuple(t.shape) == shape and t.dtype == dtype, (name, t.shape, t.dtype)
        if dtype == torch.float32:
            assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0, name
    gray = to_tensor(open_file(tmp_path / "rgb.jpg"), 1)
    assert gray.shape == (1, 20, 24) and gray.dtype == torch.uint8
    # 16-bit keeps its precision: values are not quantised to 256 levels.
    deep = to_tensor(open_file(tmp_path / "deep16.png"), 1)
    assert len(torch.unique(deep)) > 256


def test_multiband_tiff_needs_matching_channels(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s2.tif", RNG.integers(0, 4000, (13, 20, 24)).astype(np.uint16))
    tifffile.imwrite(tmp_path / "four.tif", RNG.integers(0, 255, (20, 24, 5)).astype(np.uint8),
                     photometric="minisblack", planarconfig="contig")  # fmt: skip
    t = to_tensor(open_file(tmp_path / "s2.tif"), 13)
    assert t.shape == (13, 20, 24) and t.dtype == torch.float32
    assert to_tensor(open_file(tmp_path / "four.tif"), 5).shape == (5, 20, 24)
    with pytest.raises(DataError, match=r"13 channels.*--channels 13"):
        to_tensor(open_file(tmp_path / "s2.tif"), 3, "s2.tif")


def test_broken_files_are_named(tmp_path: Path) -> None:
    for name in build_bad(tmp_path):
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            to_tensor(open_file(tmp_path / name), 3)


def test_decompression_bomb_guard(tmp_path: Path) -> None:
    Image.fromarray(_rgb(50, 50)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big\.png.*max_pixels"):
        open_file(tmp_path / "big.png", max_pixels=1000)


def test_pretrain_and_eval_run_through_the_zoo(tmp_path: Path) -> None:
    good = build_good(tmp_path / "zoo" / "good")
    bad = build_bad(tmp_path / "zoo" / "bad")
    run = tmp_path / "run"
    kw = dict(batch_size=8, image_size=16, workers=0, progress=False,
              overrides=["monitor.knn=false", "method.proj_hidden_dim=32"])  # fmt: skip
    res = selfsup.pretrain("simclr", data=str(tmp_path / "zoo"), out=run, epochs=3, **kw)
    assert res.state.epoch == 3 and res.final_loss is not None
    skipped = (run / "skipped.txt").read_text()
    for name in bad:
        assert name in skipped, name
    for name in good:
        assert name not in skipped, name
    feats, _labels = selfsup.extract(run, str(tmp_path / "zoo"), cache=False)
    assert feats.shape[0] == len(good)  # unreadable images are left out of features
    with pytest.raises(DataError, match=r"bad/(empty|notes|noise|truncated)"):
        selfsup.pretrain("simclr", data=str(tmp_path / "zoo"), out=tmp_path / "run2", epochs=3,
                         bad_files="fail", **kw)  # fmt: skip


def test_scan_finds_every_kind(tmp_path: Path) -> None:
    build_good(tmp_path / "a")
    build_bad(tmp_path / "b")
    assert len(scan_folder(tmp_path)) == 12 + 4


def test_data_check_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import shutil

    from selfsup.cli import main

    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "cache" / "data"))
    zoo = tmp_path / "zoo"
    good = build_good(zoo / "good")
    bad = build_bad(zoo / "bad")
    shutil.copy(zoo / "good" / "rgb.jpg", zoo / "good" / "rgb_copy.jpg")
    out = tmp_path / "report.json"
    assert main(["data", "check", str(zoo), "--out", str(out), "--workers", "1"]) == 0
    r = json.loads(out.read_text())
    assert r["files"] == len(good) + len(bad) + 1 and r["readable"] == len(good) + 1
    assert sorted(Path(u["file"]).name for u in r["unreadable"]) == sorted(bad)
    assert [sorted(Path(f).name for f in g) for g in r["duplicates"]] == [
        ["rgb.jpg", "rgb_copy.jpg"]
    ]
    assert {"JPEG", "PNG", "WEBP", "TIFF"} <= set(r["formats"])
    assert {"8", "16", "32f", "1"} <= set(r["bit_depths"])
    assert r["width"]["min"] == 3 and r["height"]["max"] == 24


def test_stats_by_hand_and_normalize_auto_reuses_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfsup.data.check import check_folder, save_report

    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "cache" / "data"))
    folder = tmp_path / "flat"
    for c, value in enumerate((0, 51, 102, 255)):  # constant gray images
        d = folder / f"c{c % 2}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("L", (16, 16), value).save(d / f"{value}_{i}.png")
    r = check_folder(folder, channels=1, workers=1)
    vals = np.array([0, 51, 102, 255]) / 255.0
    assert r["mean"][0] == pytest.approx(vals.mean(), abs=1e-6)
    assert r["std"][0] == pytest.approx(vals.std(), abs=1e-6)
    save_report(r, None)
    res = selfsup.pretrain("simclr", data=str(folder), out=tmp_path / "run", steps=1, channels=1,
                           normalize="auto", batch_size=8, workers=0, progress=False,
                           overrides=["monitor.knn=false", "method.proj_hidden_dim=32"])  # fmt: skip
    cfg = selfsup.load_config(res.out_dir)  # type: ignore[arg-type]
    assert cfg.data.normalize == "given"  # resolved: the run keeps explicit numbers
    assert cfg.data.mean == pytest.approx(r["mean"], abs=1e-5)
    assert cfg.data.std == pytest.approx(r["std"], abs=1e-5)
    assert cfg.backbone.in_chans == 1
    assert selfsup.load_method(res.out_dir).backbone.net.conv1.in_channels == 1  # type: ignore[arg-type]
