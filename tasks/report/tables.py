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

# (row key, column title) of the results table and of its details, in order: each fits, headers
# on one line, the 690 px that Prefect's V2 UI gives a markdown artifact.
COLUMNS = (
    ("method", "Method"),
    ("lr", "Step size"),
    ("final_loss", "Final loss"),
    ("w", "w"),
    ("b", "b"),
    ("updates", "Updates"),
    ("diverged", "Diverged"),
)
DETAIL_COLUMNS = (
    ("method", "Method"),
    ("w_minus_true", "w − true"),
    ("b_minus_true", "b − true"),
    ("w_minus_lstsq", "w − ŵ"),
    ("b_minus_lstsq", "b − b̂"),
    ("stability_bound", "Stable below"),
    ("wall_time_s", "Time (s)"),
)
DETAILS = "ŵ, b̂: the least-squares fit. Stable below: the stability bound of the step size."


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


def figure_markdown(alt: str, png: bytes) -> str:
    """A report's figure as a markdown image (a data URL) with `alt` as its alternative text."""
    image = base64.b64encode(png).decode("ascii")
    return f"![{markdown_text(alt)}](data:image/png;base64,{image})"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table of the `columns` (row key, title) of `rows`, cells by format_cell."""
    return "\n".join(
        [
            "| " + " | ".join(title for _, title in columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
            *("| " + " | ".join(format_cell(row[k]) for k, _ in columns) + " |" for row in rows),
        ]
    )


def comparison_markdown(
    rows: list[dict[str, Any]], png_bytes: bytes, caption: str, source: str
) -> str:
    """Markdown artifact: data source, embedded figure (with the caption), results and details
    tables, divergences."""
    blocks = [
        f"# {TITLE}",
        "Data: " + markdown_text(source),
        figure_markdown(caption, png_bytes),  # the figure shows its caption: here it is not text
        markdown_table(rows, COLUMNS),
        markdown_table(rows, DETAIL_COLUMNS),
        DETAILS,
    ]
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


def shown(value: float | None) -> float | None:
    """A table artifact's number: 4 significant digits, None if not finite (JSON has no inf)."""
    value = finite_or_none(value)
    return None if value is None else float(f"{value:.4g}")


def table_artifact(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` as a table artifact shows them: every float rounded by `shown`."""
    return [{k: shown(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def loss_table(histories: Sequence[History], max_rows: int = 1001) -> list[dict[str, Any]]:
    """JSON-safe rows of the loss of every method per epoch (evenly thinned to `max_rows`),
    to 4 significant digits."""
    epochs = sorted({int(e) for h in histories for e in h.epoch})
    if len(epochs) > max_rows:
        keep = np.unique(np.linspace(0, len(epochs) - 1, max_rows).round().astype(int))
        epochs = [epochs[i] for i in keep]
    losses = {
        h.method: dict(zip(h.epoch.tolist(), h.loss.tolist(), strict=True)) for h in histories
    }
    return [
        {"epoch": e} | {method: shown(by_epoch.get(e)) for method, by_epoch in losses.items()}
        for e in epochs
    ]
