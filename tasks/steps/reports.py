"""The report tasks: a run's comparison figure and tables, a sweep's heat map and tables, the
trend over the last runs, published as Prefect artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks import paths
from tasks.data.dataset import DatasetRef
from tasks.digest import code_version, stable_digest
from tasks.history import MethodResult, read_history
from tasks.params import Cell, RunParams, SweepParams
from tasks.policies import (
    REPORT_LIMIT_S,
    RETRY_IO,
    time_limit,
)
from tasks.storage import FileRecord, read_manifest, write_bytes_atomic, write_parquet


class DatasetInfo(BaseModel):
    """The data set a run trained on: its file record's path, hash and rows, and its source."""

    path: str
    sha256: str
    rows: int
    source: str


class RunReport(BaseModel):
    """A comparison run's report: its data set, each method's result, where its files are."""

    dataset: DatasetInfo
    methods: dict[str, MethodResult]
    figure: str
    figure_svg: str
    summary: str


class SweepReport(BaseModel):
    """A sweep's report: its data sets, how many cells ran and diverged, the best step size per
    batch size, where its files are."""

    datasets: dict[str, str]
    cells: int
    diverged: int
    best: list[dict[str, Any]]
    figure: str
    figure_svg: str
    histories: str


def _manifest(result: MethodResult) -> FileRecord:
    """The manifest of a result's stored history (content hash, size, time on disk)."""
    record = read_manifest(Path(result.history))
    if record is None:
        raise FileNotFoundError(f"history {result.history} is missing; run again")
    return record


def _figure_is_current(files: paths.ReportFiles, inputs: str) -> bool:
    """True when the figure files exist and were drawn from exactly these inputs."""
    try:
        return (
            files.drawn_from.read_text() == inputs and files.png.is_file() and files.svg.is_file()
        )
    except OSError:
        return False


# Reads the histories and writes the figure and tables (retried on I/O errors).
@task(
    cache_policy=NO_CACHE,
    task_run_name="publish-report",
    timeout_seconds=REPORT_LIMIT_S,
    **RETRY_IO,
)
def publish_report(
    dataset: DatasetRef, results: list[MethodResult], params: RunParams, data_dir: str
) -> RunReport:
    """Draw the comparison figure and publish it with the results tables."""
    from tasks.report import tables

    files = paths.report_files(Path(data_dir), params)
    records = [_manifest(result) for result in results]
    histories = [read_history(record) for record in records]
    stats = dataset.stats()
    caption = tables.caption(params, dataset.source)
    # The user's own data has no known true line: the synthetic slope/intercept do not apply.
    slope, intercept = (None, None) if params.data else (params.slope, params.intercept)
    hashes = [record.sha256 for record in records]
    inputs = stable_digest(dataset.file.sha256, hashes, caption, code_version())
    if not _figure_is_current(files, inputs):
        from tasks.report import figure  # matplotlib (0.7 s): only when a figure is drawn

        x, y = np.asarray(dataset.preview_x), np.asarray(dataset.preview_y)
        drawing = figure.build_figure(
            histories, x, y, stats, true_slope=slope, true_intercept=intercept, caption=caption
        )
        figure.save_figure(drawing, files.png, files.svg)
        write_bytes_atomic(files.drawn_from, inputs.encode())
    rows = tables.results_rows(results, stats, slope, intercept)
    create_markdown_artifact(
        key=tables.COMPARISON_KEY,
        markdown=tables.comparison_markdown(rows, files.png.read_bytes(), caption, dataset.source),
        description="Gradient descent comparison: figure and results per method",
    )
    create_table_artifact(
        key=tables.LOSSES_KEY,
        table=tables.loss_table(histories),
        description="Full-data MSE at the start of each epoch",
    )
    contents = {
        "params": params.model_dump(mode="json"),
        "dataset": dataset.file.model_dump(),
        "results": [
            {k: tables.finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}
            for row in rows
        ],
    }
    write_bytes_atomic(files.summary, json.dumps(contents, indent=2).encode())
    get_run_logger().info("Figure: %s", files.png)
    return RunReport(
        dataset=DatasetInfo(**dataset.file.model_dump(), source=dataset.source),
        methods={r.method: r for r in results},
        figure=str(files.png),
        figure_svg=str(files.svg),
        summary=str(files.summary),
    )


# As publish_report; its work, cells x epochs, has no fixed bound: gd_sweep sets its time limit.
@task(cache_policy=NO_CACHE, task_run_name="publish-sweep", **RETRY_IO)
def publish_sweep(
    cells: list[Cell],
    results: list[MethodResult],
    datasets: dict[int, DatasetRef],
    params: SweepParams,
    data_dir: str,
) -> SweepReport:
    """Draw the sweep figure, publish it with a table of every run, store all histories."""
    from tasks.report import figure, sweep_figure, sweep_tables, tables  # matplotlib: it draws

    files = paths.report_files(Path(data_dir), params)
    histories = [read_history(_manifest(result)) for result in results]
    floors = {seed: sweep_tables.floor_loss(d.stats()) for seed, d in datasets.items()}
    rows = sweep_tables.cell_rows(cells, results, histories, floors)
    summary = sweep_tables.summarise(rows)
    first = params.seeds[0]
    curves = sweep_figure.best_curves(cells, histories, summary, first)
    caption = sweep_tables.sweep_caption(params)
    drawing = sweep_figure.build_sweep_figure(summary, curves, floors[first], first, caption)
    figure.save_figure(drawing, files.png, files.svg)
    record = write_parquet(
        files.histories,
        sweep_tables.HISTORY_SCHEMA,
        sweep_tables.history_batches(cells, histories),
        {"gdflow.kind": "sweep-histories", "gdflow.sweep": params.model_dump_json()},
    )
    best = sweep_tables.best_rows(summary)
    create_markdown_artifact(
        key=sweep_tables.SWEEP_KEY,
        markdown=sweep_tables.sweep_markdown(
            best, rows, files.png.read_bytes(), caption, record.path
        ),
        description="Step size x batch size sweep: figure and best step size per batch size",
    )
    create_table_artifact(
        key=sweep_tables.CELLS_KEY, table=tables.table_artifact(rows), description="Every run"
    )
    get_run_logger().info("Sweep figure: %s; all histories: %s", files.png, record.path)
    return SweepReport(
        datasets={str(seed): d.file.path for seed, d in datasets.items()},
        cells=len(cells),
        diverged=sum(r["diverged"] for r in rows),
        best=best,
        figure=str(files.png),
        figure_svg=str(files.svg),
        histories=record.path,
    )


@task(cache_policy=NO_CACHE, task_run_name="publish-trend", timeout_seconds=time_limit(0))
def publish_trend(key: str, subject: str, rows: list[dict[str, Any]]) -> None:
    """Publish the trend of the last runs: each method's final loss plotted, and their table."""
    from tasks.report import trend  # matplotlib: only when a trend is drawn

    create_markdown_artifact(
        key=key,
        markdown=trend.trend_markdown(subject, rows),
        description=f"Final loss per method over the last runs of {subject}",
    )
