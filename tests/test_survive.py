"""Runs that survive what clusters do to them: a disk that fills up while saving, a damaged
``last.pt``, a scheduler's warning signal before the time limit."""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import selfsup
from selfsup.cli import main as cli_main
from selfsup.train import checkpoint as ckpt_io
from selfsup.train.signals import StopSignals

TINY = dict(
    batch_size=8, image_size=16, progress=False, workers=0,
    overrides=["monitor.knn=false", "method.proj_hidden_dim=32", "monitor.probe=false"],
)  # fmt: skip


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's zip writer on a full disk: some bytes, then its RuntimeError; and a disk with
    1 KiB free."""

    def save(obj: Any, f: Any, *args: Any, **kw: Any) -> None:
        f.write(b"PK\x03\x04" + b"\0" * 60)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ckpt_io.torch, "save", save)
    monkeypatch.setattr(ckpt_io.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024}))


def test_full_disk_while_saving_says_what_and_keeps_the_last_checkpoint(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    run = tmp_path / "run"
    selfsup.pretrain("simclr", data=str(tiny_folder), out=run, steps=2, **TINY)
    good = (run / "checkpoints" / "last.pt").read_bytes()
    _full_disk(monkeypatch)
    code = cli_main(["pretrain", "--resume", str(run), "--steps", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "unexpected pos" not in err
    assert f"no space left on the disk of {str(run / 'checkpoints')!r}" in err
    assert "1 KiB are free" in err and "MiB" in err  # what was needed, what is free
    assert "(step 2), is untouched" in err and f"selfsup pretrain --resume {run}" in err
    monkeypatch.undo()
    assert (run / "checkpoints" / "last.pt").read_bytes() == good
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
    assert ckpt_io.load(run)["state"]["step"] == 2


def test_a_first_save_that_fails_says_nothing_was_saved(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(ckpt_io.torch, "save", lambda *a, **k: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))  # fmt: skip
    with pytest.raises(ckpt_io.CheckpointWriteError, match="No checkpoint of this run was saved"):
        ckpt_io.save_atomic({"w": torch.zeros(4)}, tmp_path / "checkpoints" / "last.pt")


def test_damaged_last_checkpoint_falls_back_to_previous(tiny_folder: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    run = tmp_path / "run"
    selfsup.pretrain("simclr", data=str(tiny_folder), out=run, steps=4, **TINY)
    ck = run / "checkpoints"
    assert ckpt_io.load(ck / "previous.pt")["state"]["step"] == 2
    data = (ck / "last.pt").read_bytes()
    (ck / "last.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match=r"last\.pt' cannot be read .*previous\.pt .*step 2"):
        res = selfsup.pretrain(resume=run, steps=6, progress=False, workers=0)
    assert res.state.step == 6 and res.state.finished
    assert (ck / "last.pt.damaged").read_bytes() == data[: len(data) // 2]  # set aside
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt_io.load(run)["state"]["step"] == 6
        assert ckpt_io.load(ck / "previous.pt")["state"]["step"] in (4, 6)
    (ck / "previous.pt").write_bytes(b"junk")
    (ck / "last.pt").write_bytes(b"junk")
    with pytest.raises(ckpt_io.CheckpointError, match=r"cannot read checkpoint .*last\.pt"):
        ckpt_io.load(run)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
@pytest.mark.parametrize("name", ["SIGUSR1", "SIGUSR2", "SIGTERM"])
def test_scheduler_signals_ask_training_to_save_and_stop(name: str) -> None:
    stop = StopSignals()
    with stop.installed():
        os.kill(os.getpid(), getattr(signal, name))
        assert stop.received == name
    assert signal.getsignal(getattr(signal, name)) is not None  # handlers restored
