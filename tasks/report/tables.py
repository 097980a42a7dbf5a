"""The comparison run's caption, results rows, markdown artifact and per-epoch loss table."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tasks.history import History, MethodResult
from tasks.params import Method, RunParams, SharedParams
from tasks.stats import Moments

# What makes markup of plain text within a line: emphasis, code, links and images, tables.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]|~])")
TITLE = "Gradient descent on y = w·x + b: batch vs stochastic vs mini-batch"
COMPARISON_KEY = "gd-comparison"  # the markdown artifact
LOSSES_KEY = "gd-losses"  # the loss table artifact

# (row key, column title) of the results table, in order.
COLUMNS = (
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


def settings_caption(params: SharedParams, data: str, steps: str) -> str:
    """A figure's caption: the `data`, then the training settings with the `steps` sizes."""
    order = "shuffled each epoch" if params.shuffle else "in stored order"
    return (
        f"{data} · {params.epochs} epochs from (w, b) = ({params.w0:g}, {params.b0:g}) · "
        f"{steps} · points {order} · {params.dtype}, {params.engine} engine"
    )


def caption(params: RunParams, source: str) -> str:
    """The figure's caption: where the data came from, then the training settings."""
    steps = ", ".join(f"{m.value} {params.lr(m):g}" for m in params.methods)
    batch = f" (batch {params.batch_size})" if Method.minibatch in params.methods else ""
    data = (
        f"data: {source}"
        if params.data
        else f"n = {params.n_samples:,}, noise σ = {params.noise_std:g}, seed {params.seed}"
    )
    return settings_caption(
        params, f"preset {params.preset} · {data}", f"step sizes: {steps}{batch}"
    )


def results_rows(
    results: Sequence[MethodResult],
    moments: Moments,
    true_slope: float | None,
    true_intercept: float | None,
) -> list[dict[str, Any]]:
    """One summary row per method; non-finite numbers are kept as float inf/nan.

    Without a true line (the user's own data) the differences to it are None (empty cells).
    """
    w_ls, b_ls = moments.least_squares()
    return [
        {
            "method": r.method,
            "lr": r.lr,
            "final_loss": r.final_loss,
            "w": r.final_w,
            "b": r.final_b,
            "w_minus_true": None if true_slope is None else r.final_w - true_slope,
            "b_minus_true": None if true_intercept is None else r.final_b - true_intercept,
            "w_minus_lstsq": r.final_w - w_ls,
            "b_minus_lstsq": r.final_b - b_ls,
            "updates": r.updates,
            "wall_time_s": r.wall_time_s,
            "diverged": r.diverged,
            "reason": r.reason,
            "stability_bound": r.stability_bound,
        }
        for r in results
    ]


def format_cell(value: Any) -> str:
    """A table cell: 4 significant digits, non-finite values written out."""
    if isinstance(value, bool):
        return "**yes** ⚠" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"overflow ({value:g})" if math.isinf(value) else f"{value:.4g}"  # nan: "nan"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def markdown_text(text: str) -> str:
    """`text` as literal text in markdown: HTML and markdown's own punctuation escaped, so a
    file or column name the user chose is shown as it is, never as markup."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", html.escape(text, quote=False))


def figure_markdown(title: str, texts: Sequence[str], alt: str, png: bytes) -> list[str]:
    """The first blocks of a report's markdown: its title, texts and the figure (a data URL)."""
    image = base64.b64encode(png).decode("ascii")
    return [f"# {title}", *texts, f"![{alt}](data:image/png;base64,{image})"]


def comparison_markdown(
    rows: list[dict[str, Any]], png_bytes: bytes, caption: str, source: str
) -> str:
    """Markdown artifact: caption, data source, embedded figure, results table, divergences."""
    table = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
        *("| " + " | ".join(format_cell(row[key]) for key, _ in COLUMNS) + " |" for row in rows),
    ]
    texts = [markdown_text(caption), "Data: " + markdown_text(source)]
    blocks = figure_markdown(TITLE, texts, "comparison", png_bytes)
    blocks.append("\n".join(table))
    diverged = [
        f"- **{row['method']} diverged** (step {format_cell(row['lr'])}): "
        f"{format_cell(row['reason']) or 'no reason given'}"
        for row in rows
        if row["diverged"]
    ]
    if diverged:
        blocks.append("\n".join(diverged))
    return "\n\n".join(blocks) + "\n"


def finite_or_none(value: float | None) -> float | None:
    """The value if it is a finite number, else None (JSON has no inf or nan)."""
    return value if value is not None and math.isfinite(value) else None


def loss_table(histories: Sequence[History], max_rows: int = 1001) -> list[dict[str, Any]]:
    """JSON-safe rows of the loss of every method per epoch (evenly thinned to `max_rows`)."""
    epochs = sorted({int(e) for h in histories for e in h.epoch})
    if len(epochs) > max_rows:
        keep = np.unique(np.linspace(0, len(epochs) - 1, max_rows).round().astype(int))
        epochs = [epochs[i] for i in keep]
    losses = {
        h.method: dict(zip(h.epoch.tolist(), h.loss.tolist(), strict=True)) for h in histories
    }
    return [
        {"epoch": e}
        | {method: finite_or_none(by_epoch.get(e)) for method, by_epoch in losses.items()}
        for e in epochs
    ]
