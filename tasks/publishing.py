"""Stage 3: the comparison figure, tables and summary, as files and Prefect artifacts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks.caching import stable_digest
from tasks.dataset import DatasetRef
from tasks.fitting import HistoryRef
from tasks.history import read_history
from tasks.params import RunParams
from tasks.paths import reports_dir
from tasks.reporting import (
    build_figure,
    comparison_markdown,
    loss_table,
    results_rows,
    save_figure,
)
from tasks.storage import write_bytes_atomic

COMPARISON_KEY = "gd-comparison"
LOSSES_KEY = "gd-losses"


class ReportRef(BaseModel):
    """Where a run's report files are."""

    model_config = ConfigDict(frozen=True)

    directory: str
    figure: str
    figure_svg: str
    summary: str


def report_name(params: RunParams) -> str:
    """Same parameters, same report folder (a re-run replaces it)."""
    relevant = params.model_dump(mode="json", exclude={"refresh", "data_dir"})
    return f"{params.preset}-{stable_digest(relevant)[:10]}"


def caption(params: RunParams) -> str:
    steps = ", ".join(f"{m.value} {params.lr(m):g}" for m in params.methods)
    batch = (
        f" (batch {params.batch_size})"
        if any(m.value == "minibatch" for m in params.methods)
        else ""
    )
    order = "shuffled each epoch" if params.shuffle else "in stored order"
    return (
        f"preset {params.preset} · n = {params.n_samples:,}, noise σ = {params.noise_std:g}, "
        f"seed {params.seed} · {params.epochs} epochs "
        f"from (w, b) = ({params.w0:g}, {params.b0:g}) · "
        f"step sizes: {steps}{batch} · points {order} · {params.dtype}, {params.engine} engine"
    )


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


@task(cache_policy=NO_CACHE, task_run_name="publish-report")
def publish_report(
    dataset: DatasetRef, histories: list[HistoryRef], params: RunParams, data_dir: str
) -> ReportRef:
    """Draw the comparison figure and publish it with the results tables."""
    out = reports_dir(Path(data_dir)) / report_name(params)
    loaded = [read_history(h.file) for h in histories]
    text = caption(params)
    figure = build_figure(
        loaded,
        np.asarray(dataset.preview_x),
        np.asarray(dataset.preview_y),
        dataset.stats(),
        true_slope=params.slope,
        true_intercept=params.intercept,
        caption=text,
    )
    png, svg = out / "comparison.png", out / "comparison.svg"
    save_figure(figure, png, svg)
    rows = results_rows(loaded, dataset.stats(), params.slope, params.intercept)
    create_markdown_artifact(
        key=COMPARISON_KEY,
        markdown=comparison_markdown(rows, png.read_bytes(), text, dataset.source),
        description="Gradient descent comparison: figure and results per method",
    )
    create_table_artifact(
        key=LOSSES_KEY,
        table=loss_table(loaded),
        description="Full-data MSE at the start of each epoch",
    )
    summary = out / "summary.json"
    write_bytes_atomic(
        summary,
        json.dumps(
            {
                "params": params.model_dump(mode="json"),
                "dataset": dataset.file.model_dump(),
                "results": [
                    {k: _json_number(v) if isinstance(v, float) else v for k, v in r.items()}
                    for r in rows
                ],
            },
            indent=2,
        ).encode(),
    )
    get_run_logger().info("Figure: %s", png)
    return ReportRef(directory=str(out), figure=str(png), figure_svg=str(svg), summary=str(summary))
