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
from prefect.events import emit_event
from prefect.runtime import flow_run, task_run
from pydantic import BaseModel

from tasks import paths
from tasks.data.dataset import DatasetRef, load_columns, stream_columns
from tasks.data.userfile import SourceFile, ingest
from tasks.digest import code_version, stable_digest
from tasks.history import MethodResult, read_history, write_history
from tasks.params import MAX_SAMPLES, Cell, DataSpec, MethodSpec, RunParams, SweepParams
from tasks.policies import (
    REPORT_LIMIT_S,
    RETRY_IO,
    damaged,
    intact_output,
    records,
    run_key,
    time_limit,
)
from tasks.storage import FileRecord, read_manifest, write_bytes_atomic, write_parquet

# A training reports its progress once it has worked this long: a short one's log is its result.
SHOW_PROGRESS_AFTER_S = 2.0
# Its progress log records carry the figures in this attribute, for the command line's
# progress bars (flows.terminal).
PROGRESS_FIELD = "gdflow_progress"
# The event a training that diverged emits, for automations (docs/operations.md).
DIVERGED_EVENT = "gdflow.method.diverged"


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


def _dataset_file(spec: DataSpec, data_dir: str) -> Path:
    return paths.dataset_path(Path(data_dir), spec)


def _user_copy(source: SourceFile, x_col: str, y_col: str, data_dir: str) -> Path:
    return paths.user_dataset_path(Path(data_dir), source, x_col, y_col)


def _history_file(dataset: DatasetRef, spec: MethodSpec, data_dir: str) -> Path:
    return paths.history_path(Path(data_dir), dataset, spec)


# Deterministic work: no retries (a second try fails the same way). Sized for the largest
# data set the parameters allow, which takes about 10 min here.
@task(
    cache_policy=intact_output(_dataset_file),
    persist_result=True,
    task_run_name="generate-n{spec.n_samples}-seed{spec.seed}",
    timeout_seconds=time_limit(MAX_SAMPLES),
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


# Reads a file that may be remote, twice (its hash, then the copy); sized for the largest data
# set the parameters allow.
@task(
    cache_policy=intact_output(_user_copy),
    persist_result=True,
    task_run_name="load-data",
    timeout_seconds=time_limit(MAX_SAMPLES, passes=2),
    **RETRY_IO,
)
def load_user_data(source: SourceFile, x_col: str, y_col: str, data_dir: str) -> DatasetRef:
    """Check the user's Parquet file and store its x and y columns as the run's data set."""
    ref = ingest(source, x_col, y_col, _user_copy(source, x_col, y_col, data_dir))
    get_run_logger().info("Loaded %s -> %s", ref.source, ref.file.path)
    return ref


class ProgressReport:
    """Where one training's progress goes once it has worked SHOW_PROGRESS_AFTER_S: a log line
    about every tenth of the epochs, a Prefect progress artifact and the figures of a terminal
    progress bar."""

    def __init__(self, spec: MethodSpec) -> None:
        self.spec = spec
        self.logger = get_run_logger()
        self.started = time.monotonic()
        self.artifact: UUID | None = None

    def __call__(self, epoch: int, loss: float) -> None:
        if time.monotonic() - self.started < SHOW_PROGRESS_AFTER_S:
            return
        epochs, name = self.spec.epochs, self.spec.method.value
        percent = 100.0 * epoch / epochs
        if self.artifact is None:
            self.artifact = create_progress_artifact(
                percent,
                key=f"train-{name}-progress",
                description=f"Training {name}: share of the {epochs} epochs done",
            )
        else:
            update_progress_artifact(self.artifact, percent)
        bar = {"epoch": epoch, "epochs": epochs, "loss": loss}
        line = "%s: epoch %d/%d (%.0f%%), loss %.4g"
        self.logger.info(line, name, epoch, epochs, percent, loss, extra={PROGRESS_FIELD: bar})


# Deterministic work: no retries. Its work, rows x epochs, has no useful fixed bound
# (10^10 x 10^6): the flows set its time limit from each run's parameters (time_limit).
@task(
    cache_policy=intact_output(_history_file),
    persist_result=True,
    task_run_name="train-{spec.method.value}-lr{spec.lr:g}",
)
def train_method(dataset: DatasetRef, spec: MethodSpec, data_dir: str) -> MethodResult:
    """Train one method on the stored data set and store its per-epoch history."""
    return _train(dataset, spec, data_dir)


class CellResult(BaseModel):
    """A sweep cell's training result, and whether it came from the cache."""

    result: MethodResult
    cached: bool


# As train_method; gd_sweep sets its time limit from the batch's size.
@task(cache_policy=NO_CACHE, persist_result=False)
def train_cells(
    cells: list[tuple[DatasetRef, MethodSpec]], data_dir: str, refresh: bool = False
) -> list[CellResult]:
    """Train a batch of a sweep's cells, one after another, each cached as a train_method run
    of its own: a cell that any run computed (and whose history is intact) is read back, the
    others are trained and recorded under train_method's key, under the same lock. One task
    run per batch: a Prefect task run costs 0.1 to 0.5 s, a cell's training milliseconds."""
    store = records(Path(data_dir))
    results = []
    for dataset, spec in cells:
        key = run_key(train_method.name, {"dataset": dataset, "spec": spec, "data_dir": data_dir})
        target = _history_file(dataset, spec, data_dir)
        store.acquire_lock(key)
        try:
            if not refresh and store.exists(key) and not damaged(store, key, target):
                results.append(CellResult(result=store.read(key).result, cached=True))
                continue
            result = _train(dataset, spec, data_dir)
            store.write(result, key=key)
            results.append(CellResult(result=result, cached=False))
        finally:
            store.release_lock(key)
    return results


def _train(dataset: DatasetRef, spec: MethodSpec, data_dir: str) -> MethodResult:
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
        emit_event(
            DIVERGED_EVENT,
            resource={"prefect.resource.id": f"prefect.flow-run.{flow_run.id}"},
            related=[
                {
                    "prefect.resource.id": f"prefect.task-run.{task_run.id}",
                    "prefect.resource.role": "task-run",
                }
            ],
            payload={
                "method": result.method,
                "lr": result.lr,
                "stability_bound": result.stability_bound,
                "reason": result.reason,
            },
        )
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
