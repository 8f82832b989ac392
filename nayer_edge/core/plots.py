"""Figures written to disk: synthetic-sample grids, training curves, accuracy-versus-time benchmarks.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never through
pyplot, so no global backend is switched, no GUI is needed and no figure leaks between calls.
matplotlib is imported inside the functions. Every file is written atomically
(:func:`nayer_edge.core.atomic.atomic_write`: a temporary file in the same folder, fsync, rename).

Example::

    >>> save_training_curves([{"epoch": 1, "loss_kd": 0.5, "agreement": 0.7, "wall_seconds": 3.0}],
    ...                      "runs/demo/curves.png")   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from .atomic import atomic_write

MAX_GRID_ROWS = 20
_LOSS_KEYS = ("loss_bn", "loss_oh", "loss_adv", "loss_kd")
_SCORE_KEYS = ("student_accuracy", "agreement")


def _new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(fig, path: str | os.PathLike) -> Path:
    """Through :func:`~nayer_edge.core.atomic.atomic_write`: its temporary file (``.NAME.*.tmp``) is one that
    :func:`~nayer_edge.core.atomic.remove_temporaries` clears after a kill, and a full disk is one error line."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, bbox_inches="tight"))
    return path


def _finite(value) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def save_sample_grid(
    images: Tensor,
    labels: Tensor,
    class_names: list[str],
    path: str | os.PathLike,
    per_class: int = 8,
    *,
    title: str | None = None,
) -> Path:
    """A grid of samples: one row per class (the first ``per_class`` samples of that class), the class
    name on the left. Shows at most the first 20 classes; grayscale for single-channel images.

    ``images`` is ``[N, C, H, W]`` with values in [0, 1] (clamped), C is 1 or 3; ``labels`` is ``[N]``.

    >>> save_sample_grid(torch.rand(20, 1, 28, 28), torch.arange(20) % 10,
    ...                  [str(d) for d in range(10)], "runs/demo/samples.png")   # doctest: +SKIP
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C in (1, 3), got {tuple(images.shape)}")
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {images.shape[0]} images")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")

    imgs = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    labels = labels.detach().to("cpu").long()
    n, c, h, w = imgs.shape
    rows = min(len(class_names), MAX_GRID_ROWS)
    if rows == 0:
        raise ValueError("class_names is empty")
    pad = max(1, min(h, w) // 16)

    # One mosaic image, drawn with a single imshow: far faster than a subplot per sample.
    mosaic = torch.ones(c, rows * (h + pad) + pad, per_class * (w + pad) + pad)
    for row in range(rows):
        idx = (labels == row).nonzero().flatten()[:per_class]
        for col, i in enumerate(idx.tolist()):
            top, left = pad + row * (h + pad), pad + col * (w + pad)
            mosaic[:, top : top + h, left : left + w] = imgs[i]

    cell = 0.7 if max(h, w) <= 64 else 1.0
    fig = _new_figure((per_class * cell + 1.8, rows * cell + (0.5 if title else 0.2)))
    ax = fig.add_subplot(1, 1, 1)
    if c == 1:
        ax.imshow(mosaic[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(rows)])
    ax.set_yticklabels([str(name) for name in class_names[:rows]])
    ax.set_xticks([])
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    return _save_atomic(fig, path)


def _losses_panel(ax, history: list[dict]) -> None:
    extra = sorted({k for r in history for k in r if k.startswith("loss_") and k not in _LOSS_KEYS})
    plotted = False
    for key in (*_LOSS_KEYS, *extra):
        points = []
        for i, r in enumerate(history):
            v = _finite(r.get(key))
            x = _finite(r.get("epoch"))
            if v is not None:
                points.append((x if x is not None else float(i), v))
        # Log scale needs positive values; an adversarial loss is often negative, so plot its magnitude.
        negative = any(v < 0 for _, v in points)
        points = [(x, abs(v)) for x, v in points if abs(v) > 0]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=f"|{key}|" if negative else key)
        plotted = True
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("losses")
    if plotted:
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no losses recorded", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3)


def _scores_panel(ax, history: list[dict]) -> None:
    use_time = any(_finite(r.get("wall_seconds")) is not None for r in history)
    xkey = "wall_seconds" if use_time else "epoch"
    plotted = False
    for key in _SCORE_KEYS:
        points = []
        for i, r in enumerate(history):
            v = _finite(r.get(key))
            x = _finite(r.get(xkey))
            if v is not None and (x is not None or not use_time):
                points.append((x if x is not None else float(i), v))
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=key.replace("_", " "))
        plotted = True
    ax.set_xlabel("wall-clock seconds" if use_time else "epoch")
    ax.set_ylabel("accuracy")
    ax.set_title("student accuracy / teacher agreement")
    if plotted:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3)


def save_training_curves(history: list[dict], path: str | os.PathLike) -> Path:
    """Two panels: the losses (log scale) against epoch, and student accuracy / teacher agreement
    against wall-clock seconds.

    ``history`` rows may hold ``wall_seconds``, ``epoch``, ``loss_bn``, ``loss_oh``, ``loss_adv``,
    ``loss_kd`` (any other ``loss_*`` key is plotted too), ``agreement`` and ``student_accuracy``;
    any of them may be missing or None. Negative losses are plotted as magnitudes.

    >>> save_training_curves([{"epoch": 0, "loss_kd": 1.2}, {"epoch": 1, "loss_kd": 0.8,
    ...                        "student_accuracy": 0.6, "wall_seconds": 10.0}], "curves.png")  # doctest: +SKIP
    """
    history = [dict(r) for r in history]
    fig = _new_figure((11.0, 4.0))
    _losses_panel(fig.add_subplot(1, 2, 1), history)
    _scores_panel(fig.add_subplot(1, 2, 2), history)
    fig.tight_layout()
    return _save_atomic(fig, path)


def save_accuracy_vs_time(
    series: dict[str, list[tuple[float, float]]],
    path: str | os.PathLike,
    title: str,
    teacher_accuracy: float | None = None,
    *,
    bands: dict[str, list[tuple[float, float, float]]] | None = None,
) -> Path:
    """Benchmark plot: one line per method through its ``(seconds, accuracy)`` points, an optional
    dashed horizontal teacher line, and optional shaded ``(seconds, low, high)`` bands per method
    (for example min/max over seeds), drawn in the method's colour.

    >>> save_accuracy_vs_time({"nayer": [(10, 0.5), (60, 0.9)], "dfad": [(10, 0.3), (60, 0.7)]},
    ...                       "bench.png", "MNIST, LeNet-5", teacher_accuracy=0.99)   # doctest: +SKIP
    """
    fig = _new_figure((7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    bands = bands or {}
    colors = {}
    for name, points in series.items():
        pts = sorted((float(s), float(a)) for s, a in points)
        if not pts:
            continue
        xs, ys = zip(*pts)
        (line,) = ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=name)
        colors[name] = line.get_color()
    for name, band in bands.items():
        pts = sorted((float(s), float(lo), float(hi)) for s, lo, hi in band)
        if not pts:
            continue
        xs, lo, hi = zip(*pts)
        color = colors.get(name)
        if color is None:  # a band without a line still gets a colour and a legend entry
            (line,) = ax.plot([], [], label=name)
            color = colors[name] = line.get_color()
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
    if teacher_accuracy is not None:
        ax.axhline(float(teacher_accuracy), color="black", linestyle="--", linewidth=1,
                   label=f"teacher ({float(teacher_accuracy):.4g})")
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if colors or teacher_accuracy is not None:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save_atomic(fig, path)
