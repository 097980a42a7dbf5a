"""Stage 3: the comparison figure, tables and summary, as files and Prefect artifacts."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks import ahead, reporting
from tasks.dataset import DatasetRef
from tasks.fitting import HistoryRef
from tasks.history import read_history
from tasks.keys import stable_digest
from tasks.params import RunParams
from tasks.paths import report_name, reports_dir
from tasks.reporting import (
    build_figure,
    caption,
    comparison_markdown,
    loss_table,
    results_rows,
    save_figure,
    save_figure_bytes,
)
from tasks.storage import write_bytes_atomic

_REPORTING_SOURCE = hashlib.sha256(Path(reporting.__file__).read_bytes()).hexdigest()
COMPARISON_KEY = "gd-comparison"
LOSSES_KEY = "gd-losses"


class ReportRef(BaseModel):
    """Where a run's report files are."""

    model_config = ConfigDict(frozen=True)

    directory: str
    figure: str
    figure_svg: str
    summary: str


def _figure_is_current(drawn: Path, inputs: str, *figures: Path) -> bool:
    """True when the figure files exist and were drawn from exactly these inputs."""
    try:
        return drawn.read_text() == inputs and all(f.is_file() for f in figures)
    except OSError:
        return False


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


@task(cache_policy=NO_CACHE, task_run_name="publish-report")
def publish_report(
    dataset: DatasetRef, histories: list[HistoryRef], params: RunParams, data_dir: str
) -> ReportRef:
    """Draw the comparison figure and publish it with the results tables."""
    out = reports_dir(Path(data_dir)) / report_name(params)
    loaded = [read_history(h.file) for h in histories]
    text = caption(params, dataset.source)
    # The user's own data has no known true line: the synthetic slope/intercept do not apply.
    slope, intercept = (None, None) if params.data else (params.slope, params.intercept)
    png, svg = out / "comparison.png", out / "comparison.svg"
    drawn = out / ahead.FIGURE_INPUTS
    inputs = stable_digest(dataset.file, [h.file for h in histories], text, _REPORTING_SOURCE)
    if not _figure_is_current(drawn, inputs, png, svg):
        preview = np.asarray(dataset.preview_x), np.asarray(dataset.preview_y)
        figure = ahead.drawn(loaded, *preview, dataset.stats(), slope, intercept, text)
        if figure is not None:
            get_run_logger().info("Figure drawn ahead, while the run started")
            save_figure_bytes(figure, png, svg)
        else:
            drawing = build_figure(
                loaded,
                *preview,
                dataset.stats(),
                true_slope=slope,
                true_intercept=intercept,
                caption=text,
            )
            save_figure(drawing, png, svg)
        write_bytes_atomic(drawn, inputs.encode())
    rows = results_rows(loaded, dataset.stats(), slope, intercept)
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
