"""What every figure needs: a run opened once (config, trained method, folder), its images
under the run's own evaluation transform, normalisation undone for display, and matplotlib
figures laid out on a fixed grid and saved as PNG with the Agg backend.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, never
through ``pyplot``: no global state, no display needed, safe in notebooks and servers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from selfsup.config import Config, ConfigError
from selfsup.data import (
    NAMED_SETS,
    EvalDataset,
    ImageSource,
    SubsetSource,
    open_source,
    stratified_split,
)
from selfsup.methods.base import Method
from selfsup.runs import load_run
from selfsup.transforms import eval_transform

# Layout of image grids, in inches (at DPI dots per inch): one square cell per image, a
# caption line under it where captions are drawn, a band for the title on top and a column
# for row labels on the left where rows are labelled.
DPI = 100
CELL = 1.2
CAPTION = 0.22
TITLE = 0.42
TITLE_LINE = 0.2
TITLE_SIZE = 11
TITLE_CHAR_PX = 7.8  # average width of a character of the title font, in pixels
ROW_LABEL = 1.1


@dataclass
class Run:
    """A trained run, opened once: its folder, checkpoint, resolved config and method (on
    the CPU, in eval mode)."""

    folder: Path
    checkpoint: Path
    cfg: Config
    method: Method

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def image_size(self) -> int:
        size = self.cfg.data.image_size
        if size is None:  # every saved run has it resolved; a hand-made config may not
            raise ConfigError(f"the config of {self.folder} has no data.image_size.")
        return size

    @property
    def mean(self) -> list[float]:
        return list(self.cfg.data.mean)

    @property
    def std(self) -> list[float]:
        return list(self.cfg.data.std)

    @property
    def channels(self) -> int:
        return self.cfg.backbone.in_chans

    @property
    def describe(self) -> str:
        return f"{self.cfg.method.name} / {self.cfg.backbone.name}"


def open_run(run: str | Path | Run) -> Run:
    """A run folder or checkpoint file -> :class:`Run` (raises CheckpointError)."""
    if isinstance(run, Run):
        return run
    loaded = load_run(run)
    return Run(
        folder=loaded.folder, checkpoint=loaded.file, cfg=loaded.config, method=loaded.method
    )


def data_spec(
    run: Run, data: str | None, what: str, data_root: str | None = None
) -> tuple[str, str | None]:
    """``data`` and its root; unset, the run's own training data (``data.path``) when it is
    still where the run found it."""
    if data is not None:
        return data, data_root
    spec = run.cfg.data.path
    if not spec or (not Path(spec).exists() and spec.lower() not in NAMED_SETS):
        raise ConfigError(
            f"{what} needs images: pass --data (a folder of images or a named set such as "
            f"cifar10); the run's own data.path {spec!r} is not available here."
        )
    return spec, data_root or run.cfg.data.root


def open_images(
    run: Run, data: str | ImageSource | None, what: str, split: str = "test",
    data_root: str | None = None,
) -> ImageSource:  # fmt: skip
    """The images of ``data`` (a folder, a named set or a source); unset, the run's own
    training data (see :func:`data_spec`)."""
    if data is not None and not isinstance(data, str):
        return data
    spec, root = data_spec(run, data, what, data_root)
    return open_source(spec, split=split, root=root)


def sample(source: ImageSource, n: int, seed: int = 0) -> list[int]:
    """``n`` indices of ``source``, class-balanced when it is labelled, reproducibly."""
    taken, _ = stratified_split(source.labels, len(source), n, seed)
    return taken


def load_images(
    run: Run, source: ImageSource, indices: Sequence[int] | None = None
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Images of ``source`` (all, or ``indices``) as the run's evaluation transform gives
    them: normalised (B, C, S, S), their labels (-1: unknown) and the indices that could be
    read (unreadable files are left out)."""
    idx = list(range(len(source))) if indices is None else list(indices)
    ds = EvalDataset(
        SubsetSource(source, idx), eval_transform(run.image_size, run.mean, run.std),
        run.image_size, run.channels, bad_files="skip",
    )  # fmt: skip
    xs: list[torch.Tensor] = []
    labels: list[int] = []
    kept: list[int] = []
    for j, i in enumerate(idx):
        x, y, ok = ds[j]
        if ok:
            xs.append(x)
            labels.append(int(y))
            kept.append(i)
    if not xs:
        raise ConfigError(
            f"none of the {len(idx)} chosen images of {source.name} could be read; check "
            "the folder with `selfsup data check`."
        )
    return torch.stack(xs), labels, kept


@torch.no_grad()
def embed(run: Run, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features (B, D) of normalised images by the run's feature extractor, in float32."""
    net = run.method.feature_extractor().eval()
    out = [net(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def to_display(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (B, C, H, W) -> displayable float array (B, H, W, 3) in [0, 1]: the
    normalisation undone, one channel repeated to grey, more than three cut to the first
    three."""
    x = images.detach().float().cpu()
    c = x.shape[1]
    m = torch.tensor(list(mean)[:c] + [0.0] * (c - len(mean))).view(1, -1, 1, 1)
    s = torch.tensor(list(std)[:c] + [1.0] * (c - len(std))).view(1, -1, 1, 1)
    x = (x * s + m).clamp(0, 1)
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    elif c > 3:
        x = x[:, :3]
    out: np.ndarray = x.permute(0, 2, 3, 1).numpy()
    return out


def data_name(source: ImageSource) -> str:
    """A short name of the images for titles: the last two parts of a folder path
    (``cifar10/test``), or the named set."""
    parts = Path(source.name).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else source.name


def class_name(source: ImageSource, label: int) -> str:
    if label < 0:
        return "?"
    classes = source.classes
    return classes[label] if label < len(classes) else str(label)


# ----------------------------------------------------------------------------- figures


def wrap_title(title: str, width: float) -> str:
    """``title`` broken into lines that fit ``width`` inches at the title's font size."""
    per_line = max(24, int(width * DPI / TITLE_CHAR_PX))
    return "\n".join(textwrap.fill(part, per_line) for part in title.split("\n"))


def title_inches(title: str, width: float) -> float:
    """Height of the band that holds ``title`` once wrapped to ``width`` inches."""
    return TITLE + TITLE_LINE * wrap_title(title, width).count("\n")


def figure(width: float, height: float, title: str) -> Figure:
    """An empty figure of ``width`` x ``height`` inches, drawn by Agg, with ``title``
    wrapped to its width."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.suptitle(wrap_title(title, width), fontsize=TITLE_SIZE)
    return fig


def grid_inches(
    rows: int, cols: int, captions: bool = False, row_labels: bool = False, title: str = ""
) -> tuple[float, float]:
    """Width and height (inches) of an image grid: what :func:`image_grid` draws."""
    w = cols * CELL + (ROW_LABEL if row_labels else 0.0)
    h = rows * (CELL + (CAPTION if captions else 0.0)) + title_inches(title, w)
    return w, h


def image_grid(
    rows: int, cols: int, title: str, captions: bool = False, row_labels: bool = False
) -> tuple[Figure, np.ndarray]:
    """A titled figure with a rows x cols grid of image cells, axes hidden: (figure,
    axes array (rows, cols)). Sizes follow :func:`grid_inches` exactly."""
    w, h = grid_inches(rows, cols, captions, row_labels, title)
    fig = figure(w, h, title)
    left = (ROW_LABEL if row_labels else 0.0) / w
    top = 1.0 - title_inches(title, w) / h
    bottom = (CAPTION if captions else 0.02) / h
    hspace = (CAPTION / CELL if captions else 0.05) + 0.02
    fig.subplots_adjust(left=left, right=1.0, bottom=bottom, top=top, wspace=0.05, hspace=hspace)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig, axes


def show(ax: Axes, image: np.ndarray, border: str | None = None, caption: str | None = None) -> None:  # fmt: skip
    """Draw one displayable image (H, W, 3) in a cell, with an optional coloured border and
    a caption under it."""
    ax.imshow(image, interpolation="nearest")
    if border is not None:
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_edgecolor(border)
            spine.set_linewidth(3)
    if caption is not None:
        ax.set_xlabel(caption, fontsize=8, labelpad=2)


def overlay(ax: Axes, image: np.ndarray, heat: np.ndarray, alpha: float = 0.5,
            caption: str | None = None, scale: tuple[float, float] | None = None) -> None:  # fmt: skip
    """An image with a heat map (h, w), rescaled to [0, 1], drawn over it (jet colours).

    ``scale``: the (low, high) values mapped to 0 and 1 (default: this map's own minimum and
    maximum); give one scale to a clip's frames so that their colours compare."""
    h, w = image.shape[:2]
    lo, hi = (float(heat.min()), float(heat.max())) if scale is None else scale
    norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    show(ax, image, caption=caption)
    ax.imshow(norm, cmap="jet", alpha=alpha, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
              interpolation="bilinear", vmin=0.0, vmax=1.0)  # fmt: skip


def row_label(ax: Axes, text: str) -> None:
    ax.set_ylabel(text, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)


def save(fig: Figure, out: str | Path) -> Path:
    """Write ``fig`` as a PNG (parent folders created) and return the path."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ConfigError(
            f"figures are written as PNG: give --out a .png file name, not {str(path)!r}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": "selfsup"})
    return path
