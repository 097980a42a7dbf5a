"""The comparison figure's fourth panel: each method's (w, b) path over the MSE surface."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm

from tasks.history import History
from tasks.report.style import (
    BELOW,
    NOTE,
    PANEL_TITLE,
    TEXT,
    Limits,
    drawable,
    markevery,
    method_colour,
    padded,
    plain_log_labels,
    text_sizes,
)
from tasks.stats import Moments

GRID = 220  # contour grid points per axis
_START = {"marker": "o", "ms": 6, "mfc": "white", "mec": "black", "mew": 1.2}
_BEST = {"marker": "*", "ms": 11, "color": "gold", "mec": "black", "mew": 0.8}  # least squares


def _box(histories: Sequence[History], start: Limits, best: Limits) -> tuple[Limits, Limits]:
    """(w, b) limits around the start, the optimum and every converged path."""
    paths = [np.column_stack([h.w, h.b]) for h in histories if not h.diverged]
    pts = np.concatenate([np.array([start, best]), *paths])
    pts = pts[drawable(pts).all(axis=1)]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return padded(float(lo[0]), float(hi[0]), 0.08), padded(float(lo[1]), float(hi[1]), 0.08)


def _mark_exit(ax: Axes, pts: np.ndarray, keep: int, colour: str, wl: Limits, bl: Limits) -> None:
    """An arrow from the last point in the box, pts[keep - 1], to where the path leaves it."""
    last, nxt = pts[keep - 1], pts[keep]
    if drawable(nxt).all():  # the box edge where the segment from last to nxt crosses it
        d = nxt - last
        t = 1.0
        for k, (lo, hi) in enumerate((wl, bl)):
            if d[k] > 0:
                t = min(t, (hi - last[k]) / d[k])
            elif d[k] < 0:
                t = min(t, (lo - last[k]) / d[k])
        edge, text = last + t * d, "diverged → off the chart"
    else:
        edge, text = last, "diverged: overflow to inf/nan"
    arrow = {"arrowstyle": "-|>", "color": colour, "lw": 1.4, "mutation_scale": 12}
    ax.annotate("", edge, last, arrowprops=arrow, zorder=5)
    away = np.sign([edge[0] - np.mean(wl), edge[1] - np.mean(bl)])
    ax.annotate(
        text,
        edge,
        (-away[0] * 8, -away[1] * 8),
        ha="right" if away[0] > 0 else "left",
        va="top" if away[1] > 0 else "bottom",
        color=colour,
        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": colour, "alpha": 0.9},
        zorder=6,
        **NOTE,
    )


def _surface(ax: Axes, moments: Moments, floor: float, wl: Limits, bl: Limits) -> None:
    """Filled, log-spaced contours of the MSE above its floor, with a colour bar."""
    gw, gb = np.meshgrid(np.linspace(*wl, GRID), np.linspace(*bl, GRID))
    excess = np.asarray(moments.mse(gw, gb), dtype=np.float64) - floor
    top = float(excess.max())
    if not (math.isfinite(top) and top > 0):
        top = 1.0
    levels = np.geomspace(top * 1e-5, top, 16)
    shown = np.clip(excess, levels[0], top)
    norm = LogNorm(levels[0], top)
    filled = ax.contourf(gw, gb, shown, levels, norm=norm, cmap="Greys_r", alpha=0.35, zorder=0)
    ax.contour(gw, gb, shown, levels=levels, colors="0.5", linewidths=0.5, alpha=0.7, zorder=1)
    bar = ax.get_figure().colorbar(filled, ax=ax, pad=0.01, fraction=0.04)
    bar.set_ticks(10.0 ** np.arange(math.ceil(math.log10(levels[0])), math.log10(top) + 1e-9))
    plain_log_labels(bar.ax.yaxis)
    bar.set_label("MSE above the floor", fontsize=TEXT)
    bar.ax.tick_params(labelsize=TEXT)


def panel_paths(ax: Axes, histories: Sequence[History], moments: Moments, floor: float) -> None:
    """Contours of the MSE over (w, b) with each method's per-epoch path, clipped to the box
    with an arrow where it leaves; `floor` is the least-squares MSE."""
    start = (float(histories[0].w[0]), float(histories[0].b[0]))
    best = moments.least_squares()
    wl, bl = _box(histories, start, best)
    _surface(ax, moments, floor, wl, bl)
    lo, hi = np.array([wl[0], bl[0]]), np.array([wl[1], bl[1]])
    for i, h in enumerate(histories):
        pts = np.column_stack([h.w, h.b])
        inside = drawable(pts).all(axis=1) & ((pts >= lo) & (pts <= hi)).all(axis=1)
        keep = int(inside.argmin()) if not inside.all() else len(pts)
        colour = method_colour(h.method, i)
        path = pts[:keep]
        ax.plot(*path.T, "-o", color=colour, lw=1.3, ms=2.6, zorder=4, markevery=markevery(keep))
        if 0 < keep < len(pts):
            _mark_exit(ax, pts, keep, colour, wl, bl)
    for point, name, style in ((start, "start", _START), (best, "least squares", _BEST)):
        label = f"{name}  ({point[0]:.4g}, {point[1]:.4g})"
        ax.plot(*point, ls="none", zorder=8, label=label, **style)
    ax.legend(bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=TEXT, **BELOW)
    ax.set(xlim=wl, ylim=bl, xlabel="slope w", ylabel="intercept b")
    text_sizes(ax)
    ax.set_title("Path of (w, b), one dot per epoch", **PANEL_TITLE)
