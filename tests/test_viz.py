"""Figures (selfsup viz): every kind drawn from tiny real runs on real CIFAR-10 images, the
refusals, and checks that the pictures mean what they claim: Grad-CAM lights up a planted
square, PCA keeps separated groups apart, patch PCA finds the foreground, retrieval returns
the true nearest neighbours."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from viz_runs import cifar_subset, planted_squares, shared, tiny_mae, tiny_simclr

from selfsup import viz
from selfsup.cli import main
from selfsup.config import ConfigError
from selfsup.data import open_source
from selfsup.viz.common import CELL, DPI, ROW_LABEL, load_images, open_run, to_display
from selfsup.viz.curves import COLS, PANEL_H, PANEL_W
from selfsup.viz.embedding import HEIGHT, WIDTH, plot_embedding
from selfsup.viz.gradcam import fit_probe, grad_cam
from selfsup.viz.retrieval import nearest


@pytest.fixture(scope="module")
def data(cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared("cifar", tmp_path_factory, lambda d: cifar_subset(cifar10, d, 4, 10))


@pytest.fixture(scope="module")
def simclr_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared("simclr", tmp_path_factory, lambda d: tiny_simclr(data, d))


@pytest.fixture(scope="module")
def mae_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared("mae", tmp_path_factory, lambda d: tiny_mae(data, d))


def check_png(path: Path, width: int, rows_height: tuple[int, int]) -> np.ndarray:
    """A valid PNG ``width`` px wide, with a height in the range, and real content."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    img = Image.open(path)
    assert img.format == "PNG"
    w, h = img.size
    assert abs(w - width) <= 1, (w, width)
    assert rows_height[0] <= h <= rows_height[1], (h, rows_height)
    pix = np.asarray(img.convert("RGB"))
    colours = len(np.unique(pix.reshape(-1, 3), axis=0))
    assert colours > 200 and pix.std() > 20, f"{path.name}: {colours} colours, std {pix.std():.1f}"
    return pix


def px(inches: float) -> int:
    return round(inches * DPI)


# (kind, options, width in px, rows of image cells); the tiny SimCLR run logs loss, lr,
# img/s, probe accuracy, std ratio and RankMe: 6 panels, 3 a row.
SIMCLR_KINDS = [
    ("embedding-map", {"algo": "pca"}, px(WIDTH), None),
    ("retrieval", {"num_images": 3, "k": 4}, px(5 * CELL), 3),
    ("gradcam", {"num_images": 4, "class_index": "cat"}, px(4 * CELL + ROW_LABEL), 2),
    ("augmentations", {"num_images": 2}, px(3 * CELL), 2),
]
MAE_KINDS = [
    ("attention", {"num_images": 2}, px((2 + 3) * CELL), 2),
    ("patch-pca", {"num_images": 4}, px(4 * CELL + ROW_LABEL), 2),
    ("reconstruction", {"num_images": 4}, px(4 * CELL + ROW_LABEL), 3),
    # MAE draws one view a sample: 3 views are 3 training samples of the image
    ("augmentations", {"num_images": 2, "num_views": 3}, px(4 * CELL), 2),
]


def _check_kind(run: Path, data: Path, tmp_path: Path, kind: str, options: dict[str, object],
                width: int, rows: int | None) -> None:  # fmt: skip
    out = viz.make(kind, run, tmp_path / f"{kind}.png", data=str(data), **options)
    assert out == tmp_path / f"{kind}.png"
    height = (
        (px(HEIGHT), px(HEIGHT)) if rows is None else (px(rows * CELL), px(rows * 1.5 * CELL + 1.2))
    )
    check_png(out, width, height)


@pytest.mark.parametrize("kind,options,width,rows", SIMCLR_KINDS, ids=[k[0] for k in SIMCLR_KINDS])
def test_cnn_figures(simclr_run: Path, data: Path, tmp_path: Path, kind: str,
                     options: dict[str, object], width: int, rows: int | None) -> None:  # fmt: skip
    _check_kind(simclr_run, data, tmp_path, kind, options, width, rows)


@pytest.mark.parametrize("kind,options,width,rows", MAE_KINDS, ids=[k[0] for k in MAE_KINDS])
def test_vit_figures(mae_run: Path, data: Path, tmp_path: Path, kind: str,
                     options: dict[str, object], width: int, rows: int | None) -> None:  # fmt: skip
    _check_kind(mae_run, data, tmp_path, kind, options, width, rows)


def test_curves_has_one_panel_per_signal(simclr_run: Path, tmp_path: Path) -> None:
    out = viz.curves(simclr_run, tmp_path / "curves.png")
    check_png(out, px(COLS * PANEL_W), (px(2 * PANEL_H + 0.6), px(2 * PANEL_H + 0.6)))
    with pytest.raises(ConfigError, match=r"no metrics.csv"):
        viz.curves(tmp_path, tmp_path / "x.png")


def test_cli_writes_a_figure_and_refuses_clearly(
    simclr_run: Path, mae_run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nn.png"
    base = ["--checkpoint", str(simclr_run), "--data", str(data)]
    assert (
        main(["viz", "retrieval", *base, "--k", "3", "--num-images", "2", "--out", str(out)]) == 0
    )
    check_png(out, px(4 * CELL), (px(2 * CELL), px(3 * CELL + 1.2)))
    assert f"written: {out}" in capsys.readouterr().out
    refusals = [
        (["viz", "attention", *base], "needs a Vision Transformer backbone.*viz gradcam"),
        (["viz", "patch-pca", *base], "needs a Vision Transformer backbone.*gradcam"),
        (["viz", "reconstruction", *base], "masked autoencoder \\(mae\\) run.*simclr run"),
        (["viz", "gradcam", "--checkpoint", str(mae_run), "--data", str(data)], "CNN backbones.*viz attention"),
        (["viz", "retrieval", *base, "--algo", "pca"], "viz retrieval does not use --algo"),
        (["viz", "gradcam", *base, "--class-index", "zebra"], "'zebra' is not a class of the data"),
    ]  # fmt: skip
    for argv, message in refusals:
        assert main([*argv, "--out", str(tmp_path / "refused.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("selfsup: error:") and __import__("re").search(message, err), err
    assert not (tmp_path / "refused.png").exists()
    with pytest.raises(ConfigError, match="as PNG"):
        viz.make("curves", simclr_run, tmp_path / "curves.jpg")
    with pytest.raises(ConfigError, match="Did you mean retrieval"):
        viz.make("retreival", simclr_run, tmp_path / "x.png")


def test_gradcam_needs_labels(simclr_run: Path, data: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in list(data.rglob("*.jpg"))[:10]:
        shutil.copy(f, flat / f"{f.parent.name}_{f.name}")
    with pytest.raises(ConfigError, match="must be labelled"):
        viz.gradcam(simclr_run, tmp_path / "g.png", data=str(flat))


def test_gradcam_heat_lies_on_a_planted_square(
    cifar10: Path, simclr_run: Path, tmp_path: Path
) -> None:
    side = 10
    where = planted_squares(cifar10, tmp_path / "squares", photos=24, side=side, seed=0)
    run = open_run(simclr_run)
    source = open_source(str(tmp_path / "squares"))
    x, y, kept = load_images(run, source)
    bb = run.method.feature_extractor()
    # A 2-step run's BatchNorm running statistics are still near their initial values, so
    # its eval-mode features are badly scaled: re-estimate them on these images (one pass in
    # training mode, cumulative average), as a trained network has them.
    for m in bb.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    bb.train()
    with torch.no_grad():
        features = bb(x)
    bb.eval()
    probe = fit_probe(features, torch.tensor(y))
    assert probe.fitted_on == 38 and probe.heldout_accuracy is not None  # 20% of 48 held out
    square = source.classes.index("square")
    rows = [i for i in range(len(y)) if y[i] == square]
    heat, probs = grad_cam(bb, probe, x[rows], torch.full((len(rows),), square))
    assert heat.shape == (len(rows), 32, 32) and (heat >= 0).all()
    assert probs.shape == (len(rows), 2) and torch.allclose(probs.sum(1), torch.ones(len(rows)))
    ratios = []
    for j, i in enumerate(rows):
        top, left = where[Path(source.describe(kept[i])).name]
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[top : top + side, left : left + side] = True
        ratios.append(float(heat[j][inside].mean() / heat[j][~inside].mean().clamp_min(1e-12)))
    r = torch.tensor(ratios)
    # Heat per pixel on the square against the rest of the image.
    assert r.median() > 1.2 and (r > 1).float().mean() >= 0.85, sorted(ratios)


def test_pca_keeps_separated_groups_apart(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    d = 64
    a = torch.randn(d, generator=g)
    b = torch.randn(d, generator=g)
    x = torch.cat(
        [a + 0.3 * torch.randn(60, d, generator=g), b + 0.3 * torch.randn(40, d, generator=g)]
    )
    labels = torch.tensor([0] * 60 + [1] * 40)
    for algo in ("pca", "tsne"):
        pts = viz.project_2d(x, algo, seed=0)
        assert pts.shape == (100, 2) and torch.isfinite(pts).all()
        # Every point's nearest other point in the map belongs to its own group.
        dist = torch.cdist(pts, pts).fill_diagonal_(float("inf"))
        assert (labels[dist.argmin(1)] == labels).all(), algo
    pts = viz.project_2d(x, "pca")
    first = pts[:, 0]
    lo, hi = sorted([first[:60], first[60:]], key=lambda t: float(t.mean()))
    assert lo.max() < hi.min()  # split along the first principal component
    out = plot_embedding(pts, labels, ["left", "right"], tmp_path / "m.png", "two groups")
    check_png(out, px(WIDTH), (px(HEIGHT), px(HEIGHT)))


def test_umap_needs_umap_learn() -> None:
    x = torch.randn(30, 8)
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install umap-learn"):
            viz.project_2d(x, "umap")
    else:
        assert viz.project_2d(x, "umap").shape == (30, 2)
    with pytest.raises(ConfigError, match="not one of pca, tsne, umap"):
        viz.project_2d(x, "lda")


def test_patch_pca_finds_the_foreground() -> None:
    g = torch.Generator().manual_seed(0)
    b, gh, gw, d = 3, 6, 6, 32
    fg = torch.zeros(gh, gw, dtype=torch.bool)
    fg[2:5, 1:4] = True  # an object inside the frame
    obj, back = torch.randn(d, generator=g) * 2, torch.randn(d, generator=g) * 2
    tokens = torch.where(fg.flatten()[None, :, None], obj, back) + 0.2 * torch.randn(
        b, gh * gw, d, generator=g
    )
    rgb, mask = viz.patch_pca_rgb(tokens, (gh, gw))
    assert torch.equal(mask, fg.expand(b, -1, -1))
    assert rgb.shape == (b, gh, gw, 3) and (rgb[~mask] == 0).all() and rgb[mask].max() > 0.5
    assert (rgb >= 0).all() and (rgb <= 1).all()
    _, everything = viz.patch_pca_rgb(tokens, (gh, gw), threshold=0)
    assert everything.all()


def test_nearest_matches_brute_force_and_excludes_the_query() -> None:
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(50, 16, generator=g)
    q = bank[[3, 7]] + 0.01 * torch.randn(2, 16, generator=g)
    sims, idx = nearest(q, bank, 5)
    assert idx[:, 0].tolist() == [3, 7]
    cos = torch.nn.functional.cosine_similarity(q[:, None], bank[None], dim=-1)
    assert torch.allclose(sims, cos.topk(5, dim=1).values, atol=1e-5)
    _, idx = nearest(q, bank, 5, exclude=torch.tensor([3, 7]))
    assert 3 not in idx[0].tolist() and 7 not in idx[1].tolist()


def test_display_undoes_normalisation() -> None:
    img = torch.rand(2, 3, 8, 8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert np.allclose(to_display(x, mean, std), img.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    grey = to_display(x[:, :1], mean[:1], std[:1])
    assert grey.shape == (2, 8, 8, 3) and np.allclose(grey[..., 0], grey[..., 2])


def test_cli_knows_every_figure_kind_without_importing_matplotlib() -> None:
    import subprocess
    import sys

    from selfsup.cli.viz import KIND_NAMES

    assert tuple(viz.KINDS) == KIND_NAMES
    # Building every command's parser (what `selfsup --help` does) leaves matplotlib out.
    code = ("import sys; from selfsup.cli import build_parser; build_parser(); "
            "print('matplotlib' in sys.modules, 'selfsup.viz' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
