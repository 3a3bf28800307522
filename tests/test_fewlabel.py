"""Few-label protocols: k-shot sampling, metrics, pseudo-label selection, few-shot
classifiers, and a tiny end-to-end fine-tune / scratch / self-training run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import make_images

from selfsup.eval.fewshot import (
    FewShotError,
    centroid_scores,
    choose_l2,
    fewshot_eval,
    fit_logistic,
    sample_shots,
)
from selfsup.eval.metrics import classification_metrics, confusion_matrix, save_confusion_png
from selfsup.tasks.classification import carve_validation, select_pseudo_labels


def test_sample_shots_is_exact_seeded_and_respects_exclusions() -> None:
    labels = [0] * 10 + [1] * 7 + [2] * 5 + [-1] * 3
    a = sample_shots(labels, 4, seed=0)
    assert len(a) == 12 and [sum(labels[i] == c for i in a) for c in range(3)] == [4, 4, 4]
    assert a == sample_shots(labels, 4, seed=0) and a != sample_shots(labels, 4, seed=1)
    assert all(labels[i] >= 0 for i in a)  # unlabelled (-1) never drawn
    b = sample_shots(labels, 1, seed=0, exclude=a)
    assert not set(a) & set(b)
    with pytest.raises(FewShotError, match="class 2 has only 5"):
        sample_shots(labels, 6, seed=0)
    v = carve_validation(labels, 2, exclude=a, seed=0)
    assert len(v) == 5 and not set(v) & set(a)  # class 2 has only 1 left


def test_metrics_against_a_hand_computed_confusion_matrix() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = torch.nn.functional.one_hot(pred, 3).float()
    conf = [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert confusion_matrix(pred, labels, 3).tolist() == conf
    m = classification_metrics(scores, labels, k=2)
    assert m.top1 == pytest.approx(400 / 6)
    assert m.per_class == pytest.approx([200 / 3, 50.0, 100.0])
    assert m.balanced == pytest.approx((200 / 3 + 50 + 100) / 3)
    assert m.confusion == conf and m.n == 6 and m.k == 2
    # Always answering the majority class: high top-1 on imbalanced data, balanced 1/C.
    maj = classification_metrics(torch.tensor([[1.0, 0.0]] * 8), torch.tensor([0] * 6 + [1] * 2))
    assert maj.top1 == 75.0 and maj.balanced == 50.0


def test_confusion_png(tmp_path: Path) -> None:
    m = classification_metrics(torch.eye(3), torch.tensor([0, 1, 2]), classes=["a", "b", "c"])
    out = save_confusion_png(m, tmp_path / "c.png")
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


def test_pseudo_labels_respect_threshold_and_class_balance() -> None:
    probs = torch.tensor([
        [0.95, 0.05], [0.90, 0.10], [0.80, 0.20], [0.60, 0.40],  # class 0: 3 above 0.7
        [0.10, 0.90], [0.25, 0.75], [0.45, 0.55],                # class 1: 2 above 0.7
    ])  # fmt: skip
    pos, lab = select_pseudo_labels(probs, threshold=0.7, max_per_class=10)
    assert sorted(zip(pos, lab, strict=True)) == [
        (0, 0),
        (1, 0),
        (4, 1),
        (5, 1),
    ]  # 2 each, most confident
    assert all(probs[p].max() >= 0.7 for p in pos)
    pos, lab = select_pseudo_labels(probs, threshold=0.7, max_per_class=1)
    assert sorted(zip(pos, lab, strict=True)) == [(0, 0), (4, 1)]
    pos, _ = select_pseudo_labels(probs, threshold=0.99, max_per_class=10)
    assert pos == []


def test_fewshot_classifiers_on_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(4).repeat_interleave(30)
    x = centers[y] + torch.randn(120, 16, generator=g)
    yt = torch.arange(4).repeat_interleave(25)
    xt = centers[yt] + torch.randn(100, 16, generator=g)
    res = fewshot_eval(x, y, xt, yt, shots=(1, 5), seeds=3)
    assert [r.shots for r in res.results] == [1, 5] and res.results[1].labels_used == 20
    for r in res.results:
        assert r.linear_top1_mean > 80 and r.centroid_top1_mean > 80
        assert len(r.linear_top1) == 3
    # Nearest centroid by hand: two classes, query nearer (in angle) to class 1.
    s = centroid_scores(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]),
                        torch.tensor([[0.2, 1.0]]), 2)  # fmt: skip
    assert s.argmax().item() == 1 and float(s[0, 1]) == pytest.approx(1 / math.sqrt(1.04), rel=1e-5)


def test_logistic_regression_and_l2_choice() -> None:
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = torch.tensor([0, 0, 1, 1])
    w, b = fit_logistic(x, y, 2, l2=1e-3)
    assert ((x @ w + b).argmax(1) == y).all()
    assert choose_l2(x, y, 2, seed=0) == choose_l2(x, y, 2, seed=0)
    assert choose_l2(x[[0, 2]], y[[0, 2]], 2, seed=0) == 1e-3  # one shot: the default


def test_finetune_scratch_and_selftrain_end_to_end(tmp_path: Path) -> None:
    import selfsup
    from selfsup import experiments
    from selfsup.tasks.classification import FinetuneConfig

    data = make_images(tmp_path / "imgs", classes=2, per_class=20, size=20)
    run = tmp_path / "run"
    selfsup.pretrain("simclr", data=str(data), out=run, steps=2, batch_size=8, image_size=16,
                     workers=0, progress=False, overrides=["monitor.knn=false", "method.proj_hidden_dim=32"])  # fmt: skip
    cfg = FinetuneConfig(epochs=3, batch_size=8, num_workers=0, patience=5)
    ft = experiments.evaluate_finetune(run, str(data), str(data), shots=4, val_per_class=3,
                                       config=cfg, confusion_png=tmp_path / "cm.png")  # fmt: skip
    assert ft.train_images == 8 and ft.val_images == 6 and ft.test.n == 40
    assert 1 <= ft.best_epoch <= ft.epochs_run <= 3 and (tmp_path / "cm.png").exists()
    sc = experiments.evaluate_finetune(run, str(data), str(data), shots=4, val_per_class=3,
                                       config=cfg, random_init=True)  # fmt: skip
    assert sc.test.n == 40
    # A step budget ends the run reproducibly: 8 images, batch 8 -> one step an epoch.
    from dataclasses import replace

    capped = experiments.evaluate_finetune(run, str(data), str(data), shots=4, val_per_class=3,
                                           config=replace(cfg, epochs=10, max_steps=3, patience=100))  # fmt: skip
    assert capped.epochs_run == 3 and len(capped.history) == 3
    st = experiments.evaluate_selftrain(run, str(data), str(data), shots=4, val_per_class=3,
                                        threshold=0.0, max_per_class=5, config=cfg)  # fmt: skip
    assert st["pool"] == 40 - 8 - 6 and st["pseudo_labels"] <= 10 and st["true_labels"] == 8
    assert "gain_top1" in st and st["student"]["train_images"] == 8 + st["pseudo_labels"]


def test_label_efficiency_writes_table_and_resumes_without_recomputing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import selfsup
    from selfsup import experiments
    from selfsup.tasks.classification import FinetuneConfig

    data = make_images(tmp_path / "imgs", classes=2, per_class=16, size=20)
    run = tmp_path / "run"
    selfsup.pretrain("simclr", data=str(data), out=run, steps=1, batch_size=8, image_size=16,
                     workers=0, progress=False, overrides=["monitor.knn=false", "method.proj_hidden_dim=32"])  # fmt: skip
    cfg = FinetuneConfig(epochs=1, batch_size=8, num_workers=0, patience=5)
    out = tmp_path / "le"
    kw = dict(shots=(2, 4), seeds=2, val_per_class=2, config=cfg, threshold=0.0, max_per_class=2)
    calls = {"n": 0}
    real = experiments._finetune

    def stop_after_first(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 1:  # the scratch model of 2 shots, then die in the SSL fine-tune
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(experiments, "_finetune", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        experiments.label_efficiency(run, str(data), str(data), out, **kw)  # type: ignore[arg-type]
    partial = json.loads((out / "label_efficiency.json").read_text())
    assert partial["finished"] is False
    kept = {(r["protocol"], r["shots"]): r for r in partial["rows"]}
    assert ("scratch", 2) in kept and ("ssl+linear", 4) in kept and ("scratch", 4) not in kept

    monkeypatch.setattr(experiments, "_finetune", real)
    res = experiments.label_efficiency(run, str(data), str(data), out, **kw)  # type: ignore[arg-type]
    got = {(r["protocol"], r["shots"]): r for r in res["rows"]}
    assert set(got) == {(p, k) for p in ("ssl+linear", "ssl+centroid", "scratch", "ssl+finetune",
                                         "ssl+selftrain") for k in (2, 4)} | {("ssl+linear (all labels)", -1)}  # fmt: skip
    assert all(got[key] == row for key, row in kept.items())  # reused, not recomputed
    assert res["finished"] and not math.isnan(got[("ssl+linear (all labels)", -1)]["balanced"])

    def no_nan(c: str) -> None:
        raise AssertionError(f"{c} in label_efficiency.json")

    json.loads((out / "label_efficiency.json").read_text(), parse_constant=no_nan)
    assert (out / "label_efficiency.png").exists()
    md = (out / "label_efficiency.md").read_text()
    assert "| scratch |" in md and "| ssl+selftrain |" in md
