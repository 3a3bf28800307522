"""Segmentation and detection end to end from the command line, on a few real CamVid and
Penn-Fudan images at tiny sizes (a run of one step stands in for a pretrained one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import selfsup
from selfsup.cli import main
from tests.conftest import SHARED

CAMVID = SHARED / "camvid"
PENNFUDAN = SHARED / "pennfudan"


@pytest.fixture(scope="module")
def street_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dense") / "run"
    selfsup.pretrain("simclr", data=str(CAMVID / "train" / "images"), out=out, steps=1,
                     batch_size=4, image_size=96, workers=0, progress=False, precision="fp32",
                     overrides=["monitor.knn=false", "method.proj_hidden_dim=64"])  # fmt: skip
    return out


def _seg_split(dest: Path, split: str, n: int) -> Path:
    """``n`` CamVid images of ``split`` linked into a split folder (with classes.json above)."""
    for sub in ("images", "masks"):
        (dest / split / sub).mkdir(parents=True, exist_ok=True)
    stems = sorted(p.stem for p in (CAMVID / split / "images").iterdir())[:n]
    for s in stems:
        os.symlink(CAMVID / split / "images" / f"{s}.jpg", dest / split / "images" / f"{s}.jpg")
        os.symlink(CAMVID / split / "masks" / f"{s}.png", dest / split / "masks" / f"{s}.png")
    if not (dest / "classes.json").exists():
        os.symlink(CAMVID / "classes.json", dest / "classes.json")
    return dest / split


@pytest.mark.parametrize("protocol", ["linear", "finetune"])
def test_eval_segment_cli(street_run: Path, tmp_path: Path, protocol: str,
                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    train, test = _seg_split(tmp_path, "train", 4), _seg_split(tmp_path, "test", 2)
    rc = main(["eval", "segment", "--checkpoint", str(street_run), "--train", str(train),
               "--test", str(test), "--protocol", protocol, "--max-steps", "2",
               "--image-size", "64", "--batch-size", "2", "--workers", "0", "--json",
               "--no-progress", "--precision", "fp32", "--also-test", str(test),
               "--decoder", "unet"])  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["protocol"] == protocol and res["steps"] == 2
    # The same model scored again on the same split through --also-test agrees with itself.
    (again,) = res["transfer"]
    assert again["test"] == str(test) and again["miou"] == pytest.approx(res["miou"])
    assert again["per_class_iou"] == res["per_class_iou"] and res["observer"] is None
    assert res["settings"]["decoder"] == "unet"
    assert 0.0 <= res["miou"] <= 100.0 and res["dice"] is None
    assert len(res["per_class_iou"]) == 11 and "road" in res["per_class_iou"]
    assert res["labelled_images"] == 4 and res["test_images"] == 2
    # Saved beside the run: the result and a picture (2 test images x image/truth/prediction),
    # which the run's report shows.
    saved = sorted((street_run / "dense").glob(f"segment-{protocol}-*"))
    assert [p.suffix for p in saved] == [".json", ".png"]
    assert json.loads(saved[0].read_text())["miou"] == res["miou"]
    if protocol == "finetune":
        from selfsup.viz import write_report

        html = write_report(street_run, tmp_path / "report.html").read_text()
        assert "dense/" in html and saved[1].name in html


def _coco_split(dest: Path, split: str, n: int) -> Path:
    """The first ``n`` Penn-Fudan images of ``split`` with their annotations and masks."""
    src = PENNFUDAN / split
    coco = json.loads((src / "annotations.json").read_text())
    images = coco["images"][:n]
    ids = {im["id"] for im in images}
    coco["images"], coco["annotations"] = (
        images,
        [a for a in coco["annotations"] if a["image_id"] in ids],
    )
    (dest / split / "images").mkdir(parents=True)
    (dest / split / "masks").mkdir()
    for im in images:
        name = Path(im["file_name"]).name
        os.symlink(src / im["file_name"], dest / split / "images" / name)
        stem = Path(name).stem
        os.symlink(src / "masks" / f"{stem}.png", dest / split / "masks" / f"{stem}.png")
    (dest / split / "annotations.json").write_text(json.dumps(coco))
    return dest / split


def test_eval_detect_cli(street_run: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    train, test = _coco_split(tmp_path, "train", 3), _coco_split(tmp_path, "test", 2)
    rc = main(["eval", "detect", "--checkpoint", str(street_run), "--train", str(train),
               "--test", str(test), "--max-steps", "2", "--image-size", "128",
               "--batch-size", "2", "--workers", "0", "--json", "--no-progress",
               "--precision", "fp32"])  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("box_ap", "box_ap50", "mask_ap"):
        assert 0.0 <= res[key] <= 100.0
    assert res["steps"] == 2 and res["labelled_images"] == 3 and res["test_images"] == 2
    assert len(list((street_run / "dense").glob("detect-finetune-*.png"))) == 1


def test_coco_ap_against_perfect_and_empty_predictions() -> None:
    """pycocotools through our conversion: the ground truth as predictions scores 100 AP;
    boxes shifted off every object score 0."""
    import torch

    from selfsup.data.coco import CocoDetection
    from selfsup.tasks.detection import coco_ap, coco_results

    data = CocoDetection(PENNFUDAN / "test").subset([0, 1, 2])
    rows, shifted = [], []
    for i in range(3):
        _, t = data.load(i)
        n = len(t["boxes"])
        out = {"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(n),
               "masks": t["masks"][:, None].float()}  # fmt: skip
        rows += coco_results(out, int(t["image_id"]), data.category_ids)
        far = dict(out, boxes=t["boxes"] + 10_000)
        shifted += coco_results(far, int(t["image_id"]), data.category_ids)
    perfect = coco_ap(data.ground_truth(), rows, with_masks=True)
    assert perfect["box_ap"] == pytest.approx(100.0) and perfect["mask_ap"] == pytest.approx(100.0)
    assert coco_ap(data.ground_truth(), [], with_masks=True)["box_ap"] == 0.0
    for r in shifted:
        r.pop("segmentation")
    assert coco_ap(data.ground_truth(), shifted, with_masks=False)["box_ap"] == pytest.approx(0.0)


def test_detector_on_a_vit_uses_the_simple_pyramid() -> None:
    """A ViT's single patch-grid map becomes three pyramid levels (plus max-pool); Mask R-CNN
    trains (finite losses, gradients reach the ViT) and predicts in image coordinates."""
    import torch

    from selfsup.backbones import create_backbone
    from selfsup.config import BackboneConfig
    from selfsup.tasks.detection import DetectConfig, build_detector

    torch.manual_seed(0)
    vit = create_backbone(BackboneConfig(name="timm:vit_tiny_patch16_224", kwargs={"depth": 2}), 64)
    det = build_detector(vit, 1, True, DetectConfig(image_size=128), [0.5] * 3, [0.25] * 3)
    maps = det.backbone(torch.rand(1, 3, 64, 96))  # type: ignore[operator]
    stride = vit.dense_specs()[0].stride
    h, w = 64 // stride, 96 // stride
    sizes = [tuple(m.shape[-2:]) for m in maps.values()]
    assert sizes[:3] == [(2 * h, 2 * w), (h, w), (h // 2, w // 2)] and len(sizes) == 4
    masks = torch.zeros(1, 96, 128, dtype=torch.uint8)
    masks[0, 10:80, 10:60] = 1
    target = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0]]), "labels": torch.tensor([1]),
              "masks": masks}  # fmt: skip
    det.train()
    losses = det([torch.rand(3, 96, 128)], [target])
    assert {"loss_classifier", "loss_box_reg", "loss_mask"} <= set(losses)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vit.parameters())
    det.eval()
    with torch.no_grad():
        out = det([torch.rand(3, 96, 128)])[0]
    assert out["boxes"].shape[1] == 4 and out["masks"].shape[-2:] == (96, 128)
