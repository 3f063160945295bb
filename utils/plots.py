"""Figures written into run folders.

Figures are drawn on a private ``matplotlib.figure.Figure`` with the Agg canvas, so nothing here
touches pyplot's global state or the user's backend (safe in scripts, tests and worker threads).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["new_figure", "save_figure", "plot_pr_curve", "plot_mc_curve", "plot_confusion_matrix",
           "plot_results", "plot_gamma_histograms", "plot_gamma_boxes", "plot_gamma_split"]

_MAX_LEGEND = 20  # beyond this many classes a per-class legend is unreadable


def new_figure(figsize=(9, 6), **subplot_kw):
    """(figure, axes) on an Agg canvas, independent of pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1, **subplot_kw)


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_pr_curve(px: np.ndarray, py: np.ndarray, ap: np.ndarray, save_path: str | Path,
                  names: Sequence[str] = ()) -> Path:
    """Precision-recall curve per class (IoU 0.5) and their mean.

    px: (K,) recall axis; py: (nc, K) precision; ap: (nc, T) with AP@0.5 in column 0.
    """
    fig, ax = new_figure()
    py = np.atleast_2d(py)
    per_class = 0 < len(py) <= _MAX_LEGEND
    for i, y in enumerate(py):
        name = names[i] if i < len(names) else str(i)
        ax.plot(px, y, linewidth=1, label=f"{name} {ap[i, 0]:.3f}" if per_class else None,
                color=None if per_class else "grey")
    if len(py):
        ax.plot(px, py.mean(0), linewidth=3, color="blue",
                label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title("Precision-Recall curve")
    return save_figure(fig, save_path)


def plot_mc_curve(px: np.ndarray, py: np.ndarray, save_path: str | Path, names: Sequence[str] = (),
                  xlabel: str = "Confidence", ylabel: str = "Metric") -> Path:
    """A metric (F1, precision or recall) against confidence, per class and averaged."""
    fig, ax = new_figure()
    py = np.atleast_2d(py)
    per_class = 0 < len(py) <= _MAX_LEGEND
    for i, y in enumerate(py):
        name = names[i] if i < len(names) else str(i)
        ax.plot(px, y, linewidth=1, label=name if per_class else None,
                color=None if per_class else "grey")
    if len(py):
        mean = py.mean(0)
        best = int(mean.argmax())
        ax.plot(px, mean, linewidth=3, color="blue",
                label=f"all classes {mean[best]:.2f} at {px[best]:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title(f"{ylabel}-{xlabel} curve")
    return save_figure(fig, save_path)


def plot_confusion_matrix(matrix: np.ndarray, save_path: str | Path, names: Sequence[str] = (),
                          normalize: bool = True) -> Path:
    """Heat map of a (nc+1, nc+1) detection confusion matrix (rows predicted, columns true).

    ``normalize`` divides every column by its total, so a column reads as "where the labels of this
    class went" (the last row is what was missed).
    """
    nc = matrix.shape[0] - 1
    data = np.asarray(matrix, dtype=np.float64)
    if normalize:
        data = data / (data.sum(0, keepdims=True) + 1e-9)
    data = np.where(data < 0.005, np.nan, data)  # blank cells instead of a wall of zeros
    labels = [str(n) for n in names][:nc] if 0 < len(names) <= 30 else []
    ticks = labels + ["background"] if len(labels) == nc else None
    fig, ax = new_figure(figsize=(12, 9))
    im = ax.imshow(data, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if nc < 30:
        for (r, c), v in np.ndenumerate(data):
            if not np.isnan(v):
                ax.text(c, r, f"{v:.2f}" if normalize else f"{v:.0f}", ha="center", va="center",
                        fontsize=8, color="white" if v > 0.6 * np.nanmax(data) else "black")
    if ticks:
        ax.set_xticks(range(nc + 1), ticks, rotation=90)
        ax.set_yticks(range(nc + 1), ticks)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion matrix" + (" (column-normalised)" if normalize else ""))
    return save_figure(fig, save_path)


def plot_results(csv_path: str | Path) -> Path:
    """results.csv of a training run -> results.png beside it (one panel per column)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    csv_path = Path(csv_path)
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    header, data = rows[0], np.array(rows[1:], dtype=float)
    cols = [k for k in range(1, len(header))]
    ncol = 5
    nrow = max((len(cols) + ncol - 1) // ncol, 1)
    fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow), tight_layout=True)
    FigureCanvasAgg(fig)
    for n, k in enumerate(cols):
        ax = fig.add_subplot(nrow, ncol, n + 1)
        ax.plot(data[:, 0] + 1, data[:, k], marker=".", lw=1.5)
        ax.set_title(header[k], fontsize=9)
    return save_figure(fig, csv_path.with_suffix(".png"), dpi=120)


def plot_gamma_histograms(snapshots: list, path: str | Path) -> Path | None:
    """|gamma| histograms per epoch as stacked, offset curves (bottom: before training)."""
    if not snapshots:
        return None
    import matplotlib
    hi = max(float(np.quantile(v, 0.995)) for _, v in snapshots) or 1.0
    bins = np.linspace(0, hi, 80)
    fig, ax = new_figure(figsize=(7, 1.5 + 0.35 * len(snapshots)))
    cmap = matplotlib.colormaps["viridis"]
    peak = max(np.histogram(v, bins)[0].max() for _, v in snapshots) or 1
    for k, (epoch, v) in enumerate(snapshots):
        h, _ = np.histogram(v, bins)
        y = h / peak * 1.5 + k
        c = cmap(k / max(len(snapshots) - 1, 1))
        ax.fill_between(bins[:-1], k, y, color=c, alpha=0.6)
        ax.plot(bins[:-1], y, color=c, lw=0.8)
        ax.text(hi * 1.01, k + 0.1, "start" if epoch < 0 else f"ep {epoch + 1}", fontsize=7)
    ax.set_xlabel("|gamma|")
    ax.set_yticks([])
    ax.set_title("BatchNorm |gamma| of the regularised layers per epoch (bottom: before training)")
    return save_figure(fig, path, dpi=120)


def plot_gamma_boxes(before: list, after: list, layers: list[int], path: str | Path) -> Path:
    """Per-layer |gamma| box plots before and after training."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(max(8, 0.18 * len(layers)), 6), tight_layout=True)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)]
    for ax, data, title in zip(axes, (before, after), ("before", "after")):
        ax.boxplot([np.asarray(d) for d in data], showfliers=False, widths=0.6)
        ax.set_ylabel("|gamma|")
        ax.set_title(f"per-layer |gamma| {title} training")
        ax.set_xticks(range(1, len(layers) + 1), [str(i) for i in layers], rotation=90, fontsize=6)
    axes[1].set_xlabel("cfg layer")
    return save_figure(fig, path, dpi=120)


def plot_gamma_split(series: dict, path: str | Path, floor: float = 1e-4, marks: Sequence[float] = (),
                     title: str = "") -> Path:
    """|gamma| histograms of several models on one log-x axis with a log count axis.

    ``series``: label -> |gamma| values. A log axis shows a pile near zero and a group of large
    gammas as two separate humps; values below ``floor`` (exact zeros included) are counted in the
    first bin, labelled ``<= floor``. ``marks``: x positions of dashed vertical lines (thresholds).
    """
    values = {k: np.clip(np.abs(np.asarray(v, dtype=np.float64)).ravel(), floor, None) for k, v in series.items()}
    hi = max([float(v.max()) for v in values.values() if v.size] + [floor * 10])
    bins = np.geomspace(floor, hi * 1.05, 61)
    fig, ax = new_figure(figsize=(8, 4.5))
    for label, v in values.items():
        ax.hist(v, bins=bins, histtype="step", linewidth=1.6, label=f"{label} (n={v.size})")
    for x in marks:
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)  # a bin holding one channel stays visible
    ax.set_xlabel(f"|gamma| (values <= {floor:g} in the first bin)")
    ax.set_ylabel("channels")
    ax.legend(loc="upper center")
    ax.set_title(title or "BatchNorm |gamma| of the prunable layers")
    return save_figure(fig, path, dpi=120)
