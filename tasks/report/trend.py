"""The trend across runs: a small plot of each method's final loss over the last runs, and the
table of their results, as the markdown of the gd-trend artifact.

matplotlib is imported at the top: the trend step imports this module only to draw the plot.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tasks.report.style import DPI, drawable, log_limits, log_scale, method_colour, method_name
from tasks.report.tables import format_cell, markdown_text

FIGSIZE = (6.9, 2.6)  # inches: the 690 px Prefect's UI gives a markdown artifact, 100 per inch
# (row key, column title) of the table, in order: it fits the width of the UI's markdown.
COLUMNS = (
    ("time", "Time (UTC)"),
    ("run_name", "Run"),
    ("method", "Method"),
    ("lr", "Step size"),
    ("final_loss", "Final loss"),
    ("excess_loss", "Above least sq."),
    ("diverged", "Diverged"),
)


def trend_png(title: str, rows: Sequence[dict[str, Any]]) -> bytes:
    """Final loss per method (log scale) against the run, oldest first; a cross where a method
    diverged. `rows`: one per run and method, in the order of the runs."""
    runs = list(dict.fromkeys(row["run_id"] for row in rows))
    drawing = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = drawing.add_subplot()
    for i, method in enumerate(dict.fromkeys(row["method"] for row in rows)):
        mine = [row for row in rows if row["method"] == method]
        x = np.array([runs.index(row["run_id"]) + 1 for row in mine])
        loss = np.array([np.nan if r["final_loss"] is None else r["final_loss"] for r in mine])
        ok = drawable(loss) & (loss > 0)
        colour = method_colour(method, i)
        ax.plot(x[ok], loss[ok], "-o", ms=3, lw=1.3, color=colour, label=method_name(method))
        crosses = ok & np.array([row["diverged"] for row in mine])
        ax.plot(x[crosses], loss[crosses], "X", ms=7, mec="black", color=colour)
    log_scale(ax, "y")
    losses = [row["final_loss"] for row in rows if row["final_loss"] is not None]
    ax.set_ylim(*log_limits(np.array(losses, dtype=np.float64)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, len(runs) + 0.5)
    ax.set_xlabel(f"run, oldest (1) to newest ({len(runs)})")
    ax.set_ylabel("final loss (MSE)")
    ax.set_title(title, loc="left", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    png = io.BytesIO()
    drawing.savefig(png, format="png")
    return png.getvalue()


def _cell(value: Any) -> str:
    """A table cell: times to the minute, names as plain text, numbers to 4 digits."""
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return markdown_text(value) if isinstance(value, str) else format_cell(value)


def trend_markdown(subject: str, rows: Sequence[dict[str, Any]]) -> str:
    """The gd-trend artifact: the plot, then the table of every run and method, newest first."""
    runs = len({row["run_id"] for row in rows})
    title = f"Final loss over the last {runs} runs of {subject}"
    image = base64.b64encode(trend_png(title, rows)).decode("ascii")
    table = [
        "| " + " | ".join(name for _, name in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
        *("| " + " | ".join(_cell(row[k]) for k, _ in COLUMNS) + " |" for row in reversed(rows)),
    ]
    blocks = [f"![{markdown_text(title)}](data:image/png;base64,{image})", "\n".join(table)]
    return "\n\n".join(blocks) + "\n"
