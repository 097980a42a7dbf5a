"""The sweep figure: a heat map of step size x batch size, and the best runs' loss curves.

matplotlib is imported at the top: the sweep's report step imports this module only to draw it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.patheffects import Normal, Stroke
from matplotlib.ticker import MaxNLocator

from tasks.history import History
from tasks.params import Cell, Method
from tasks.report.style import (
    BELOW,
    DPI,
    LABEL,
    PANEL_TITLE,
    TEXT,
    WIDTH,
    log_scale,
    plain_log_labels,
    reference_line,
    text_sizes,
)
from tasks.report.sweep_tables import METHOD_WORDS, TARGET_FRACTION, GridSummary

FIGSIZE = (WIDTH, 9.6)
_DIVERGED = {"facecolor": "0.88", "hatch": "xx", "edgecolor": "0.6"}
_BEST = {"fill": False, "edgecolor": "#FF2D95", "lw": 2.0}
_TITLE = PANEL_TITLE
_WARNING = {"color": "#B00020", "fontweight": "bold"}  # what diverged


def batch_label(size: int, method: Method, bound: float) -> str:
    """Heat map column label: batch size, method and its stability bound."""
    size_text = f"{size:,} (all)" if method is Method.bgd else f"{size:,}"
    return f"{size_text}\n{METHOD_WORDS[method]}\nbound {bound:.3g}"


def _label_cells(ax: Axes, summary: GridSummary, norm: Normalize, lo: float) -> None:
    """Write each cell's result on it: excess loss and epochs to target; hatch the diverged."""
    cmap = colormaps["viridis"]
    for (i, j), excess in np.ndenumerate(summary.excess):
        diverged = summary.diverged[i, j]
        if diverged:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, **_DIVERGED))
            style = _WARNING
            text = "diverged" + (f"\n{diverged}/{summary.seeds}" if summary.seeds > 1 else "")
        else:
            r, g, b, _ = cmap(norm(max(excess, lo)))
            style = {"color": "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.45 else "white"}
            epochs = summary.epochs[i, j]
            reached = f"{epochs:.0f} ep" if math.isfinite(epochs) else "not reached"
            text = f"{excess:.1e}\n{reached}"
        ax.text(j, i, text, ha="center", va="center", fontsize=TEXT, **style)


def _mark_best_and_bound(ax: Axes, summary: GridSummary) -> None:
    """Frame the best step size of each batch size; draw the stability bound across columns."""
    for j, i in enumerate(summary.best):
        if i is not None:
            ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, **_BEST))
    # Across each column, between the rows of the step sizes at or below its bound and above.
    rows = [sum(lr <= bound for lr in summary.lrs) - 0.5 for bound in summary.bounds]
    edges = [x for j in range(len(rows)) for x in (j - 0.5, j + 0.5)]
    halo = [Stroke(linewidth=3.6, foreground="white"), Normal()]
    label = "stability bound (may diverge above)"
    (line,) = ax.plot(
        edges, np.repeat(rows, 2), "--", color="#D00000", lw=2.0, path_effects=halo, label=label
    )
    handles = [
        line,
        Patch(**_DIVERGED, label="diverged"),
        Patch(**_BEST, label="best step size per batch size (curves below)"),
    ]
    ax.legend(handles=handles, bbox_to_anchor=(0.5, -0.2), ncols=2, fontsize=TEXT, **BELOW)


def _heat_map(ax: Axes, summary: GridSummary) -> None:
    """Excess final loss per step size x batch size; diverged cells hatched; bound drawn."""
    excess = summary.excess
    shown = excess[np.isfinite(excess)]
    lo = max(float(shown.min()) if shown.size else 1e-12, 1e-12)
    hi = max(float(shown.max()) if shown.size else 1.0, lo * 10)
    norm = LogNorm(lo, hi)
    values = np.ma.masked_invalid(np.maximum(excess, lo))
    image = ax.imshow(
        values, cmap="viridis", norm=norm, origin="lower", aspect="auto", interpolation="nearest"
    )
    _label_cells(ax, summary, norm, lo)
    _mark_best_and_bound(ax, summary)
    rows, cols = excess.shape
    labels = [
        batch_label(s, m, float(bound))
        for s, m, bound in zip(summary.batch_sizes, summary.methods, summary.bounds, strict=True)
    ]
    ax.set_xticks(range(cols), labels)
    ax.set_yticks(range(rows), [f"{lr:g}" for lr in summary.lrs])
    ax.set(xlim=(-0.5, cols - 0.5), ylim=(-0.5, rows - 0.5))
    ax.set(xlabel="batch size (points per update)", ylabel="step size")
    text_sizes(ax)
    seeds = f"median over {summary.seeds} seeds" if summary.seeds > 1 else "one seed"
    ax.set_title(
        f"Final loss above the least-squares floor ({seeds});\n"
        f"second line: epochs until it is {1 / TARGET_FRACTION:g}× smaller than at the start",
        **_TITLE,
    )
    if shown.size:
        bar = ax.figure.colorbar(image, ax=ax, pad=0.015, fraction=0.05)
        plain_log_labels(bar.ax.yaxis)
        bar.ax.tick_params(labelsize=TEXT)
        bar.set_label("final MSE − least-squares MSE (log scale)", fontsize=TEXT)


def _curves(
    ax: Axes, summary: GridSummary, curves: dict[int, History], floor: float, seed: int
) -> None:
    """Excess loss per epoch of the best step size of each batch size."""
    if not curves:
        message = "every run diverged: no curve to draw"
        ax.text(0.5, 0.5, message, ha="center", transform=ax.transAxes, fontsize=LABEL, **_WARNING)
        ax.set_axis_off()
        return
    palette = colormaps["plasma"]
    for j, size in enumerate(summary.batch_sizes):
        if size not in curves:
            continue
        h = curves[size]
        excess = h.loss - floor
        ok = np.isfinite(excess) & (excess > 0)
        colour = palette(0.85 * j / max(len(summary.batch_sizes) - 1, 1))
        label = f"batch {size:,} ({METHOD_WORDS[summary.methods[j]]}), step {h.lr:g}"
        ax.plot(h.epoch[ok], excess[ok], "-o", color=colour, lw=1.4, ms=2.6, label=label)
    missing = [s for s in summary.batch_sizes if s not in curves]
    if missing:
        ax.plot([], [], " ", label=f"batch {', '.join(map(str, missing))}: every step diverged")
    target = TARGET_FRACTION * (next(iter(curves.values())).loss[0] - floor)
    reference_line(
        ax, target, f" target: {1 / TARGET_FRACTION:g}× below the start", ":", 1.4, "0.3"
    )
    log_scale(ax, "y")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(h.epochs for h in curves.values()))
    ax.set(xlabel="epoch (passes over the data)", ylabel="MSE − least-squares MSE (log)")
    text_sizes(ax)
    ax.set_title(f"Loss per epoch at the best step size of each batch size (seed {seed})", **_TITLE)
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(fontsize=TEXT, loc="upper right", framealpha=0.9)


def best_curves(
    cells: Sequence[Cell], histories: Sequence[History], summary: GridSummary, seed: int
) -> dict[int, History]:
    """Per batch size, the history of its best step size on the data set of `seed`."""
    best = {
        size: summary.lrs[i]
        for size, i in zip(summary.batch_sizes, summary.best, strict=True)
        if i is not None
    }
    return {
        c.batch_size: h
        for c, h in zip(cells, histories, strict=True)
        if c.seed == seed and best.get(c.batch_size) == c.lr
    }


def build_sweep_figure(
    summary: GridSummary, curves: dict[int, History], floor: float, seed: int, caption: str
) -> Figure:
    """Heat map of the grid (above) and the best runs' loss curves on one seed (below)."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax_map, ax_curves = fig.subplots(2, 1, height_ratios=[1.3, 1.0])
    _heat_map(ax_map, summary)
    _curves(ax_curves, summary, curves, floor, seed)
    fig.supxlabel(textwrap.fill(caption, 115), fontsize=TEXT, color="0.3")
    return fig
