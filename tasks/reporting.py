"""The comparison figure, results rows, markdown and loss table of one run (pure functions)."""

from __future__ import annotations

import base64
import io
import math
import re
import textwrap
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from tasks.history import History
from tasks.stats import Moments
from tasks.storage import atomic_path, write_bytes_atomic

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

    from tasks.params import RunParams

DPI = 110
FIGSIZE = (14.0, 10.0)
MAX_POINTS = 3000  # data points drawn in the data panel
MAX_MARKERS = 40  # per-epoch markers drawn per curve
TITLE = "Gradient descent on y = w·x + b: batch vs stochastic vs mini-batch"

_COLOURS = {"bgd": "#0072B2", "sgd": "#D55E00", "minibatch": "#009E73"}
_SPARE_COLOURS = ("#CC79A7", "#E69F00", "#56B4E9", "#000000")
_NAMES = {"bgd": "Batch GD", "sgd": "Stochastic GD", "minibatch": "Mini-batch GD"}
_GRID = 220  # contour grid points per axis
_BIG = 1e200  # larger values are off any chart: log-axis ticks beyond 1e300 overflow to inf

Limits = tuple[float, float]
_SUPERSCRIPTS = str.maketrans("0123456789-−+", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁻⁺")
_POWER = re.compile(r"\^\{([^}]*)\}")


def plain_power_label(label: str) -> str:
    """A log-axis tick label such as $\\mathdefault{2\\times10^{-1}}$ as plain text, 2×10⁻¹.

    Plain text draws several times faster than mathtext; labels it cannot convert stay as they
    are.
    """
    inner = label.removeprefix("$\\mathdefault{").removesuffix("}$")
    if inner == label:
        return label
    text = _POWER.sub(lambda m: m.group(1).translate(_SUPERSCRIPTS), inner.replace("\\times", "×"))
    return label if "\\" in text or "{" in text else text


@cache
def _plain_log_formatter() -> type:
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        """Matplotlib's choice of log-axis labels, written without mathtext."""

        def __call__(self, x: float, pos: int | None = None) -> str:
            return plain_power_label(super().__call__(x, pos))

    return PlainLogFormatter


def load_matplotlib() -> None:
    """Import the parts of matplotlib that drawing and saving a figure use."""
    import matplotlib.backends.backend_agg
    import matplotlib.backends.backend_svg
    import matplotlib.figure  # noqa: F401


def plain_log_labels(axis: Axis) -> None:
    """Label a log-scaled axis as matplotlib would, in plain text."""
    axis.set_major_formatter(_plain_log_formatter()())
    axis.set_minor_formatter(_plain_log_formatter()(labelOnlyBase=False))


def log_scale(ax: Axes, axis: str = "y") -> None:
    """Put `axis` ("x" or "y") of `ax` on a log scale with plain-text tick labels."""
    getattr(ax, f"set_{axis}scale")("log")
    plain_log_labels(getattr(ax, f"{axis}axis"))


def method_name(method: str) -> str:
    """Readable name of a method."""
    return _NAMES.get(method, method)


def method_colour(method: str, index: int = 0) -> str:
    """Fixed colour of a method, the same in every panel."""
    return _COLOURS.get(method, _SPARE_COLOURS[index % len(_SPARE_COLOURS)])


def _finite(values: np.ndarray) -> np.ndarray:
    """Mask of values that can be drawn: finite and not absurdly large."""
    return np.isfinite(values) & (np.abs(values) < _BIG)


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


def _padded(lo: float, hi: float, frac: float = 0.05) -> Limits:
    """Linear limits around [lo, hi] with a margin, never of zero width."""
    span = hi - lo
    pad = frac * span if span > 0 else 0.05 * max(abs(lo), 1.0)
    return lo - pad, hi + pad


def _log_limits(values: np.ndarray) -> Limits:
    """Log-axis limits around the finite positive values (a fallback if there are none)."""
    v = values[_finite(values) & (values > 0)]
    if v.size == 0:
        return 0.1, 10.0
    lo, hi = math.log10(v.min()), math.log10(v.max())
    pad = max(0.04 * (hi - lo), 0.12)
    return 10.0 ** max(lo - pad, -200.0), 10.0 ** min(hi + pad, 200.0)


def _markevery(count: int) -> int:
    """Marker stride that keeps at most MAX_MARKERS markers on a curve."""
    return max(1, math.ceil(count / MAX_MARKERS))


def _loss_curves(ax: Axes, histories: Sequence[History], use_updates: bool) -> np.ndarray:
    """Draw each method's loss against epochs or updates; returns every value drawn."""
    drawn = [np.empty(0)]
    for i, h in enumerate(histories):
        xs = (h.updates if use_updates else h.epoch).astype(np.float64)
        ok = _finite(h.loss) & (h.loss > 0) & ((xs > 0) if use_updates else True)
        colour = method_colour(h.method, i)
        ax.plot(
            xs[ok],
            h.loss[ok],
            "-o",
            color=colour,
            lw=1.8,
            ms=3.5,
            markevery=_markevery(int(ok.sum())),
            zorder=3,
        )
        drawn.append(h.loss[ok])
        if (h.diverged or _overflow_epoch(h) is not None) and ok.any():
            last = np.flatnonzero(ok)[-1]
            ax.plot(xs[last], h.loss[last], "X", color=colour, ms=13, mec="black", zorder=5)
            ax.annotate(
                "diverged",
                (xs[last], h.loss[last]),
                xytext=(-10, -4),
                textcoords="offset points",
                ha="right",
                va="top",
                color=colour,
                fontsize=9,
                fontweight="bold",
            )
    return np.concatenate(drawn)


def _floor_line(ax: Axes, floor: float) -> None:
    """Dashed line at the least-squares loss, labelled at its left end."""
    if not (math.isfinite(floor) and floor > 0):
        return
    ax.axhline(floor, ls="--", lw=1.2, color="0.25", zorder=2)
    ax.text(
        0.01,
        floor,
        f" least-squares floor {floor:.4g}",
        transform=ax.get_yaxis_transform(),
        ha="left",
        va="bottom",
        fontsize=8.5,
        color="0.25",
    )


def _panel_loss(ax: Axes, histories: Sequence[History], floor: float, use_updates: bool) -> None:
    """Loss panel: per epoch (log y) or per parameter update (log-log)."""
    drawn = _loss_curves(ax, histories, use_updates)
    _floor_line(ax, floor)
    log_scale(ax, "y")
    ax.set_ylim(*_log_limits(np.append(drawn, floor)))
    if use_updates:
        updates = np.concatenate([h.updates for h in histories]).astype(np.float64)
        log_scale(ax, "x")
        ax.set_xlim(*_log_limits(updates))
        ax.set_xlabel("parameter updates made (log scale; the start, at 0 updates, is not shown)")
        ax.set_title("Loss against parameter updates", loc="left", fontweight="bold")
    else:
        last = max(h.epochs for h in histories)
        ax.set_xlim(*_padded(0.0, float(last), 0.02))
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (full passes over the data)")
        ax.set_title("Loss per epoch", loc="left", fontweight="bold")
    ax.set_ylabel("full-data MSE (log scale)")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def _subsample(n: int) -> np.ndarray:
    """Deterministic sorted indices of at most MAX_POINTS points."""
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))


def _panel_data(
    ax: Axes,
    histories: Sequence[History],
    x: np.ndarray,
    y: np.ndarray,
    true_slope: float | None,
    true_intercept: float | None,
) -> None:
    """Data panel: the points, the true line (None: unknown) and each method's fitted line."""
    idx = _subsample(int(x.shape[0]))
    xs, ys = x[idx].astype(np.float64), y[idx].astype(np.float64)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    shown = f"{xs.size:,} of {x.shape[0]:,} points" if xs.size < x.shape[0] else "data"
    many = xs.size > 300
    ax.plot(
        xs,
        ys,
        "." if many else "+",
        color="0.45",
        ms=3 if many else 7,
        alpha=0.35 if many else 0.8,
        ls="none",
        label=shown,
        zorder=2,
    )
    x_lo, x_hi = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
    line_x = np.array([x_lo, x_hi])
    if true_slope is not None and true_intercept is not None:
        ax.plot(
            line_x,
            true_slope * line_x + true_intercept,
            "--",
            color="black",
            lw=1.6,
            zorder=3,
            label=f"true line  y = {true_slope:g}·x + {true_intercept:g}",
        )
    for i, h in enumerate(histories):
        w, b = float(h.w[-1]), float(h.b[-1])
        name = method_name(h.method)
        if h.diverged or not (math.isfinite(w) and math.isfinite(b)):
            ax.plot(
                [],
                [],
                ":",
                color=method_colour(h.method, i),
                lw=2,
                label=f"{name}: diverged, line not drawn (w = {_fmt(w)})",
            )
            continue
        ax.plot(
            line_x,
            w * line_x + b,
            color=method_colour(h.method, i),
            lw=2,
            alpha=0.85,
            zorder=4,
            label=f"{name}:  w = {w:.4g},  b = {b:.4g}",
        )
    ax.set_xlim(*_padded(x_lo, x_hi, 0.02))
    ax.set_ylim(*(_padded(float(ys.min()), float(ys.max()), 0.06) if ys.size else (0.0, 1.0)))
    corner = "upper right" if true_slope is not None and true_slope < 0 else "upper left"
    ax.legend(loc="best" if true_slope is None else corner, fontsize=8.5, framealpha=0.9)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("Data and the fitted lines after training", loc="left", fontweight="bold")
    ax.grid(True, alpha=0.3)


def _box(histories: Sequence[History], start: Limits, best: Limits) -> tuple[Limits, Limits]:
    """(w, b) limits around the start, the optimum and every converged path."""
    ws, bs = [np.array([start[0], best[0]])], [np.array([start[1], best[1]])]
    for h in histories:
        if not h.diverged:
            ok = _finite(h.w) & _finite(h.b)
            ws.append(h.w[ok])
            bs.append(h.b[ok])
    w_all, b_all = np.concatenate(ws), np.concatenate(bs)
    w_all, b_all = w_all[_finite(w_all)], b_all[_finite(b_all)]
    return _padded(float(w_all.min()), float(w_all.max()), 0.08), _padded(
        float(b_all.min()), float(b_all.max()), 0.08
    )


def _exit_point(inside: np.ndarray, outside: np.ndarray, wl: Limits, bl: Limits) -> np.ndarray:
    """Where the segment from an inside point to an outside point crosses the box edge."""
    d = outside - inside
    t = 1.0
    for k, (lo, hi) in enumerate((wl, bl)):
        if d[k] > 0:
            t = min(t, (hi - inside[k]) / d[k])
        elif d[k] < 0:
            t = min(t, (lo - inside[k]) / d[k])
    return inside + t * d


def _draw_path(ax: Axes, h: History, colour: str, wl: Limits, bl: Limits) -> None:
    """One method's per-epoch (w, b) path, clipped with an arrow where it leaves the box."""
    pts = np.column_stack([h.w, h.b])
    inside = (
        _finite(pts).all(axis=1)
        & (pts[:, 0] >= wl[0])
        & (pts[:, 0] <= wl[1])
        & (pts[:, 1] >= bl[0])
        & (pts[:, 1] <= bl[1])
    )
    leaves = not inside.all()
    keep = int(inside.argmin()) if leaves else len(pts)
    path = pts[:keep]
    ax.plot(
        path[:, 0],
        path[:, 1],
        "-o",
        color=colour,
        lw=1.6,
        ms=3.5,
        zorder=4,
        markevery=_markevery(keep),
    )
    if not leaves or keep == 0:
        return
    nxt = pts[keep]
    if _finite(nxt).all():
        edge = _exit_point(path[-1], nxt, wl, bl)
        text = "diverged → off the chart"
    else:
        edge = path[-1]
        text = "diverged: overflow to inf/nan"
    ax.annotate(
        "",
        xy=edge,
        xytext=path[-1],
        arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1.8, "mutation_scale": 18},
        zorder=5,
    )
    away = np.sign([edge[0] - np.mean(wl), edge[1] - np.mean(bl)])
    ax.annotate(
        text,
        edge,
        xytext=(-away[0] * 8, -away[1] * 8),
        textcoords="offset points",
        ha="right" if away[0] > 0 else "left",
        va="top" if away[1] > 0 else "bottom",
        color=colour,
        fontsize=9,
        fontweight="bold",
        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": colour, "alpha": 0.9},
        zorder=6,
    )


def _panel_paths(ax: Axes, histories: Sequence[History], moments: Moments) -> None:
    """Contours of the MSE over (w, b) with each method's per-epoch path."""
    from matplotlib.colors import LogNorm

    start = (float(histories[0].w[0]), float(histories[0].b[0]))
    best = moments.least_squares()
    wl, bl = _box(histories, start, best)
    gw, gb = np.meshgrid(np.linspace(*wl, _GRID), np.linspace(*bl, _GRID))
    floor = float(moments.mse(*best))
    excess = np.asarray(moments.mse(gw, gb), dtype=np.float64) - floor
    top = float(excess.max())
    if not (math.isfinite(top) and top > 0):
        top = 1.0
    levels = np.geomspace(top * 1e-5, top, 16)
    filled = ax.contourf(
        gw,
        gb,
        np.clip(excess, levels[0], top),
        levels=levels,
        norm=LogNorm(levels[0], top),
        cmap="Greys_r",
        alpha=0.35,
        zorder=0,
    )
    ax.contour(
        gw,
        gb,
        np.clip(excess, levels[0], top),
        levels=levels,
        colors="0.5",
        linewidths=0.5,
        alpha=0.7,
        zorder=1,
    )
    bar = ax.get_figure().colorbar(filled, ax=ax, pad=0.01, fraction=0.04)
    bar.set_ticks(10.0 ** np.arange(math.ceil(math.log10(levels[0])), math.log10(top) + 1e-9))
    plain_log_labels(bar.ax.yaxis)
    bar.set_label("MSE above the least-squares floor", fontsize=8.5)
    bar.ax.tick_params(labelsize=7.5)
    for i, h in enumerate(histories):
        _draw_path(ax, h, method_colour(h.method, i), wl, bl)
    ax.plot(
        *start,
        "o",
        ms=10,
        mfc="white",
        mec="black",
        mew=1.6,
        zorder=8,
        ls="none",
        label=f"start  ({start[0]:.4g}, {start[1]:.4g})",
    )
    ax.plot(
        *best,
        "*",
        ms=18,
        color="gold",
        mec="black",
        mew=1.0,
        zorder=8,
        ls="none",
        label=f"least squares  ({best[0]:.4g}, {best[1]:.4g})",
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2, fontsize=9, frameon=False)
    ax.set_xlim(*wl)
    ax.set_ylim(*bl)
    ax.set_xlabel("slope w")
    ax.set_ylabel("intercept b")
    ax.set_title(
        "Path of (w, b) over the loss surface, one dot per epoch", loc="left", fontweight="bold"
    )


def _legend_columns(labels: list[str]) -> int:
    """Most legend columns (up to 3) whose labels fit side by side across the figure."""
    width = max(len(label) for label in labels) * 6.3 + 55  # points at font size 11
    return max(1, min(len(labels), 3, int(FIGSIZE[0] * 72 * 0.95 // width)))


def caption(params: RunParams, source: str) -> str:
    """The figure's caption: where the data came from, then the training settings."""
    steps = ", ".join(f"{m.value} {params.lr(m):g}" for m in params.methods)
    batch = (
        f" (batch {params.batch_size})"
        if any(m.value == "minibatch" for m in params.methods)
        else ""
    )
    order = "shuffled each epoch" if params.shuffle else "in stored order"
    data = (
        f"data: {source}"
        if params.data
        else f"n = {params.n_samples:,}, noise σ = {params.noise_std:g}, seed {params.seed}"
    )
    return (
        f"preset {params.preset} · {data} · {params.epochs} epochs "
        f"from (w, b) = ({params.w0:g}, {params.b0:g}) · "
        f"step sizes: {steps}{batch} · points {order} · {params.dtype}, {params.engine} engine"
    )


def build_figure(
    histories: list[History],
    x: np.ndarray,
    y: np.ndarray,
    moments: Moments,
    *,
    true_slope: float | None,
    true_intercept: float | None,
    caption: str,
) -> Figure:
    """The 2x2 comparison figure: loss per epoch, loss per update, data and fits, paths."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not histories:
        raise ValueError("need at least one history to draw")
    handles = [
        Line2D(
            [],
            [],
            color=method_colour(h.method, i),
            marker="X" if h.diverged else "o",
            lw=2.2,
            ms=8 if h.diverged else 5,
            mec="black" if h.diverged else None,
            label=_label(h),
        )
        for i, h in enumerate(histories)
    ]
    ncols = _legend_columns([h.get_label() for h in handles])
    head_in = 0.45 + 0.27 * math.ceil(len(handles) / ncols)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    head, body = fig.subfigures(2, 1, height_ratios=[head_in, FIGSIZE[1] - head_in])
    head.suptitle(TITLE, fontsize=16, fontweight="bold")
    head.legend(
        handles=handles, loc="outside lower center", ncols=ncols, fontsize=11, frameon=False
    )
    (ax_epoch, ax_updates), (ax_data, ax_paths) = body.subplots(2, 2)
    floor = float(moments.mse(*moments.least_squares()))
    _panel_loss(ax_epoch, histories, floor, use_updates=False)
    _panel_loss(ax_updates, histories, floor, use_updates=True)
    _panel_data(ax_data, histories, x, y, true_slope, true_intercept)
    _panel_paths(ax_paths, histories, moments)
    body.supxlabel("\n".join(textwrap.wrap(caption, 190)), fontsize=9, color="0.3")
    return fig


def lay_out(fig: Figure) -> None:
    """Compute the figure's layout once, now, and keep it for every later save (a third less
    work than laying it out again for each format)."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
    fig.set_layout_engine("none")


def _draw(fig: Figure, sinks: list[tuple[str, BinaryIO]]) -> None:
    """Save the figure in each (format, file) in turn, from one layout."""
    engine = fig.get_layout_engine()
    try:
        lay_out(fig)
        for fmt, sink in sinks:
            fig.savefig(sink, format=fmt, dpi=DPI)
    finally:
        fig.set_layout_engine(engine)


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure saved in one format ("png" or "svg")."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=DPI)
    return buffer.getvalue()


def save_figure(fig: Figure, png_path: Path, svg_path: Path) -> None:
    """Draw the figure into PNG and SVG files, each written atomically (temp file, rename)."""
    with (
        atomic_path(Path(png_path)) as png,
        atomic_path(Path(svg_path)) as svg,
        png.open("wb") as png_file,
        svg.open("wb") as svg_file,
    ):
        _draw(fig, [("png", png_file), ("svg", svg_file)])


def save_figure_bytes(drawn: tuple[bytes, bytes], png_path: Path, svg_path: Path) -> None:
    """Write a figure drawn already (see figure_bytes) as PNG and SVG, each atomically."""
    for data, path in zip(drawn, (png_path, svg_path), strict=True):
        write_bytes_atomic(Path(path), data)


def results_rows(
    histories: list[History],
    moments: Moments,
    true_slope: float | None,
    true_intercept: float | None,
) -> list[dict[str, Any]]:
    """One summary row per method; non-finite numbers are kept as float inf/nan.

    Without a true line (the user's own data) the differences to it are None (empty cells).
    """
    w_ls, b_ls = moments.least_squares()
    rows = []
    for h in histories:
        w, b = float(h.w[-1]), float(h.b[-1])
        rows.append(
            {
                "method": h.method,
                "lr": float(h.lr),
                "final_loss": h.final_loss,
                "w": w,
                "b": b,
                "w_minus_true": None if true_slope is None else w - true_slope,
                "b_minus_true": None if true_intercept is None else b - true_intercept,
                "w_minus_lstsq": w - w_ls,
                "b_minus_lstsq": b - b_ls,
                "updates": h.total_updates,
                "wall_time_s": float(h.wall_time_s),
                "diverged": bool(h.diverged),
                "reason": h.reason,
                "stability_bound": float(h.stability_bound),
            }
        )
    return rows


def _fmt(value: Any) -> str:
    """A table cell: 4 significant digits, non-finite values written out."""
    if isinstance(value, bool):
        return "**yes** ⚠" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "overflow (inf)" if value > 0 else "overflow (-inf)"
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


_COLUMNS = (
    ("method", "Method"),
    ("lr", "Step size"),
    ("final_loss", "Final loss"),
    ("w", "w"),
    ("b", "b"),
    ("w_minus_true", "w − true"),
    ("b_minus_true", "b − true"),
    ("w_minus_lstsq", "w − ŵ (least sq.)"),
    ("b_minus_lstsq", "b − b̂ (least sq.)"),
    ("updates", "Updates"),
    ("wall_time_s", "Time (s)"),
    ("stability_bound", "Stable below"),
    ("diverged", "Diverged"),
)


def comparison_markdown(
    rows: list[dict[str, Any]], png_bytes: bytes, caption: str, source: str
) -> str:
    """Markdown artifact: caption, data source, embedded figure, results table, divergences."""
    image = base64.b64encode(png_bytes).decode("ascii")
    lines = [
        f"# {TITLE}",
        "",
        caption,
        "",
        f"Data: {source}",
        "",
        f"![comparison](data:image/png;base64,{image})",
        "",
        "| " + " | ".join(title for _, title in _COLUMNS) + " |",
        "|" + "|".join("---" for _ in _COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(row[key]) for key, _ in _COLUMNS) + " |" for row in rows]
    diverged = [row for row in rows if row["diverged"]]
    if diverged:
        lines.append("")
        lines += [
            f"- **{row['method']} diverged** (step {_fmt(row['lr'])}): "
            f"{_fmt(row['reason']) or 'no reason given'}"
            for row in diverged
        ]
    return "\n".join(lines) + "\n"


def _json_float(value: float | None) -> float | None:
    """The value if it is a finite number, else None."""
    return value if value is not None and math.isfinite(value) else None


def loss_table(histories: list[History], max_rows: int = 1001) -> list[dict[str, Any]]:
    """JSON-safe rows of the loss of every method per epoch (evenly thinned to `max_rows`)."""
    epochs = sorted({int(e) for h in histories for e in h.epoch})
    if len(epochs) > max_rows:
        keep = np.unique(np.linspace(0, len(epochs) - 1, max_rows).round().astype(int))
        epochs = [epochs[i] for i in keep]
    losses = {
        h.method: dict(zip(h.epoch.tolist(), h.loss.tolist(), strict=True)) for h in histories
    }
    return [
        {"epoch": e} | {method: _json_float(by_epoch.get(e)) for method, by_epoch in losses.items()}
        for e in epochs
    ]
