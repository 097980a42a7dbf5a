"""The training tasks: one method on a stored data set, or a batch of a sweep's cells, each
cached on its own; a long training reports its progress."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run, task_run
from pydantic import BaseModel

from tasks import paths
from tasks.data.dataset import DatasetRef, load_columns, stream_columns
from tasks.history import MethodResult, write_history
from tasks.params import MethodSpec
from tasks.policies import (
    damaged,
    intact_output,
    records,
    run_key,
)

# A training reports its progress once it has worked this long: a short one's log is its result.
SHOW_PROGRESS_AFTER_S = 2.0
# Its progress log records carry the figures in this attribute, for the command line's
# progress bars (flows.terminal).
PROGRESS_FIELD = "gdflow_progress"
# The event a training that diverged emits, for automations (docs/operations.md).
DIVERGED_EVENT = "gdflow.method.diverged"


def _history_file(dataset: DatasetRef, spec: MethodSpec, data_dir: str) -> Path:
    return paths.history_path(Path(data_dir), dataset, spec)


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
    cells: list[tuple[str, DatasetRef, MethodSpec]], data_dir: str, refresh: bool = False
) -> list[CellResult]:
    """Train a batch of a sweep's (label, data set, method) cells, one after another, each
    cached as a train_method run of its own: a cell that any run computed (and whose history is
    intact) is read back, the others are trained and recorded under train_method's key, under
    the same lock. One task run per batch: a Prefect task run costs 0.1 to 0.5 s, a cell's
    training milliseconds."""
    store = records(Path(data_dir))
    results = []
    for label, dataset, spec in cells:
        key = run_key(train_method.name, {"dataset": dataset, "spec": spec, "data_dir": data_dir})
        target = _history_file(dataset, spec, data_dir)
        store.acquire_lock(key)
        try:
            if not refresh and store.exists(key) and not damaged(store, key, target):
                results.append(CellResult(result=store.read(key).result, cached=True))
                continue
            result = _train(dataset, spec, data_dir, label)
            store.write(result, key=key)
            results.append(CellResult(result=result, cached=False))
        finally:
            store.release_lock(key)
    cached = sum(r.cached for r in results)
    get_run_logger().info(
        "%d cells: %d trained, %d from the cache", len(cells), len(cells) - cached, cached
    )
    return results


def _train(
    dataset: DatasetRef, spec: MethodSpec, data_dir: str, label: str | None = None
) -> MethodResult:
    """Train one method on the stored data set and store its per-epoch history; its log lines
    name it by `label` (a sweep's cell), else by its method."""
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
        logger.warning("%s diverged: %s", label or result.method, result.reason)
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
        label or result.method,
        result.final_loss,
        result.final_w,
        result.final_b,
        f"{result.updates:,}",
        result.wall_time_s,
    )
    return result
