"""The comparison figure of one run: loss per epoch, loss per update, data and fits, (w, b) paths.

matplotlib is imported at the top: the report step imports this module only to draw a figure.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tasks.history import History
from tasks.report.descent_paths import panel_paths
from tasks.report.style import (
    DPI,
    LABEL,
    NOTE,
    PANEL_TITLE,
    TEXT,
    WIDTH,
    drawable,
    log_limits,
    log_scale,
    markevery,
    method_colour,
    method_name,
    padded,
    reference_line,
    text_sizes,
)
from tasks.stats import Moments
from tasks.storage import atomic_path

FIGSIZE = (WIDTH, 7.4)
MAX_POINTS = 3000  # data points drawn in the data panel


def _overflow_epoch(h: History) -> int | None:
    """First epoch whose loss, w or b is not finite, or None."""
    bad = ~(np.isfinite(h.loss) & np.isfinite(h.w) & np.isfinite(h.b))
    return int(h.epoch[bad.argmax()]) if bad.any() else None


def _label(h: History) -> str:
    """Legend label of a method: name, step size and, if any, how it failed."""
    text = f"{method_name(h.method)}, step {h.lr:g}"
    if h.diverged and h.lr > h.stability_bound:
        text += f" > stable bound {h.stability_bound:.3g}"
    if h.diverged:
        text += " — DIVERGED"
    overflow = _overflow_epoch(h)
    if overflow is not None:
        text += f", inf/nan from epoch {overflow}"
    return text


def _panel_loss(ax: Axes, histories: Sequence[History], floor: float, use_updates: bool) -> None:
    """Loss panel: per epoch (log y) or per parameter update (log-log), with a cross where
    a method diverged and a line at the least-squares floor."""
    drawn = [np.array([floor])]
    for i, h in enumerate(histories):
        xs = (h.updates if use_updates else h.epoch).astype(np.float64)
        ok = drawable(h.loss) & (h.loss > 0) & ((xs > 0) if use_updates else True)
        colour = method_colour(h.method, i)
        style = {"color": colour, "lw": 1.4, "ms": 2.6, "zorder": 3}
        ax.plot(xs[ok], h.loss[ok], "-o", markevery=markevery(int(ok.sum())), **style)
        drawn.append(h.loss[ok])
        if (h.diverged or _overflow_epoch(h) is not None) and ok.any():
            last = np.flatnonzero(ok)[-1]
            x, y = xs[last], h.loss[last]
            ax.plot(x, y, "X", color=colour, ms=8, mec="black", zorder=5)
            ax.annotate("diverged", (x, y), (-10, -4), ha="right", va="top", color=colour, **NOTE)
    if math.isfinite(floor) and floor > 0:
        reference_line(ax, floor, f" least-squares floor {floor:.4g}", "--", 1.2, "0.25")
    log_scale(ax, "y")
    ax.set_ylim(*log_limits(np.concatenate(drawn)))
    if use_updates:
        log_scale(ax, "x")
        ax.set_xlim(*log_limits(np.concatenate([h.updates for h in histories]).astype(float)))
        ax.set_xlabel("parameter updates made (log scale)")
        ax.set_title("Loss against parameter updates", **PANEL_TITLE)
    else:
        ax.set_xlim(*padded(0.0, float(max(h.epochs for h in histories)), 0.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (passes over the data)")
        ax.set_title("Loss per epoch", **PANEL_TITLE)
    ax.set_ylabel("full-data MSE (log scale)")
    text_sizes(ax)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def _panel_data(
    ax: Axes,
    histories: Sequence[History],
    x: np.ndarray,
    y: np.ndarray,
    true_slope: float | None,
    true_intercept: float | None,
) -> None:
    """Data panel: the points (a deterministic subsample of at most MAX_POINTS), the true line
    (None: unknown) and each method's fitted line; a diverged one gets a legend entry only."""
    n = int(x.shape[0])
    idx = np.arange(n)
    if n > MAX_POINTS:
        idx = np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))
    xs, ys = x[idx].astype(np.float64), y[idx].astype(np.float64)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    marker, ms, alpha = (".", 2, 0.35) if xs.size > 300 else ("+", 5, 0.8)
    label = f"{xs.size:,} of {n:,} points" if xs.size < n else "data"
    ax.plot(xs, ys, marker, color="0.45", ms=ms, alpha=alpha, ls="none", zorder=2, label=label)
    x_lo, x_hi = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
    line_x = np.array([x_lo, x_hi])
    if true_slope is not None and true_intercept is not None:
        label = f"true line y = {true_slope:g}·x + {true_intercept:g}"
        line_y = true_slope * line_x + true_intercept
        ax.plot(line_x, line_y, "--", color="black", lw=1.2, zorder=3, label=label)
    for i, h in enumerate(histories):
        w, b = float(h.w[-1]), float(h.b[-1])
        name, colour = method_name(h.method), method_colour(h.method, i)
        if h.diverged or not (math.isfinite(w) and math.isfinite(b)):
            ax.plot([], [], ":", color=colour, lw=1.5, label=f"{name}: diverged, not drawn")
        else:  # its w and b are in the results table
            ax.plot(line_x, w * line_x + b, color=colour, lw=1.5, alpha=0.85, zorder=4, label=name)
    ax.set_xlim(*padded(x_lo, x_hi, 0.02))
    ax.set_ylim(*(padded(float(ys.min()), float(ys.max()), 0.06) if ys.size else (0.0, 1.0)))
    corner = "upper right" if true_slope is not None and true_slope < 0 else "upper left"
    ax.legend(loc="best" if true_slope is None else corner, fontsize=TEXT, framealpha=0.9)
    ax.set(xlabel="x", ylabel="y")
    text_sizes(ax)
    ax.set_title("Data and the fitted lines after training", **PANEL_TITLE)
    ax.grid(True, alpha=0.3)


def build_figure(
    histories: Sequence[History],
    x: np.ndarray,
    y: np.ndarray,
    moments: Moments,
    *,
    true_slope: float | None,
    true_intercept: float | None,
    caption: str,
) -> Figure:
    """The 2x2 comparison figure: loss per epoch, loss per update, data and fits, paths."""
    if not histories:
        raise ValueError("need at least one history to draw")
    handles = []  # one legend entry per method, a cross for those that diverged
    for i, h in enumerate(histories):
        colour = method_colour(h.method, i)
        mark = {"marker": "X", "ms": 6, "mec": "black"} if h.diverged else {"marker": "o", "ms": 4}
        handles.append(Line2D([], [], color=colour, lw=1.6, label=_label(h), **mark))
    # As many legend columns (up to 3) as fit side by side; a label is ~0.56 of its font size
    # per character, plus its marker.
    width = max(len(h.get_label()) for h in handles) * 0.56 * LABEL + 40
    ncols = max(1, min(len(handles), 3, int(FIGSIZE[0] * 72 * 0.95 // width)))
    head_in = 0.08 + 0.17 * math.ceil(len(handles) / ncols)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    head, body = fig.subfigures(2, 1, height_ratios=[head_in, FIGSIZE[1] - head_in])
    head.legend(
        handles=handles, loc="outside lower center", ncols=ncols, fontsize=LABEL, frameon=False
    )
    (ax_epoch, ax_updates), (ax_data, ax_paths) = body.subplots(2, 2)
    floor = float(moments.mse(*moments.least_squares()))
    _panel_loss(ax_epoch, histories, floor, use_updates=False)
    _panel_loss(ax_updates, histories, floor, use_updates=True)
    _panel_data(ax_data, histories, x, y, true_slope, true_intercept)
    panel_paths(ax_paths, histories, moments, floor)
    # the caption holds the user's file and column names: text, never mathematics
    body.supxlabel(textwrap.fill(caption, 115), fontsize=TEXT, color="0.3", parse_math=False)
    return fig


def save_figure(fig: Figure, png_path: Path, svg_path: Path) -> None:
    """Draw the figure into PNG and SVG files, each written atomically (temp file, rename).

    The SVG keeps the layout the PNG computed: laying the default run's figure out again takes
    12 % of the time to draw and save it (7.1e9 instead of 6.2e9 instructions, cold process;
    CPU time 1.50 s instead of 1.21 s).
    """
    engine = fig.get_layout_engine()
    with atomic_path(png_path) as png, atomic_path(svg_path) as svg:
        fig.savefig(png, format="png", dpi=fig.dpi)
        fig.set_layout_engine("none")
        try:
            fig.savefig(svg, format="svg", dpi=fig.dpi)
        finally:
            fig.set_layout_engine(engine)
