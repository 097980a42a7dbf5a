"""The sweep's tables: one row per cell, the grid folded over seeds, the best step size per
batch size, its markdown artifact and the all-histories Parquet batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.history import History, MethodResult
from tasks.params import Cell, Method, SweepParams
from tasks.report.tables import (
    figure_markdown,
    finite_or_none,
    format_cell,
    settings_caption,
)
from tasks.stats import Moments

SWEEP_TITLE = "Step size × batch size: where gradient descent converges, and how close it gets"
SWEEP_KEY = "gd-sweep"  # the markdown artifact
CELLS_KEY = "gd-sweep-cells"  # the table artifact of every cell
# A run reaches its target once its loss above the least-squares floor is this fraction
# of what it was at the start.
TARGET_FRACTION = 1e-3
METHOD_WORDS = {Method.sgd: "SGD", Method.bgd: "BGD", Method.minibatch: "mini-batch"}
HISTORY_SCHEMA = pa.schema(
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


def floor_loss(moments: Moments) -> float:
    """The least-squares MSE of a data set: no step size can go below it."""
    return float(moments.mse(*moments.least_squares()))


def epochs_to_target(history: History, floor: float) -> int | None:
    """First epoch whose excess loss is TARGET_FRACTION of the starting one; None if never."""
    if history.diverged:
        return None
    excess = history.loss - floor
    hit = np.flatnonzero(np.isfinite(excess) & (excess <= TARGET_FRACTION * excess[0]))
    return int(history.epoch[hit[0]]) if hit.size else None


def cell_rows(
    cells: Sequence[Cell],
    results: Sequence[MethodResult],
    histories: Sequence[History],
    floors: dict[int, float],
) -> list[dict[str, Any]]:
    """One JSON-safe row per cell (non-finite numbers become None); `floors` by seed."""
    return [
        {
            "seed": cell.seed,
            "batch_size": cell.batch_size,
            "method": cell.method.value,
            "lr": cell.lr,
            "final_loss": finite_or_none(r.final_loss),
            "excess_loss": finite_or_none(r.final_loss - floors[cell.seed]),
            "epochs_to_target": epochs_to_target(h, floors[cell.seed]),
            "w": finite_or_none(r.final_w),
            "b": finite_or_none(r.final_b),
            "diverged": r.diverged,
            "stability_bound": r.stability_bound,
            "updates": r.updates,
            "wall_time_s": r.wall_time_s,
        }
        for cell, r, h in zip(cells, results, histories, strict=True)
    ]


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
    seeds = sorted({r["seed"] for r in rows})
    methods = {r["batch_size"]: Method(r["method"]) for r in rows}
    # Each field as an array [step size, batch size, seed]; None (never reached) as nan.
    fields = ("excess_loss", "diverged", "epochs_to_target", "stability_bound")
    grid = {key: np.full((len(lrs), len(sizes), len(seeds)), np.nan) for key in fields}
    for r in rows:
        at = lrs.index(r["lr"]), sizes.index(r["batch_size"]), seeds.index(r["seed"])
        for key, values in grid.items():
            values[at] = np.nan if r[key] is None else r[key]
    diverged = grid["diverged"].sum(axis=2).astype(np.int64)
    median_excess = np.median(np.maximum(grid["excess_loss"], 0.0), axis=2)
    excess = np.where(diverged == 0, median_excess, np.nan)
    epochs = np.median(grid["epochs_to_target"], axis=2)  # nan where some seed never got there
    bounds = np.median(grid["stability_bound"][0], axis=1)  # the same for every step size
    best = [int(np.nanargmin(col)) if np.isfinite(col).any() else None for col in excess.T]
    return GridSummary(
        lrs, sizes, [methods[s] for s in sizes], len(seeds), excess, diverged, epochs, bounds, best
    )


def best_rows(summary: GridSummary) -> list[dict[str, Any]]:
    """Per batch size: the best step size (median over seeds) and what it reached."""
    return [
        {
            "batch_size": size,
            "method": summary.methods[j].value,
            "best_lr": None if i is None else summary.lrs[i],
            "excess_loss": None if i is None else float(summary.excess[i, j]),
            "epochs_to_target": None if i is None else finite_or_none(float(summary.epochs[i, j])),
            "stability_bound": float(summary.bounds[j]),
            "diverged_lrs": [lr for k, lr in enumerate(summary.lrs) if summary.diverged[k, j]],
        }
        for j, (size, i) in enumerate(zip(summary.batch_sizes, summary.best, strict=True))
    ]


def sweep_caption(params: SweepParams) -> str:
    """The sweep figure's caption: the data sets, the grid and the training settings."""
    many = len(params.seeds) > 1
    seeds = ("seeds " if many else "seed ") + ", ".join(str(s) for s in params.seeds)
    grid = (
        f"{len(params.lrs)} step sizes × {len(params.batch_sizes)} batch sizes × "
        f"{len(params.seeds)} seed{'s' if many else ''}"
    )
    data = f"n = {params.n_samples:,} points, noise σ = {params.noise_std:g}, {seeds}"
    return settings_caption(params, data, grid)


def _cell(value: Any) -> str:
    return "—" if value is None else format_cell(value)


def sweep_markdown(
    best: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    png: bytes,
    caption: str,
    histories_file: str,
) -> str:
    """Markdown artifact: embedded figure, best step size per batch size, files."""
    keys = ("batch_size", "method", "best_lr", "excess_loss", "epochs_to_target", "stability_bound")
    table = [
        "| Batch | Method | Best step | Loss − floor | Epochs | Bound | Diverged at |",
        "|---|---|---|---|---|---|---|",
        *(
            "| " + " | ".join(_cell(b[key]) for key in keys) + " | "
            f"{', '.join(f'{lr:g}' for lr in b['diverged_lrs']) or 'none'} |"
            for b in best
        ),
    ]
    blocks = [
        f"# {SWEEP_TITLE}",
        figure_markdown(caption, png),  # the figure shows its caption: here it is not text
        "\n".join(table),
        "Per batch size (points per update), the best step size (median over seeds), its final "
        "loss above the least-squares floor, the epochs it took to reach the target, the "
        "stability bound of the step size, and the step sizes that diverged.",
        f"**{sum(r['diverged'] for r in rows)} of {len(rows)} runs diverged.** Target: the loss "
        f"above the least-squares floor falls to {TARGET_FRACTION:g} of its starting value.",
        f"Every run: table artifact `{CELLS_KEY}`. Every epoch of every run: `{histories_file}`.",
    ]
    return "\n\n".join(blocks) + "\n"


def history_batches(
    cells: Sequence[Cell], histories: Sequence[History]
) -> Iterator[pa.RecordBatch]:
    """One record batch (of HISTORY_SCHEMA) per cell: its per-epoch history tagged with it."""
    for cell, h in zip(cells, histories, strict=True):
        tags = cell.model_dump(mode="json") | {"diverged": bool(h.diverged)}
        columns = {name: getattr(h, name) for name in ("epoch", "loss", "w", "b", "updates")}
        columns |= {name: np.full(len(h.epoch), value) for name, value in tags.items()}
        yield pa.record_batch(columns, schema=HISTORY_SCHEMA)
