"""The sweep's grid of cells, and its figure, tables and all-histories Parquet file."""

from __future__ import annotations

import base64
import math
import textwrap
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.patheffects import Normal, Stroke
from matplotlib.ticker import MaxNLocator
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks.caching import stable_digest
from tasks.dataset import DatasetRef
from tasks.fitting import HistoryRef
from tasks.history import History, read_history
from tasks.params import Method, SweepParams, method_for_batch
from tasks.paths import reports_dir
from tasks.reporting import log_scale, plain_log_labels, save_figure
from tasks.storage import write_parquet

SWEEP_KEY = "gd-sweep"
CELLS_KEY = "gd-sweep-cells"
TITLE = "Step size × batch size: where gradient descent converges, and how close it gets"
# A run reaches its target once its loss above the least-squares floor is this fraction
# of what it was at the start.
TARGET_FRACTION = 1e-3
DPI = 110
FIGSIZE = (15.0, 7.2)
_METHOD_WORDS = {Method.sgd: "SGD", Method.bgd: "BGD", Method.minibatch: "mini-batch"}
_HISTORY_SCHEMA = pa.schema(
    [
        ("seed", pa.int64()),
        ("method", pa.string()),
        ("lr", pa.float64()),
        ("batch_size", pa.int64()),
        ("epoch", pa.int64()),
        ("loss", pa.float64()),
        ("w", pa.float64()),
        ("b", pa.float64()),
        ("updates", pa.int64()),
        ("diverged", pa.bool_()),
    ]
)


class Cell(BaseModel):
    """One point of the grid: a data set (seed) and a training run (batch size, step size)."""

    model_config = ConfigDict(frozen=True)

    seed: int
    batch_size: int
    lr: float
    method: Method

    @property
    def label(self) -> str:
        return f"b{self.batch_size}-lr{self.lr:g}-seed{self.seed}"


def grid(params: SweepParams) -> list[Cell]:
    """Every seed x batch size x step size of the sweep, in that nesting order."""
    return [
        Cell(seed=seed, batch_size=size, lr=lr, method=method_for_batch(size, params.n_samples))
        for seed in params.seeds
        for size in params.batch_sizes
        for lr in params.lrs
    ]


def floor_loss(dataset: DatasetRef) -> float:
    """The least-squares MSE of a data set: no step size can go below it."""
    stats = dataset.stats()
    return float(stats.mse(*stats.least_squares()))


def epochs_to_target(history: History, floor: float) -> int | None:
    """First epoch whose excess loss is TARGET_FRACTION of the starting one; None if never."""
    if history.diverged:
        return None
    excess = history.loss - floor
    hit = np.flatnonzero(np.isfinite(excess) & (excess <= TARGET_FRACTION * excess[0]))
    return int(history.epoch[hit[0]]) if hit.size else None


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def cell_rows(
    cells: Sequence[Cell], histories: Sequence[History], floors: dict[int, float]
) -> list[dict[str, Any]]:
    """One JSON-safe row per cell (non-finite numbers become None)."""
    rows = []
    for cell, h in zip(cells, histories, strict=True):
        floor = floors[cell.seed]
        rows.append(
            {
                "seed": cell.seed,
                "batch_size": cell.batch_size,
                "method": cell.method.value,
                "lr": cell.lr,
                "final_loss": _finite_or_none(h.final_loss),
                "excess_loss": _finite_or_none(h.final_loss - floor),
                "epochs_to_target": epochs_to_target(h, floor),
                "w": _finite_or_none(float(h.w[-1])),
                "b": _finite_or_none(float(h.b[-1])),
                "diverged": bool(h.diverged),
                "stability_bound": float(h.stability_bound),
                "updates": h.total_updates,
                "wall_time_s": float(h.wall_time_s),
            }
        )
    return rows


@dataclass(frozen=True)
class GridSummary:
    """The grid folded over seeds: arrays are indexed [step size, batch size]."""

    lrs: list[float]
    batch_sizes: list[int]
    methods: list[Method]
    seeds: int
    excess: np.ndarray  # median excess loss over seeds; nan where any seed diverged
    diverged: np.ndarray  # how many seeds diverged
    epochs: np.ndarray  # median epochs to the target; nan where some seed never got there
    bounds: np.ndarray  # per batch size: median stability bound over seeds
    best: list[int | None]  # per batch size: index of the best step size, None if all diverged


def summarise(rows: Sequence[dict[str, Any]]) -> GridSummary:
    """Fold the per-cell rows over seeds into the heat map's arrays."""
    lrs = sorted({r["lr"] for r in rows})
    sizes = sorted({r["batch_size"] for r in rows})
    methods = {r["batch_size"]: Method(r["method"]) for r in rows}
    seeds = len({r["seed"] for r in rows})
    by_cell: dict[tuple[float, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_cell[r["lr"], r["batch_size"]].append(r)
    excess = np.full((len(lrs), len(sizes)), np.nan)
    diverged = np.zeros((len(lrs), len(sizes)), dtype=np.int64)
    epochs = np.full((len(lrs), len(sizes)), np.nan)
    bounds = np.zeros(len(sizes))
    for i, lr in enumerate(lrs):
        for j, size in enumerate(sizes):
            mine = by_cell[lr, size]
            diverged[i, j] = sum(r["diverged"] for r in mine)
            if diverged[i, j] == 0:
                excess[i, j] = np.median([max(r["excess_loss"], 0.0) for r in mine])
            reached = [r["epochs_to_target"] for r in mine]
            if None not in reached:
                epochs[i, j] = np.median(reached)
            bounds[j] = np.median([r["stability_bound"] for r in mine])
    best: list[int | None] = []
    for j in range(len(sizes)):
        column = excess[:, j]
        best.append(int(np.nanargmin(column)) if np.isfinite(column).any() else None)
    return GridSummary(
        lrs, sizes, [methods[s] for s in sizes], seeds, excess, diverged, epochs, bounds, best
    )


def batch_label(size: int, method: Method, bound: float) -> str:
    """Heat map column label: batch size, method and its stability bound."""
    size_text = f"{size:,} (all)" if method is Method.bgd else f"{size:,}"
    return f"{size_text}\n{_METHOD_WORDS[method]}\nbound {bound:.3g}"


def _bound_row(bound: float, lrs: list[float]) -> float:
    """The row edge between the step sizes at or below `bound` and those above it."""
    return sum(lr <= bound for lr in lrs) - 0.5


def _cell_text(summary: GridSummary, i: int, j: int) -> str:
    if summary.diverged[i, j]:
        some = f" {summary.diverged[i, j]}/{summary.seeds}" if summary.seeds > 1 else ""
        return f"diverged{some}"
    epochs = summary.epochs[i, j]
    reached = f"{epochs:.0f} ep" if math.isfinite(epochs) else "not reached"
    return f"{summary.excess[i, j]:.1e}\n{reached}"


def _heat_map(ax: Axes, summary: GridSummary) -> None:
    """Excess final loss per step size x batch size; diverged cells hatched; bound drawn."""
    excess = summary.excess
    shown = excess[np.isfinite(excess)]
    lo = max(float(shown.min()) if shown.size else 1e-12, 1e-12)
    hi = max(float(shown.max()) if shown.size else 1.0, lo * 10)
    norm = LogNorm(lo, hi)
    cmap = colormaps["viridis"]
    image = ax.imshow(
        np.ma.masked_invalid(np.maximum(excess, lo)),
        origin="lower",
        aspect="auto",
        cmap=cmap,
        norm=norm,
        interpolation="nearest",
    )
    rows, cols = excess.shape
    for i in range(rows):
        for j in range(cols):
            if summary.diverged[i, j]:
                ax.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5), 1, 1, facecolor="0.88", hatch="xx", edgecolor="0.6"
                    )
                )
                colour = "#B00020"
            else:
                r, g, b, _ = cmap(norm(max(excess[i, j], lo)))
                colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.45 else "white"
            ax.text(
                j,
                i,
                _cell_text(summary, i, j),
                ha="center",
                va="center",
                fontsize=8,
                color=colour,
                fontweight="bold" if summary.diverged[i, j] else "normal",
            )
    for j, i in enumerate(summary.best):
        if i is not None:
            ax.add_patch(
                Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="#FF2D95", lw=2.6)
            )
    xs, ys = [], []
    for j, bound in enumerate(summary.bounds):
        y = _bound_row(float(bound), summary.lrs)
        xs += [j - 0.5, j + 0.5]
        ys += [y, y]
    ax.plot(
        xs,
        ys,
        color="#D00000",
        lw=2.4,
        ls="--",
        path_effects=[Stroke(linewidth=4.4, foreground="white"), Normal()],
        label="stability bound (may diverge above)",
    )
    labels = [
        batch_label(s, m, float(bound))
        for s, m, bound in zip(summary.batch_sizes, summary.methods, summary.bounds, strict=True)
    ]
    ax.set_xticks(range(cols), labels, fontsize=8.5)
    ax.set_yticks(range(rows), [f"{lr:g}" for lr in summary.lrs])
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(-0.5, rows - 0.5)
    ax.set_xlabel("batch size (points per update)")
    ax.set_ylabel("step size")
    ax.legend(
        handles=[
            ax.lines[-1],
            Rectangle(
                (0, 0), 1, 1, facecolor="0.88", hatch="xx", edgecolor="0.6", label="diverged"
            ),
            Rectangle(
                (0, 0),
                1,
                1,
                fill=False,
                edgecolor="#FF2D95",
                lw=2.6,
                label="best step size per batch size (curves on the right)",
            ),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncols=3,
        fontsize=8.5,
        frameon=False,
    )
    seeds = f"median over {summary.seeds} seeds" if summary.seeds > 1 else "one seed"
    ax.set_title(
        f"Final loss above the least-squares floor ({seeds});\n"
        f"second line: epochs until it is {1 / TARGET_FRACTION:g}× smaller than at the start",
        loc="left",
        fontsize=10.5,
        fontweight="bold",
    )
    if shown.size:
        bar = ax.figure.colorbar(image, ax=ax, pad=0.015, fraction=0.05)
        plain_log_labels(bar.ax.yaxis)
        bar.set_label("final MSE − least-squares MSE (log scale)", fontsize=8.5)


def _curves(
    ax: Axes, summary: GridSummary, curves: dict[int, History], floor: float, seed: int
) -> None:
    """Excess loss per epoch of the best step size of each batch size."""
    palette = colormaps["plasma"]
    for j, size in enumerate(summary.batch_sizes):
        if size not in curves:
            continue
        h = curves[size]
        excess = h.loss - floor
        ok = np.isfinite(excess) & (excess > 0)
        colour = palette(0.85 * j / max(len(summary.batch_sizes) - 1, 1))
        label = f"batch {size:,} ({_METHOD_WORDS[summary.methods[j]]}), step {h.lr:g}"
        ax.plot(h.epoch[ok], excess[ok], "-o", color=colour, lw=1.8, ms=3, label=label)
    if not curves:
        ax.text(
            0.5,
            0.5,
            "every run diverged: no curve to draw",
            ha="center",
            transform=ax.transAxes,
            color="#B00020",
            fontsize=11,
            fontweight="bold",
        )
        ax.set_axis_off()
        return
    missing = [s for s in summary.batch_sizes if s not in curves]
    if missing:
        ax.plot([], [], " ", label=f"batch {', '.join(map(str, missing))}: every step diverged")
    target = TARGET_FRACTION * (next(iter(curves.values())).loss[0] - floor)
    ax.axhline(target, ls=":", lw=1.4, color="0.3")
    ax.text(
        0.01,
        target,
        f" target: {1 / TARGET_FRACTION:g}× below the start",
        transform=ax.get_yaxis_transform(),
        va="bottom",
        fontsize=8.5,
        color="0.3",
    )
    log_scale(ax, "y")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(h.epochs for h in curves.values()))
    ax.set_xlabel("epoch (full passes over the data)")
    ax.set_ylabel("MSE − least-squares MSE (log scale)")
    ax.set_title(
        f"Loss per epoch at the best step size of each batch size (seed {seed})",
        loc="left",
        fontsize=10.5,
        fontweight="bold",
    )
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(fontsize=8.5, loc="upper right", framealpha=0.9)


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
    """Heat map of the grid (left) and the best runs' loss curves on one seed (right)."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    fig.suptitle(TITLE, fontsize=15, fontweight="bold")
    ax_map, ax_curves = fig.subplots(1, 2, width_ratios=[1.25, 1.0])
    _heat_map(ax_map, summary)
    _curves(ax_curves, summary, curves, floor, seed)
    fig.supxlabel("\n".join(textwrap.wrap(caption, 200)), fontsize=9, color="0.3")
    return fig


def caption(params: SweepParams) -> str:
    many = len(params.seeds) > 1
    seeds = ("seeds " if many else "seed ") + ", ".join(str(s) for s in params.seeds)
    order = "shuffled each epoch" if params.shuffle else "in stored order"
    return (
        f"n = {params.n_samples:,} points, noise σ = {params.noise_std:g}, {seeds} · "
        f"{params.epochs} epochs from (w, b) = ({params.w0:g}, {params.b0:g}) · "
        f"{len(params.lrs)} step sizes × {len(params.batch_sizes)} batch sizes × "
        f"{len(params.seeds)} seed{'s' if many else ''} · "
        f"points {order} · {params.dtype}, {params.engine} engine"
    )


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def best_rows(summary: GridSummary) -> list[dict[str, Any]]:
    """Per batch size: the best step size (median over seeds) and what it reached."""
    best = []
    for j, size in enumerate(summary.batch_sizes):
        i = summary.best[j]
        epochs = summary.epochs[i, j] if i is not None else math.nan
        best.append(
            {
                "batch_size": size,
                "method": summary.methods[j].value,
                "best_lr": None if i is None else summary.lrs[i],
                "excess_loss": None if i is None else float(summary.excess[i, j]),
                "epochs_to_target": float(epochs) if math.isfinite(epochs) else None,
                "stability_bound": float(summary.bounds[j]),
                "diverged_lrs": [lr for k, lr in enumerate(summary.lrs) if summary.diverged[k, j]],
            }
        )
    return best


def sweep_markdown(
    best: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    png: bytes,
    text: str,
    histories_file: str,
) -> str:
    """Markdown artifact: caption, embedded figure, best step size per batch size, files."""
    image = base64.b64encode(png).decode("ascii")
    diverged = sum(r["diverged"] for r in rows)
    lines = [
        f"# {TITLE}",
        "",
        text,
        "",
        f"![sweep](data:image/png;base64,{image})",
        "",
        "| Batch size | Method | Best step size | Final loss − floor | Epochs to target "
        "| Stability bound | Diverged at step sizes |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {b['batch_size']:,} | {b['method']} | {_fmt(b['best_lr'])} | {_fmt(b['excess_loss'])} "
        f"| {_fmt(b['epochs_to_target'])} | {b['stability_bound']:.4g} "
        f"| {', '.join(f'{lr:g}' for lr in b['diverged_lrs']) or 'none'} |"
        for b in best
    ]
    lines += [
        "",
        f"**{diverged} of {len(rows)} runs diverged.** Target: the loss above the least-squares "
        f"floor falls to {TARGET_FRACTION:g} of its starting value.",
        "",
        f"Every run: table artifact `{CELLS_KEY}`. Every epoch of every run: `{histories_file}`.",
    ]
    return "\n".join(lines) + "\n"


def history_batches(
    cells: Sequence[Cell], histories: Sequence[History]
) -> Iterator[pa.RecordBatch]:
    """One record batch per cell: its per-epoch history tagged with the cell."""
    for cell, h in zip(cells, histories, strict=True):
        rows = h.epoch.shape[0]
        yield pa.record_batch(
            [
                pa.array(np.full(rows, cell.seed, dtype=np.int64)),
                pa.array([cell.method.value] * rows, pa.string()),
                pa.array(np.full(rows, cell.lr)),
                pa.array(np.full(rows, cell.batch_size, dtype=np.int64)),
                pa.array(h.epoch),
                pa.array(h.loss),
                pa.array(h.w),
                pa.array(h.b),
                pa.array(h.updates),
                pa.array(np.full(rows, bool(h.diverged))),
            ],
            schema=_HISTORY_SCHEMA,
        )


class SweepReport(BaseModel):
    """Where a sweep's report files are, and its headline results."""

    model_config = ConfigDict(frozen=True)

    directory: str
    figure: str
    figure_svg: str
    histories: str
    diverged: int
    best: list[dict[str, Any]]


def report_name(params: SweepParams) -> str:
    """Same sweep, same report folder (a re-run replaces it)."""
    relevant = params.model_dump(mode="json", exclude={"refresh", "data_dir"})
    return f"sweep-{stable_digest(relevant)[:10]}"


@task(cache_policy=NO_CACHE, task_run_name="publish-sweep")
def publish_sweep(
    cells: list[Cell],
    histories: list[HistoryRef],
    datasets: list[DatasetRef],
    params: SweepParams,
    data_dir: str,
) -> SweepReport:
    """Draw the sweep figure, publish it with a table of every run, store all histories."""
    out = reports_dir(Path(data_dir)) / report_name(params)
    loaded = [read_history(h.file) for h in histories]
    floors = {seed: floor_loss(d) for seed, d in zip(params.seeds, datasets, strict=True)}
    rows = cell_rows(cells, loaded, floors)
    summary = summarise(rows)
    first = params.seeds[0]
    curves = best_curves(cells, loaded, summary, first)
    text = caption(params)
    png, svg = out / "sweep.png", out / "sweep.svg"
    save_figure(build_sweep_figure(summary, curves, floors[first], first, text), png, svg)
    record = write_parquet(
        out / "histories.parquet",
        _HISTORY_SCHEMA,
        history_batches(cells, loaded),
        {"gdflow.kind": "sweep-histories", "gdflow.sweep": params.model_dump_json()},
    )
    best = best_rows(summary)
    create_markdown_artifact(
        key=SWEEP_KEY,
        markdown=sweep_markdown(best, rows, png.read_bytes(), text, record.path),
        description="Step size x batch size sweep: figure and best step size per batch size",
    )
    create_table_artifact(key=CELLS_KEY, table=rows, description="Every run of the sweep")
    get_run_logger().info("Sweep figure: %s; all histories: %s", png, record.path)
    return SweepReport(
        directory=str(out),
        figure=str(png),
        figure_svg=str(svg),
        histories=record.path,
        diverged=sum(r["diverged"] for r in rows),
        best=best,
    )
