"""The Trainer: exact resume, budgets, checkpoints, run folders, non-finite losses."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_images

import selfsup
from selfsup import schedules
from selfsup.config import ConfigError
from selfsup.train import TrainingError
from selfsup.train import checkpoint as ckpt_io

TINY = dict(
    batch_size=8,
    image_size=16,
    progress=False,
    overrides=["monitor.knn=false", "train.log_every=1", "method.proj_hidden_dim=64"],
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_images(tmp_path / "imgs", classes=2, per_class=12)


def _losses(run: Path) -> list[tuple[int, str]]:
    with open(run / "metrics.csv") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f) if r["loss"]]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load(run)["method"]  # type: ignore[no-any-return]


def test_resume_continues_the_exact_loss_curve(folder: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    full = selfsup.pretrain("simclr", data=str(folder), out=a, steps=7, workers=0, **TINY)
    assert full.state.step == 7 and full.state.epoch == 2  # 24 images / 8 = 3 steps an epoch
    part = selfsup.pretrain("simclr", data=str(folder), out=b, steps=7, workers=2,
                            stop_at_step=4, **TINY)  # fmt: skip
    assert part.state.step == 4 and part.stopped_by == "stop_at_step"
    resumed = selfsup.pretrain(resume=b, progress=False, workers=0)
    assert resumed.state.step == 7
    # Same losses at every step (exact: CPU, fixed seed, per-sample augmentation seeds,
    # whatever the number of data workers), same final weights and optimiser state.
    assert _losses(b) == _losses(a) and len(_losses(a)) == 7
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = ckpt_io.load(a)["optimizer"], ckpt_io.load(b)["optimizer"]
    assert all(torch.equal(oa["state"][k]["momentum_buffer"], ob["state"][k]["momentum_buffer"])
               for k in oa["state"])  # fmt: skip


def test_resume_can_extend_the_budget(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    selfsup.pretrain("simclr", data=str(folder), out=run, steps=2, workers=0, **TINY)
    res = selfsup.pretrain(resume=run, steps=4, progress=False)
    assert res.state.step == 4 and selfsup.load_config(run).train.steps == 4


def test_time_budget_stops_and_saves(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    # The trainer's clock, made independent of the machine's speed and load: every reading
    # is one second after the previous one (a step reads it once, so a step "takes" 1 s).
    clock = itertools.count()
    fake_time = types.SimpleNamespace(perf_counter=lambda: float(next(clock)))
    monkeypatch.setattr("selfsup.train.trainer.time", fake_time)
    run = tmp_path / "t"
    res = selfsup.pretrain("simclr", data=str(folder), out=run, max_time="5s", workers=0, **TINY)
    assert res.state.finished and res.state.step == 5 and res.state.elapsed == 5.0
    ck = ckpt_io.load(run)
    assert ck["state"]["step"] == res.state.step and ck["state"]["finished"]
    # The lr of each step is the cosine of the time used before it (schedules follow the
    # time budget): rows are logged every step with the elapsed time after it.
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["lr"]]
    peak = float(rows[0]["lr"])
    assert len(rows) == res.state.step >= 2
    for prev, row in itertools.pairwise(rows):
        expected = schedules.cosine(float(prev["elapsed_s"]), 5.0, peak, 0.0)
        assert float(row["lr"]) == pytest.approx(expected, rel=1e-3, abs=1e-9)


def test_run_folder_contents_and_checkpoint_is_safe_to_load(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "c"
    selfsup.pretrain("simclr", data=str(folder), out=run, epochs=2, workers=0, **TINY)
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.pt",
                 "checkpoints/previous.pt"):  # fmt: skip
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents*"))
    ck = torch.load(run / "checkpoints/last.pt", weights_only=True)  # no code execution
    assert ck["config"]["method"]["name"] == "simclr" and ck["config"]["data"]["image_size"] == 16
    assert ck["config"]["backbone"]["small_stem"] is True  # resolved, not "auto"
    model = selfsup.load_method(run)
    assert all(torch.equal(v, ck["method"][k]) for k, v in model.state_dict().items())
    init = selfsup.load_method(run, random_init=True)
    assert not torch.equal(init.backbone.net.conv1.weight, model.backbone.net.conv1.weight)
    # The random init is the run's own starting point: the same every time.
    again = selfsup.load_method(run, random_init=True)
    assert torch.equal(init.backbone.net.conv1.weight, again.backbone.net.conv1.weight)


def test_existing_run_folder_is_not_overwritten(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "o"
    selfsup.pretrain("simclr", data=str(folder), out=run, steps=1, workers=0, **TINY)
    with pytest.raises(ConfigError, match="--resume"):
        selfsup.pretrain("simclr", data=str(folder), out=run, steps=1, workers=0, **TINY)
    selfsup.pretrain(
        "simclr", data=str(folder), out=run, steps=1, workers=0, overwrite=True, **TINY
    )


def test_batch_larger_than_data(folder: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = {**TINY, "batch_size": 64}
    with pytest.raises(ConfigError, match="fewer than one batch"):
        selfsup.pretrain("simclr", data=str(folder), out=tmp_path / "x", steps=1, **kw)


def test_non_finite_loss_is_skipped_then_stops(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfsup.methods.simclr import SimCLR

    real = SimCLR.training_step
    calls = {"n": 0}

    def flaky(self: SimCLR, views: Any, info: Any) -> Any:
        loss, logs = real(self, views, info)
        calls["n"] += 1
        if calls["n"] == 2 or calls["n"] > 3:
            loss = loss * float("nan")
        return loss, logs

    monkeypatch.setattr(SimCLR, "training_step", flaky)
    run = tmp_path / "n"
    with pytest.raises(TrainingError, match="not finite for 5 steps"):
        selfsup.pretrain("simclr", data=str(folder), out=run, steps=50, workers=0, **TINY)
    ck = ckpt_io.load(run)  # written at the first epoch end, before the losses went bad
    assert all(torch.isfinite(v).all() for v in ck["method"].values() if v.is_floating_point())


def test_sigterm_saves_a_checkpoint_and_resume_finishes(folder: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "sig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfsup", "pretrain", "--data", str(folder), "--out", str(run),
         "--steps", "100000", "--batch-size", "8", "--image-size", "16", "--workers", "0",
         "--no-progress", "monitor.knn=false", "train.log_every=1", "method.proj_hidden_dim=32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.csv").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "received SIGTERM" in out + err and "signal SIGTERM" in out
    state = ckpt_io.load(run)["state"]
    assert state["step"] >= 1 and not state["finished"]
    res = selfsup.pretrain(resume=run, steps=state["step"] + 2, progress=False)
    assert res.state.step == state["step"] + 2 and res.state.finished


def test_sigkill_mid_epoch_then_resume_reaches_the_same_weights(
    folder: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--data", str(folder), "--steps", "8", "--batch-size", "8", "--image-size", "16",
            "--workers", "0", "--no-progress", "monitor.knn=false", "train.log_every=1",
            "method.proj_hidden_dim=32", "train.checkpoint_every=0s"]  # fmt: skip
    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([sys.executable, "-m", "selfsup", "pretrain", "--out", str(ref), *args],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "selfsup", "pretrain", "--out", str(run), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline:
        metrics = run / "metrics.csv"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:  # 4 steps logged
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    state = ckpt_io.load(run)["state"]
    assert 1 <= state["step"] < 8 and state["epoch_pos"] % 8 == 0
    # Resumed in a process like the other two: the same threads (this test process has its
    # own, set by conftest), so the same float reductions.
    subprocess.run([sys.executable, "-m", "selfsup", "pretrain", "--resume", str(run),
                    "--no-progress"], check=True, capture_output=True, timeout=300)  # fmt: skip
    wa, wb = _weights(ref), _weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ"
    assert _losses(ref) == _losses(run)


def test_accumulation_is_refused_for_batch_coupled_methods(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"accumulate=2.*in-batch negatives.*force_accumulate"):
        selfsup.pretrain("simclr", data=str(folder), out=tmp_path / "a", steps=1, workers=0,
                         overrides=[*TINY["overrides"], "train.accumulate=2"],
                         **{k: v for k, v in TINY.items() if k != "overrides"})  # fmt: skip
    res = selfsup.pretrain("simclr", data=str(folder), out=tmp_path / "b", steps=1, workers=0,
                           overrides=[*TINY["overrides"], "train.accumulate=2",
                                      "train.force_accumulate=true"],
                           **{k: v for k, v in TINY.items() if k != "overrides"})  # fmt: skip
    assert res.state.step == 1 and res.state.images_seen == 16  # 2 batches of 8, one step


def test_accumulation_equals_one_large_batch(folder: Path, tmp_path: Path) -> None:
    # MAE has no batch coupling: 2 x 4 images accumulated is one step on 8 images.
    kw: dict[str, Any] = dict(data=str(folder), steps=2, workers=0, image_size=16,
                              precision="fp32", progress=False)  # fmt: skip
    vit = ["backbone.kwargs={patch_size: 4, depth: 1, num_heads: 3}", "monitor.knn=false"]
    one = selfsup.pretrain("mae", out=tmp_path / "one", batch_size=8, overrides=vit, **kw)
    acc = selfsup.pretrain("mae", out=tmp_path / "acc", batch_size=4,
                           overrides=[*vit, "train.accumulate=2"], **kw)  # fmt: skip
    assert one.state.images_seen == acc.state.images_seen == 16
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "acc")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k


def test_crop_larger_than_images_is_refused(folder: Path, tmp_path: Path) -> None:
    kw = {k: v for k, v in TINY.items() if k != "image_size"}
    with pytest.raises(ConfigError, match=r"image_size=64 is larger than the images.*20 px"):
        selfsup.pretrain(
            "simclr", data=str(folder), out=tmp_path / "u", steps=1, image_size=64, **kw
        )


def _data_wait(run: Path) -> float:
    with open(run / "metrics.csv") as f:
        rows = [float(r["data_wait"]) for r in csv.DictReader(f)][1:]  # past the first step
    return sum(rows) / len(rows)


def test_data_wait_counts_the_loader_not_the_augmentation(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from selfsup.data import ImageDataset
    from selfsup.transforms.batched import BatchedViews

    # Batched augmentation is device work: slow augmentation is not waiting on data.
    real_aug = BatchedViews.__call__

    def slow_aug(self: BatchedViews, *args: Any) -> Any:
        time.sleep(1.0)
        return real_aug(self, *args)

    monkeypatch.setattr(BatchedViews, "__call__", slow_aug)
    kw = dict(TINY, overrides=[*TINY["overrides"], "data.augment=device"])  # type: ignore[list-item]
    run = tmp_path / "aug"
    selfsup.pretrain("simclr", data=str(folder), out=run, steps=4, workers=0, **kw)
    assert _data_wait(run) < 0.25
    # A slow loader is.
    real_item = ImageDataset.__getitem__

    def slow_item(self: ImageDataset, i: int) -> Any:
        time.sleep(0.25)  # 2 s a batch of 8: the wait dominates even on a loaded machine
        return real_item(self, i)

    monkeypatch.setattr(BatchedViews, "__call__", real_aug)
    monkeypatch.setattr(ImageDataset, "__getitem__", slow_item)
    run = tmp_path / "load"
    selfsup.pretrain("simclr", data=str(folder), out=run, steps=4, workers=0, **kw)
    assert _data_wait(run) > 0.5


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_progressive_resizing_grows_the_views_over_the_budget(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, augment: str
) -> None:
    from selfsup.methods.simclr import SimCLR

    seen: list[tuple[int, ...]] = []
    real = SimCLR.training_step

    def spy(self: SimCLR, views: list[torch.Tensor], info: Any) -> Any:
        seen.append(tuple(v.shape[-1] for v in views))
        return real(self, views, info)

    monkeypatch.setattr(SimCLR, "training_step", spy)
    over = [f"data.augment={augment}", "data.progressive_start=0.5",
            "data.progressive_until=0.75"]  # fmt: skip
    kw = dict(TINY, overrides=[*TINY["overrides"], *over])  # type: ignore[list-item]
    selfsup.pretrain("simclr", data=str(folder), out=tmp_path / "run", steps=8, workers=0, **kw)
    # 16 px views: 8 px at the start, + 8 px * (step / 8) / 0.75, in steps of 4 px.
    assert seen == [(s, s) for s in (8, 8, 12, 12, 12, 16, 16, 16)]


def test_progressive_resizing_is_refused_where_it_cannot_apply(
    folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="progressive_start is the fraction"):
        selfsup.pretrain("simclr", data=str(folder), out=tmp_path / "a", steps=1,
                         **dict(TINY, overrides=["data.progressive_start=2"]))  # fmt: skip
    with pytest.raises(ConfigError, match="a fixed patch grid"):
        selfsup.pretrain("mae", data=str(folder), out=tmp_path / "b", steps=1,
                         **dict(TINY, overrides=["data.progressive_start=0.5"]))  # fmt: skip
