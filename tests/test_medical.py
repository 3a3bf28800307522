"""DICOM and NIfTI folders: real files written with pydicom and nibabel, read back through
selfsup's sources and checked pixel by pixel against independent numpy computations; frames
and slices as samples; compressed files and missing packages explained; data check."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from selfsup.cli import main
from selfsup.data import DataError, ImageDataset, open_source, scan_folder, sniff_image_size
from selfsup.data.decode import open_file, to_tensor
from selfsup.data.sources import FolderSource, FrameFolderSource

RNG = np.random.default_rng(0)


def write_dicom(path: Path, pixels: np.ndarray, bits_stored: int, signed: bool = False,
                photometric: str = "MONOCHROME2", syntax: Any = uid.ExplicitVRLittleEndian,
                **elements: Any) -> Path:  # fmt: skip
    """A DICOM file of ``pixels`` ((H, W), (F, H, W), or (H, W, 3) colour) with extra
    elements (e.g. RescaleIntercept, WindowCenter); the pixel bytes are written as given."""
    colour = photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = elements.pop("Modality", "OT")
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in elements.items():
        setattr(ds, key, value)
    if syntax.is_compressed:
        ds.PixelData = encapsulate([b"\xff\xd8 not really a JPEG \xff\xd9"] * frames)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def read(path: Path, index: int = 0) -> np.ndarray:
    arr = open_file(path, index=index)
    assert isinstance(arr, np.ndarray)
    return arr


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's LINEAR window (PS3.3 C.11.2.1.2.1) onto [0, 1]."""
    c, w = center - 0.5, width - 1.0
    out = np.clip((values - c) / w + 0.5, 0, 1)
    out[values <= c - w / 2] = 0.0
    out[values > c + w / 2] = 1.0
    return out


# ---------------------------------------------------------------- DICOM intensities


def test_unsigned_12_and_16_bit_map_over_the_bit_depth(tmp_path: Path) -> None:
    v12 = RNG.integers(0, 4096, (6, 7)).astype(np.uint16)
    v16 = RNG.integers(0, 65536, (6, 7)).astype(np.uint16)
    a = read(write_dicom(tmp_path / "a.dcm", v12, 12))
    b = read(write_dicom(tmp_path / "b.dcm", v16, 16))
    assert a.dtype == np.float32 and a.shape == (6, 7, 1)
    np.testing.assert_allclose(a[..., 0], v12 / 4095.0, atol=1e-6)
    np.testing.assert_allclose(b[..., 0], v16 / 65535.0, atol=1e-6)
    t = to_tensor(a, 3, "a.dcm")  # the layout of deep images: float32 (C, H, W) in [0, 1]
    assert t.dtype == torch.float32 and t.shape == (3, 6, 7) and torch.equal(t[0], t[2])


def test_signed_with_rescale_intercept_maps_the_rescaled_stored_range(tmp_path: Path) -> None:
    v = RNG.integers(-2048, 2048, (5, 6)).astype(np.int16)  # 12 bits stored, signed
    out = read(write_dicom(tmp_path / "ct.dcm", v, 12, signed=True, RescaleSlope=1,
                           RescaleIntercept=-1024))  # fmt: skip
    lo, hi = -2048 - 1024, 2047 - 1024  # every storable value through the rescale
    np.testing.assert_allclose(out[..., 0], ((v - 1024.0) - lo) / (hi - lo), atol=1e-6)


def test_first_window_is_applied_and_clipped(tmp_path: Path) -> None:
    v = RNG.integers(-1000, 3000, (8, 8)).astype(np.int16)
    out = read(write_dicom(tmp_path / "w.dcm", v, 16, signed=True, Modality="CT",
                           RescaleSlope=1, RescaleIntercept=-1024,
                           WindowCenter=[40, 400], WindowWidth=[400, 2000]))  # fmt: skip
    np.testing.assert_allclose(out[..., 0], linear_window(v - 1024.0, 40, 400), atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


def test_enhanced_multi_frame_takes_rescale_and_window_per_frame(tmp_path: Path) -> None:
    frames = RNG.integers(0, 4096, (2, 5, 5)).astype(np.uint16)
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept = 2, -1000
    shared = Dataset()
    shared.PixelValueTransformationSequence = [pvt]
    per = []
    for center, width in ((0, 1000), (2000, 4000)):
        voi, item = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item.FrameVOILUTSequence = [voi]
        per.append(item)
    path = write_dicom(tmp_path / "enh.dcm", frames, 12, SharedFunctionalGroupsSequence=[shared],
                       PerFrameFunctionalGroupsSequence=per)  # fmt: skip
    for k, (center, width) in enumerate(((0, 1000), (2000, 4000))):
        expect = linear_window(frames[k] * 2.0 - 1000, center, width)
        np.testing.assert_allclose(read(path, k)[..., 0], expect, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    v12 = RNG.integers(0, 4096, (4, 5)).astype(np.uint16)
    v8 = RNG.integers(0, 256, (4, 5)).astype(np.uint8)
    a = read(write_dicom(tmp_path / "m1.dcm", v12, 12, photometric="MONOCHROME1"))
    np.testing.assert_allclose(a[..., 0], 1.0 - v12 / 4095.0, atol=1e-6)
    b = read(write_dicom(tmp_path / "m1_8.dcm", v8, 8, photometric="MONOCHROME1"))
    assert b.dtype == np.uint8 and np.array_equal(b[..., 0], 255 - v8)  # 8-bit stays 8-bit


def test_rgb_dicom_is_colour(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (5, 6, 3)).astype(np.uint8)
    out = read(write_dicom(tmp_path / "rgb.dcm", rgb, 8, photometric="RGB"))
    assert np.array_equal(out, rgb)
    t = to_tensor(out, 3, "rgb.dcm")
    assert t.dtype == torch.uint8 and torch.equal(t, torch.from_numpy(rgb).permute(2, 0, 1))


def test_multi_frame_dicom_gives_one_sample_a_frame(tmp_path: Path) -> None:
    frames = RNG.integers(0, 4096, (3, 4, 5)).astype(np.uint16)
    write_dicom(tmp_path / "cine.dcm", frames, 12)
    src = open_source(str(tmp_path))
    assert isinstance(src, FrameFolderSource) and len(src) == 3
    assert src.describe(2) == f"{tmp_path / 'cine.dcm'}[frame 2]"
    for k in range(3):
        got = src.load(k)
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got[..., 0], frames[k] / 4095.0, atol=1e-6)


def test_extensionless_dicom_is_found_by_its_preamble(tmp_path: Path) -> None:
    write_dicom(tmp_path / "IM0001", RNG.integers(0, 256, (4, 4)).astype(np.uint8), 8)
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    src = scan_folder(tmp_path)
    assert src.files == ["IM0001"] and read(src.path(0)).shape == (4, 4, 1)


# ----------------------------------------------------------------- errors explained


def test_compressed_without_decoder_says_what_to_install(tmp_path: Path) -> None:
    frames = np.zeros((2, 4, 4), np.uint16)
    path = write_dicom(tmp_path / "jpeg.dcm", frames, 12, syntax=uid.JPEGLosslessSV1)
    src = open_source(str(tmp_path))
    assert len(src) == 2  # frames counted from the header: the pixel data is never decoded
    with pytest.raises(DataError) as info:
        src.load(0)
    msg = str(info.value)
    assert str(path) in msg and "JPEG Lossless" in msg and uid.JPEGLosslessSV1 in msg
    assert "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg" in msg
    assert "python-gdcm" in msg
    # The loaders' bad-file policy: skipped (another image drawn), listed for skipped.txt.
    ok = write_dicom(tmp_path / "ok.dcm", np.full((4, 4), 7, np.uint8), 8)
    ds = ImageDataset(open_source(str(tmp_path)), channels=1, bad_files="skip")
    _, _, skipped, _ = ds[(0, 3)]
    assert skipped and all(s.startswith(f"{path}[frame") for s in skipped)
    assert "pylibjpeg" in skipped[0] and ok.exists()
    with pytest.raises(DataError, match="bad_files=skip"):
        ImageDataset(open_source(str(tmp_path)), bad_files="fail")[(0, 3)]


def test_missing_packages_say_pip_install_selfsup_medical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dcm = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8), 8)
    nii = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), nii)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    monkeypatch.setitem(sys.modules, "nibabel", None)
    for path in (dcm, nii):
        with pytest.raises(DataError, match=r'pip install "selfsup\[medical\]"'):
            open_file(path)
    with pytest.raises(DataError, match=r'pip install "selfsup\[medical\]"'):
        open_source(str(tmp_path))  # said once when the folder is opened


# ----------------------------------------------------------------------------- NIfTI


def test_nifti_slices_in_order_scaled_by_the_volume_percentiles(tmp_path: Path) -> None:
    vol = RNG.normal(100, 30, (6, 5, 4)).astype(np.float32)
    vol[0, 0, 0] = 5000.0  # an outlier the robust range ignores
    img = nib.Nifti1Image(vol, np.eye(4))
    nib.save(img, tmp_path / "scan.nii.gz")
    src = open_source(str(tmp_path))
    assert isinstance(src, FrameFolderSource) and len(src) == 4
    assert src.describe(2) == f"{tmp_path / 'scan.nii.gz'}[slice 2]"
    lo, hi = np.percentile(vol, [0.5, 99.5])
    for k in range(4):  # slice k of the last axis, shown as imshow(slice.T, origin="lower")
        expect = np.clip((np.rot90(vol[:, :, k]) - lo) / (hi - lo), 0, 1)
        got = src.load(k)
        assert isinstance(got, np.ndarray) and got.shape == (5, 6, 1)
        np.testing.assert_allclose(got[..., 0], expect, atol=1e-5)


def test_4d_nifti_is_slice_major(tmp_path: Path) -> None:
    vol = np.arange(3 * 3 * 2 * 2, dtype=np.int16).reshape(3, 3, 2, 2)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "fmri.nii")
    src = open_source(str(tmp_path))
    assert len(src) == 4 and src.describe(3).endswith("fmri.nii[slice 1, volume 1]")
    lo, hi = np.percentile(vol.astype(np.float64), [0.5, 99.5])
    for k, (z, t) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        expect = np.clip((np.rot90(vol[:, :, z, t]) - lo) / (hi - lo), 0, 1)
        np.testing.assert_allclose(src.load(k)[..., 0], expect, atol=1e-5)  # type: ignore[index]


# ------------------------------------------------------- mixed folders and data check


def build_mixed(root: Path) -> dict[str, int]:
    """class a: PNG + 12-bit CT; class b: 3-frame DICOM + NIfTI of 2 slices + compressed
    DICOM + a DICOM object without image. Returns the expected sample counts."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "a" / "x.png")
    write_dicom(root / "a" / "ct.dcm", RNG.integers(0, 4096, (8, 8)).astype(np.uint16), 12,
                Modality="CT")  # fmt: skip
    write_dicom(root / "b" / "cine.dcm", RNG.integers(0, 65536, (3, 8, 8)).astype(np.uint16),
                16, Modality="US")  # fmt: skip
    nib.save(nib.Nifti1Image(RNG.normal(size=(8, 8, 2)).astype(np.float32), np.eye(4)),
             root / "b" / "vol.nii.gz")  # fmt: skip
    write_dicom(root / "b" / "jpeg.dcm", np.zeros((8, 8), np.uint16), 12, Modality="CR",
                photometric="MONOCHROME1", syntax=uid.JPEGLosslessSV1)  # fmt: skip
    sr = Dataset()  # a structured report: a DICOM object with no pixel data
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID = uid.BasicTextSRStorage
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID = uid.generate_uid()
    sr.Modality = "SR"
    sr.save_as(root / "b" / "report.dcm", enforce_file_format=True)
    return {"files": 6, "samples": 1 + 1 + 3 + 2 + 1}


def test_mixed_png_dicom_nifti_folder_trains_through_the_normal_path(tmp_path: Path) -> None:
    build_mixed(tmp_path)
    src = open_source(str(tmp_path))
    assert isinstance(src, FrameFolderSource) and len(src) == 8  # the report is left out
    assert src.classes == ["a", "b"] and src.labels == [0, 0, 1, 1, 1, 1, 1, 1]
    assert sniff_image_size(src) == 8
    ds = ImageDataset(src, channels=3, bad_files="skip")
    kinds = {src.describe(i): ds[(i, 0)] for i in range(len(src))}
    for where, (x, _, skipped, _) in kinds.items():
        assert x.shape == (3, 8, 8)
        assert bool(skipped) == ("jpeg.dcm" in where)
    assert kinds[str(tmp_path / "a" / "x.png")][0].dtype == torch.uint8
    assert kinds[str(tmp_path / "a" / "ct.dcm")][0].dtype == torch.float32


def test_folder_of_single_images_stays_a_folder_source(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint16), 12)
    Image.new("L", (4, 4)).save(tmp_path / "b.png")
    src = open_source(str(tmp_path))
    assert isinstance(src, FolderSource) and src.files == ["a.dcm", "b.png"]


def test_data_check_reports_medical_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "cache" / "data"))
    expect = build_mixed(tmp_path / "d")
    out = tmp_path / "report.json"
    assert main(["data", "check", str(tmp_path / "d"), "--out", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["files"] == expect["files"] and r["samples"] == expect["samples"]
    assert r["samples"] == len(open_source(str(tmp_path / "d")))
    m = r["medical"]
    assert (m["dicom_files"], m["nifti_files"], m["frames"], m["slices"]) == (4, 1, 5, 2)
    assert m["bit_depths"] == {"12": 2, "16": 1, "32f": 1}
    assert m["photometric"] == {"MONOCHROME2": 2, "MONOCHROME1": 1}
    assert m["modalities"] == {"CT": 1, "US": 1, "CR": 1}
    assert [Path(u["file"]).name for u in m["undecodable"]] == ["jpeg.dcm"]
    assert "pylibjpeg" in m["undecodable"][0]["fix"]
    assert [Path(n["file"]).name for n in m["not_images"]] == ["report.dcm"]
    assert [Path(u["file"]).name for u in r["unreadable"]] == ["jpeg.dcm"]
    assert r["readable"] == 4 and r["grey"] is False
    assert "DICOM files (frames)" in text and "JPEG Lossless" in text
    assert "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg" in text


def test_data_check_on_grey_images_suggests_one_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfsup.data.check import cached_stats

    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "cache" / "data"))
    folder = tmp_path / "grey"
    folder.mkdir()
    for i, v in enumerate((0, 51, 204)):
        Image.new("L", (6, 6), v).save(folder / f"{i}.png")
    out = tmp_path / "r.json"
    assert main(["data", "check", str(folder), "--out", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["grey"] is True and r["channels"] == 3
    assert "mean (grey)" in text and "mean (3 ch)" not in text
    assert "--channels 1" in text and "backbone.in_chans=1" in text
    mean, std = cached_stats(folder, 1, 3) or ([], [])  # reused for a one-channel run
    assert mean == pytest.approx([np.mean([0, 51, 204]) / 255]) and len(std) == 1
