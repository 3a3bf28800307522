"""Label-efficiency protocols over a run: few-shot, fine-tuning, scratch, self-training, and
the label-efficiency table that puts them side by side.

Protocol (the same for every number): labelled subsets are stratified, seeded draws of k
images a class from the training split; a validation split of ``val_per_class`` further
images a class is carved from the training split (never the test split) and used only to
choose the epoch to keep; the test split is evaluated once per model. Hyper-parameters are
fixed (:class:`~selfsup.tasks.classification.FinetuneConfig`), identical for SSL and scratch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from selfsup import api
from selfsup.config import Config, ConfigError
from selfsup.data import ImageSource, stratified_split, subset
from selfsup.eval.fewshot import FewShotResult, fewshot_eval, sample_shots
from selfsup.eval.metrics import save_confusion_png
from selfsup.runs import load_run
from selfsup.runtime import resolve_device, resolve_precision
from selfsup.tasks.classification import (
    Classifier,
    FinetuneConfig,
    TrainReport,
    carve_validation,
    predict,
    select_pseudo_labels,
    train_classifier,
)


class _Setup:
    """A run's config and backbone (trained or random-init) plus the labelled sources."""

    def __init__(self, run: str | Path, train: str, test: str, data_root: str | None,
                 random_init: bool, limit_test: int | None = None) -> None:  # fmt: skip
        loaded = load_run(run, random_init)
        self.cfg: Config = loaded.config
        method = loaded.method
        self.backbone = method.feature_extractor()
        self.embed_dim = int(method.backbone.embed_dim)
        self.train: ImageSource = api._open(train, "train", data_root)
        self.test: ImageSource = subset(api._open(test, "test", data_root), limit_test, seed=0)
        if self.train.labels is None or self.test.labels is None:
            raise ConfigError("label-efficiency protocols need labelled folders (<class>/<image>) "
                              "or named sets for --train and --test.")  # fmt: skip
        self.num_classes = max(max(self.train.labels), max(self.test.labels)) + 1
        d = self.cfg.data
        assert d.image_size is not None
        self.kw: dict[str, Any] = dict(image_size=d.image_size, mean=d.mean, std=d.std,
                                       channels=self.cfg.backbone.in_chans)  # fmt: skip
        self.classes = self.train.classes or [str(i) for i in range(self.num_classes)]


def labelled_subset(
    labels: list[int], shots: int | None, fraction: float | None, seed: int
) -> list[int]:
    """k images a class (``shots``) or a stratified ``fraction`` of all labelled images."""
    if (shots is None) == (fraction is None):
        raise ConfigError("give exactly one of shots (images a class) or fraction (0-1].")
    if shots is not None:
        return sample_shots(labels, shots, seed)
    assert fraction is not None
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}.")
    n = len(labels)
    take, _ = stratified_split(labels, n, max(1, round(fraction * n)), seed)
    return take


def evaluate_fewshot(run: str | Path, train: str, test: str, shots: tuple[int, ...] = (1, 5, 10, 30, 100),
                     seeds: int = 5, **kw: Any) -> FewShotResult:  # fmt: skip
    """k-shot linear and nearest-centroid accuracy on frozen features (mean, std over seeds)."""
    ftr, ltr, fte, lte = api._train_test_features(run, train, test, **kw)
    return fewshot_eval(ftr, ltr, fte, lte, shots=shots, seeds=seeds)


def evaluate_finetune(
    run: str | Path, train: str, test: str, *, shots: int | None = None,
    fraction: float | None = None, val_per_class: int = 10, random_init: bool = False,
    strong_augment: bool = False, config: FinetuneConfig | None = None,
    data_root: str | None = None, confusion_png: str | Path | None = None,
    limit_test: int | None = None,
) -> TrainReport:  # fmt: skip
    """Fine-tune the run's backbone (or, with ``random_init``, train the same network from
    scratch with the full learning rate) on a labelled subset; report test metrics."""
    _, report = _finetune(run, train, test, shots, fraction, val_per_class, random_init,
                          strong_augment, config or FinetuneConfig(), data_root, limit_test)  # fmt: skip
    if confusion_png:
        save_confusion_png(report.test, confusion_png)
    return report


def _finetune(run: str | Path, train: str, test: str, shots: int | None, fraction: float | None,
              val_per_class: int, random_init: bool, strong_augment: bool, cfg: FinetuneConfig,
              data_root: str | None, limit_test: int | None = None) -> tuple[Classifier, TrainReport]:  # fmt: skip
    s = _Setup(run, train, test, data_root, random_init, limit_test)
    assert s.train.labels is not None
    train_idx = labelled_subset(s.train.labels, shots, fraction, cfg.seed)
    val_idx = carve_validation(s.train.labels, val_per_class, train_idx, cfg.seed)
    return train_classifier(
        s.backbone, s.embed_dim, s.num_classes, s.train, train_idx,
        [s.train.labels[i] for i in train_idx], val_idx, s.test, cfg=cfg,
        backbone_lr_scale=1.0 if random_init else None, strong_augment=strong_augment,
        classes=s.classes, **s.kw,
    )  # fmt: skip


def evaluate_selftrain(
    run: str | Path, train: str, test: str, *, shots: int | None = None,
    fraction: float | None = None, val_per_class: int = 10, threshold: float = 0.7,
    max_per_class: int = 500, pool_limit: int | None = 10000,
    config: FinetuneConfig | None = None, data_root: str | None = None,
    teacher: tuple[Classifier, TrainReport] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Self-training with pseudo-labels: a fine-tuned teacher labels the unlabelled pool
    (the training images outside the labelled and validation sets); confident,
    class-balanced pseudo-labels plus the true labels train a student from the pretrained
    backbone under strong augmentation. Reports teacher, student and the gain."""
    cfg = config or FinetuneConfig()
    s = _Setup(run, train, test, data_root, random_init=False)
    labels = s.train.labels
    assert labels is not None
    train_idx = labelled_subset(labels, shots, fraction, cfg.seed)
    val_idx = carve_validation(labels, val_per_class, train_idx, cfg.seed)
    true_labels = [labels[i] for i in train_idx]
    if teacher is None:  # the fine-tuned SSL model of the same labels
        teacher = train_classifier(
            s.backbone, s.embed_dim, s.num_classes, s.train, train_idx, true_labels, val_idx,
            s.test, cfg=cfg, classes=s.classes, **s.kw,
        )  # fmt: skip
    teacher_model, teacher_report = teacher
    used = set(train_idx) | set(val_idx)
    pool = [i for i in range(len(s.train)) if i not in used]
    if pool_limit is not None and len(pool) > pool_limit:
        g = torch.Generator().manual_seed(cfg.seed)
        pool = sorted(
            torch.tensor(pool)[torch.randperm(len(pool), generator=g)[:pool_limit]].tolist()
        )
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    probs = predict(teacher_model.to(device), s.train, pool, device=device, precision=precision,
                    num_workers=cfg.num_workers, **s.kw)  # fmt: skip
    pos, pseudo = select_pseudo_labels(probs, threshold, max_per_class)
    chosen = [pool[p] for p in pos]
    pseudo_acc = (
        float(sum(int(labels[i] == y) for i, y in zip(chosen, pseudo, strict=True)) / len(chosen) * 100)
        if chosen else float("nan")
    )  # fmt: skip
    _, student = train_classifier(
        s.backbone, s.embed_dim, s.num_classes, s.train, train_idx + chosen, true_labels + pseudo,
        val_idx, s.test, cfg=cfg, strong_augment=True, classes=s.classes, **s.kw,
    )  # fmt: skip
    return {
        "teacher": teacher_report.as_dict(),
        "student": student.as_dict(),
        "gain_top1": student.test.top1 - teacher_report.test.top1,
        "pseudo_labels": len(chosen),
        "pseudo_label_accuracy": pseudo_acc,
        "pool": len(pool),
        "threshold": threshold,
        "true_labels": len(train_idx),
    }


def label_efficiency(
    run: str | Path, train: str, test: str, out: str | Path, *,
    shots: tuple[int, ...] = (10, 30, 100), seeds: int = 3, val_per_class: int = 10,
    protocols: tuple[str, ...] = ("scratch", "linear", "finetune", "selftrain"),
    config: FinetuneConfig | None = None, data_root: str | None = None,
    threshold: float = 0.7, max_per_class: int = 500, pool_limit: int | None = 10000,
    full_labels: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy against labels a class for each protocol; writes ``label_efficiency.md``,
    ``.json`` and ``.png`` (and confusion matrices) into ``out``."""
    t0 = time.perf_counter()
    cfg = config or FinetuneConfig()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "label_efficiency.json"
    # Everything a row depends on; rows of an interrupted run with the same settings are
    # reused, so rerunning the same command continues where it stopped.
    settings: dict[str, Any] = {"run": str(Path(run).resolve()), "train": train, "test": test,
                                "seeds": seeds, "val_per_class": val_per_class,
                                "finetune_config": asdict(cfg), "data_root": data_root,
                                "threshold": threshold, "max_per_class": max_per_class,
                                "pool_limit": pool_limit}  # fmt: skip
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back from disk
    previous: dict[tuple[str, int], dict[str, Any]] = {}
    if json_path.exists():
        try:
            saved = json.loads(json_path.read_text())
        except json.JSONDecodeError:
            saved = {}
        if saved.get("settings") == settings:
            previous = {(r["protocol"], r["shots"]): r for r in saved.get("rows", [])}
    rows: list[dict[str, Any]] = []

    def done(protocol: str, k: int) -> bool:
        r = previous.get((protocol, k))
        if r is not None and r not in rows:
            rows.append(r)
        return r is not None

    def add(protocol: str, k: int, top1: float, balanced: float, std: float | None,
            labels: int, seconds: float) -> None:  # fmt: skip
        rows[:] = [r for r in rows if (r["protocol"], r["shots"]) != (protocol, k)]
        rows.append({"protocol": protocol, "shots": k, "top1": round(top1, 2),
                     "balanced": round(balanced, 2), "top1_std": None if std is None else round(std, 2),
                     "labels_used": labels, "seconds": round(seconds, 1)})  # fmt: skip
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps({"settings": settings, "rows": rows, "finished": False}, indent=2)
        )
        tmp.replace(json_path)

    common: dict[str, Any] = {"data_root": data_root}
    if "linear" in protocols:
        todo = tuple(k for k in shots if not all([done("ssl+linear", k), done("ssl+centroid", k)]))
        if todo:
            few = evaluate_fewshot(run, train, test, shots=todo, seeds=seeds, **common)
            for fr in few.results:
                add("ssl+linear", fr.shots, fr.linear_top1_mean, fr.linear_balanced_mean,
                    fr.linear_top1_std, fr.labels_used, few.seconds / len(few.results))  # fmt: skip
                add("ssl+centroid", fr.shots, fr.centroid_top1_mean, fr.centroid_balanced_mean,
                    fr.centroid_top1_std, fr.labels_used, 0.0)  # fmt: skip
        if full_labels and not done("ssl+linear (all labels)", -1):
            lin = api.evaluate_linear(run, train, test, **common)
            add("ssl+linear (all labels)", -1, lin.top1, lin.balanced, None,
                lin.n_train + lin.n_val, lin.seconds)  # fmt: skip
    for k in shots:
        kw: dict[str, Any] = dict(shots=k, val_per_class=val_per_class, config=cfg, **common)
        if "scratch" in protocols and not done("scratch", k):
            r = evaluate_finetune(run, train, test, random_init=True,
                                  confusion_png=folder / f"confusion_scratch_{k}shot.png", **kw)  # fmt: skip
            add("scratch", k, r.test.top1, r.test.balanced, None, r.train_images, r.seconds)
        need_finetune = "finetune" in protocols and not done("ssl+finetune", k)
        need_selftrain = "selftrain" in protocols and not done("ssl+selftrain", k)
        teacher = None
        if need_finetune or need_selftrain:  # the fine-tuned model is the self-training teacher
            teacher = _finetune(run, train, test, k, None, val_per_class, False, False, cfg,
                                data_root)  # fmt: skip
            rep = teacher[1]
            save_confusion_png(rep.test, folder / f"confusion_finetune_{k}shot.png")
            if "finetune" in protocols and need_finetune:
                add("ssl+finetune", k, rep.test.top1, rep.test.balanced, None, rep.train_images,
                    rep.seconds)  # fmt: skip
        if need_selftrain:
            st = evaluate_selftrain(run, train, test, threshold=threshold, max_per_class=max_per_class,
                                    pool_limit=pool_limit, teacher=teacher, **kw)  # fmt: skip
            stu = st["student"]
            add("ssl+selftrain", k, stu["test"]["top1"], stu["test"]["balanced"], None,
                st["true_labels"], stu["seconds"] + st["teacher"]["seconds"])  # fmt: skip
    result = {"run": str(run), "train": train, "test": test, "shots": list(shots), "seeds": seeds,
              "val_per_class": val_per_class, "finetune_config": asdict(cfg), "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1), "settings": settings,
              "finished": True}  # fmt: skip
    json_path.write_text(json.dumps(result, indent=2))
    (folder / "label_efficiency.md").write_text(_markdown(result))
    _plot(rows, folder / "label_efficiency.png")
    return result


def _markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    shots = [k for k in result["shots"]]
    lines = [
        f"Label efficiency of `{result['run']}` (train `{result['train']}`, test `{result['test']}`).",
        "Top-1 % (balanced accuracy %) on the test set; linear/centroid: mean ± std over "
        f"{result['seeds']} draws; validation: {result['val_per_class']} extra images a class.",
        "",
        "| protocol | " + " | ".join(f"{k} labels/class" for k in shots) + " |",
        "|---|" + "---:|" * len(shots),
    ]
    for p in protocols:
        cells = []
        for k in shots:
            r = next((r for r in rows if r["protocol"] == p and r["shots"] == k), None)
            if r is None:
                cells.append("-")
            else:
                std = f" ± {r['top1_std']:.1f}" if r["top1_std"] else ""
                cells.append(f"{r['top1']:.1f}{std} ({r['balanced']:.1f})")
        if any(c != "-" for c in cells):
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    full = [r for r in rows if r["shots"] == -1]
    for r in full:
        lines.append("")
        lines.append(f"{r['protocol']}: top-1 {r['top1']:.2f}% with {r['labels_used']:,} labels.")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for p in dict.fromkeys(r["protocol"] for r in rows if r["shots"] > 0):
        pts = sorted((r["shots"], r["top1"], r["top1_std"] or 0.0) for r in rows
                     if r["protocol"] == p and r["shots"] > 0)  # fmt: skip
        xs, ys, es = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=p)
    for r in rows:
        if r["shots"] == -1:
            ax.axhline(r["top1"], ls="--", color="gray", lw=1, label=r["protocol"])
    ax.set_xscale("log")
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
