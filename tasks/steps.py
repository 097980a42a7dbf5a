"""The pipeline's Prefect tasks: each loads its inputs, calls pure code, and stores its result.

The heavy pure modules (torch for generating data, numba for training, matplotlib for figures)
are imported inside the tasks that use them, so a run whose steps are all cached loads none.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks import paths
from tasks.cache import intact_output
from tasks.data.dataset import DatasetRef, load_columns, stream_columns
from tasks.data.userfile import SourceFile, ingest
from tasks.digest import code_version, stable_digest
from tasks.history import MethodResult, read_history, write_history
from tasks.params import Cell, DataSpec, MethodSpec, RunParams, SweepParams
from tasks.storage import FileRecord, read_manifest, write_bytes_atomic, write_parquet

# A method shows a Prefect progress artifact once it has trained this long.
SHOW_PROGRESS_AFTER_S = 3.0


class ReportRef(BaseModel):
    """Where a run's report files are."""

    model_config = ConfigDict(frozen=True)

    figure: str
    figure_svg: str
    summary: str


def _dataset_file(spec: DataSpec, data_dir: str) -> Path:
    return paths.dataset_path(Path(data_dir), spec)


def _user_copy(source: SourceFile, x_col: str, y_col: str, data_dir: str) -> Path:
    return paths.user_dataset_path(Path(data_dir), source, x_col, y_col)


def _history_file(dataset: DatasetRef, spec: MethodSpec, data_dir: str) -> Path:
    return paths.history_path(Path(data_dir), dataset, spec)


@task(
    cache_policy=intact_output(_dataset_file),
    persist_result=True,
    task_run_name="generate-n{spec.n_samples}-seed{spec.seed}",
)
def generate_dataset(spec: DataSpec, data_dir: str) -> DatasetRef:
    """Generate the synthetic data set and store it as Parquet."""
    from tasks.data.synthetic import write_synthetic  # torch: only when data is generated

    target = _dataset_file(spec, data_dir)
    ref = write_synthetic(spec, target)
    get_run_logger().info(
        "Generated %s rows -> %s (sha256 %s)", f"{ref.file.rows:,}", target, ref.file.sha256[:12]
    )
    return ref


@task(cache_policy=intact_output(_user_copy), persist_result=True, task_run_name="load-data")
def load_user_data(source: SourceFile, x_col: str, y_col: str, data_dir: str) -> DatasetRef:
    """Check the user's Parquet file and store its x and y columns as the run's data set."""
    ref = ingest(source, x_col, y_col, _user_copy(source, x_col, y_col, data_dir))
    get_run_logger().info("Loaded %s -> %s", ref.source, ref.file.path)
    return ref


class ProgressReport:
    """Where one training's progress goes: a log line about every tenth of the epochs and, once
    it has trained SHOW_PROGRESS_AFTER_S, a Prefect progress artifact."""

    def __init__(self, spec: MethodSpec) -> None:
        self.spec = spec
        self.logger = get_run_logger()
        self.started = time.monotonic()
        self.artifact: UUID | None = None

    def __call__(self, epoch: int, loss: float) -> None:
        epochs, name = self.spec.epochs, self.spec.method.value
        percent = 100.0 * epoch / epochs
        self.logger.info("%s: epoch %d/%d (%.0f%%), loss %.4g", name, epoch, epochs, percent, loss)
        if self.artifact is not None:
            update_progress_artifact(self.artifact, percent)
        elif time.monotonic() - self.started >= SHOW_PROGRESS_AFTER_S:
            self.artifact = create_progress_artifact(
                percent,
                key=f"train-{name}-progress",
                description=f"Training {name}: share of the {epochs} epochs done",
            )


@task(
    cache_policy=intact_output(_history_file),
    persist_result=True,
    task_run_name="train-{spec.method.value}-lr{spec.lr:g}",
)
def train_method(dataset: DatasetRef, spec: MethodSpec, data_dir: str) -> MethodResult:
    """Train one method on the stored data set and store its per-epoch history."""
    from tasks.training.methods import train_stored  # numba: only when a method trains

    logger = get_run_logger()
    history = train_stored(
        dataset.file.rows,
        partial(stream_columns, dataset.file),
        partial(load_columns, dataset.file),
        spec,
        dataset.stats(),
        ProgressReport(spec),
    )
    target = _history_file(dataset, spec, data_dir)
    context = {"gdflow.dataset.sha256": dataset.file.sha256, "gdflow.spec": spec.model_dump_json()}
    write_history(history, target, context)
    result = MethodResult.from_history(history, target)
    if result.diverged:
        logger.warning("%s diverged: %s", result.method, result.reason)
    logger.info(
        "%s: final loss %.6g, w = %.6g, b = %.6g after %s updates in %.3f s",
        result.method,
        result.final_loss,
        result.final_w,
        result.final_b,
        f"{result.updates:,}",
        result.wall_time_s,
    )
    return result


def _records(results: list[MethodResult]) -> list[FileRecord]:
    """The manifests of the results' stored histories (content hash, size, time on disk)."""
    records = []
    for result in results:
        record = read_manifest(Path(result.history))
        if record is None:
            raise FileNotFoundError(f"history {result.history} is missing; run again")
        records.append(record)
    return records


def _figure_is_current(drawn: Path, inputs: str, *figures: Path) -> bool:
    """True when the figure files exist and were drawn from exactly these inputs."""
    try:
        return drawn.read_text() == inputs and all(f.is_file() for f in figures)
    except OSError:
        return False


@task(cache_policy=NO_CACHE, task_run_name="publish-report")
def publish_report(
    dataset: DatasetRef, results: list[MethodResult], params: RunParams, data_dir: str
) -> ReportRef:
    """Draw the comparison figure and publish it with the results tables."""
    from tasks.report import tables

    files = paths.report_files(Path(data_dir), params)
    records = _records(results)
    histories = [read_history(record) for record in records]
    caption = tables.caption(params, dataset.source)
    # The user's own data has no known true line: the synthetic slope/intercept do not apply.
    slope, intercept = (None, None) if params.data else (params.slope, params.intercept)
    png, svg, drawn = files.png, files.svg, files.drawn_from
    hashes = [record.sha256 for record in records]
    inputs = stable_digest(dataset.file.sha256, hashes, caption, code_version())
    if not _figure_is_current(drawn, inputs, png, svg):
        from tasks.report import figure  # matplotlib (0.7 s): only when a figure is drawn

        drawing = figure.build_figure(
            histories,
            np.asarray(dataset.preview_x),
            np.asarray(dataset.preview_y),
            dataset.stats(),
            true_slope=slope,
            true_intercept=intercept,
            caption=caption,
        )
        figure.save_figure(drawing, png, svg)
        write_bytes_atomic(drawn, inputs.encode())
    rows = tables.results_rows(results, dataset.stats(), slope, intercept)
    create_markdown_artifact(
        key=tables.COMPARISON_KEY,
        markdown=tables.comparison_markdown(rows, png.read_bytes(), caption, dataset.source),
        description="Gradient descent comparison: figure and results per method",
    )
    create_table_artifact(
        key=tables.LOSSES_KEY,
        table=tables.loss_table(histories),
        description="Full-data MSE at the start of each epoch",
    )
    summary = files.summary
    contents = {
        "params": params.model_dump(mode="json"),
        "dataset": dataset.file.model_dump(),
        "results": [
            {k: tables.finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}
            for row in rows
        ],
    }
    write_bytes_atomic(summary, json.dumps(contents, indent=2).encode())
    get_run_logger().info("Figure: %s", png)
    return ReportRef(figure=str(png), figure_svg=str(svg), summary=str(summary))


class SweepReport(BaseModel):
    """Where a sweep's report files are, and its headline results."""

    model_config = ConfigDict(frozen=True)

    figure: str
    figure_svg: str
    histories: str
    diverged: int
    best: list[dict[str, Any]]


@task(cache_policy=NO_CACHE, task_run_name="publish-sweep")
def publish_sweep(
    cells: list[Cell],
    results: list[MethodResult],
    datasets: list[DatasetRef],
    params: SweepParams,
    data_dir: str,
) -> SweepReport:
    """Draw the sweep figure, publish it with a table of every run, store all histories."""
    from tasks.report import figure, sweep_figure, sweep_tables  # matplotlib: a sweep draws

    files = paths.report_files(Path(data_dir), params)
    histories = [read_history(record) for record in _records(results)]
    by_seed = dict(zip(params.seeds, datasets, strict=True))
    floors = {seed: sweep_tables.floor_loss(d.stats()) for seed, d in by_seed.items()}
    rows = sweep_tables.cell_rows(cells, results, histories, floors)
    summary = sweep_tables.summarise(rows)
    first = params.seeds[0]
    curves = sweep_figure.best_curves(cells, histories, summary, first)
    caption = sweep_tables.sweep_caption(params)
    png, svg = files.png, files.svg
    drawing = sweep_figure.build_sweep_figure(summary, curves, floors[first], first, caption)
    figure.save_figure(drawing, png, svg)
    record = write_parquet(
        files.histories,
        sweep_tables.HISTORY_SCHEMA,
        sweep_tables.history_batches(cells, histories),
        {"gdflow.kind": "sweep-histories", "gdflow.sweep": params.model_dump_json()},
    )
    best = sweep_tables.best_rows(summary)
    create_markdown_artifact(
        key=sweep_tables.SWEEP_KEY,
        markdown=sweep_tables.sweep_markdown(best, rows, png.read_bytes(), caption, record.path),
        description="Step size x batch size sweep: figure and best step size per batch size",
    )
    create_table_artifact(key=sweep_tables.CELLS_KEY, table=rows, description="Every run")
    get_run_logger().info("Sweep figure: %s; all histories: %s", png, record.path)
    return SweepReport(
        figure=str(png),
        figure_svg=str(svg),
        histories=record.path,
        diverged=sum(r["diverged"] for r in rows),
        best=best,
    )
