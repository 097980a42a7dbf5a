"""Stage 2: train one method on a stored data set and store its history."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from tasks import ahead, keys
from tasks.caching import STABLE_INPUTS, stable_digest
from tasks.dataset import DatasetRef, load_columns, stream_columns
from tasks.history import write_history
from tasks.params import MethodSpec
from tasks.paths import histories_dir
from tasks.storage import FileRecord

if TYPE_CHECKING:
    from tasks.ahead import Trained
    from tasks.history import History
    from tasks.training import Progress as ProgressCallback

# A run shows a terminal bar and a Prefect progress artifact once it has worked this long.
SHOW_PROGRESS_AFTER_S = 3.0


class HistoryRef(BaseModel):
    """A stored training history and the facts a report needs without reading it."""

    model_config = ConfigDict(frozen=True)

    method: str
    file: FileRecord
    lr: float
    final_loss: float
    final_w: float
    final_b: float
    diverged: bool
    reason: str | None
    stability_bound: float
    updates: int
    wall_time_s: float
    engine: str
    dtype: str


def history_path(data_dir: Path, dataset: DatasetRef, spec: MethodSpec) -> Path:
    """Where the history of `spec` trained on `dataset` lives (same inputs, same path)."""
    digest = stable_digest(dataset.file, spec, keys.CODE_VERSION)[:16]
    return histories_dir(data_dir) / f"{spec.method.value}-{digest}.parquet"


def streams(dataset: DatasetRef, spec: MethodSpec) -> bool:
    """Whether training reads the data from disk pass by pass (see training.streams_rows)."""
    from tasks.training import streams_rows

    return streams_rows(dataset.file.rows, spec)


def _train(dataset: DatasetRef, spec: MethodSpec, progress: ProgressCallback | None) -> History:
    from tasks.training import train_stored  # numba: only when training

    columns = (dataset.file, dataset.x_col, dataset.y_col)
    return train_stored(
        dataset.file.rows,
        partial(stream_columns, *columns),
        partial(load_columns, *columns),
        spec,
        dataset.stats(),
        progress,
    )


def fit(
    dataset: DatasetRef,
    spec: MethodSpec,
    target: Path,
    progress: ProgressCallback | None = None,
    ahead: Trained | None = None,
) -> HistoryRef:
    """Train `spec` on the data set and write its history to `target`.

    `progress(epoch, loss)` is told about every tenth of the epochs (see training.train).
    `ahead` is this training computed ahead (tasks.ahead): its history is stored instead.
    """
    if ahead is not None:
        for epoch, loss in ahead.ticks if progress is not None else ():
            progress(epoch, loss)
        history = ahead.history
    else:
        history = _train(dataset, spec, progress)
    record = write_history(
        history,
        target,
        {"gdflow.dataset.sha256": dataset.file.sha256, "gdflow.spec": spec.model_dump_json()},
    )
    return HistoryRef(
        method=history.method,
        file=record,
        lr=spec.lr,
        final_loss=history.final_loss,
        final_w=float(history.w[-1]),
        final_b=float(history.b[-1]),
        diverged=bool(history.diverged),
        reason=history.reason,
        stability_bound=float(history.stability_bound),
        updates=history.total_updates,
        wall_time_s=history.wall_time_s,
        engine=history.engine,
        dtype=history.dtype,
    )


class _Bars:
    """One terminal progress display shared by the training tasks running in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.display: Progress | None = None
        self.users = 0

    def add(self, label: str, total: int) -> int:
        with self.lock:
            if self.display is None:
                self.display = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TaskProgressColumn(),
                    TextColumn("loss {task.fields[loss]}"),
                    TimeElapsedColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
                self.display.start()
            self.users += 1
            return self.display.add_task(label, total=total, loss="…")

    def update(self, bar: int, epoch: int, loss: float) -> None:
        with self.lock:
            if self.display is not None:
                self.display.update(bar, completed=epoch, loss=f"{loss:.4g}")

    def remove(self, bar: int) -> None:
        with self.lock:
            if self.display is None:
                return
            self.display.remove_task(bar)
            self.users -= 1
            if self.users == 0:
                self.display.stop()
                self.display = None


_bars = _Bars()


class ProgressReport:
    """Where one training run's progress goes: log lines about every tenth of the epochs, and,
    once the run has worked SHOW_PROGRESS_AFTER_S, a Prefect progress artifact and (on a
    terminal) a progress bar."""

    def __init__(self, spec: MethodSpec, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.spec = spec
        self.logger = logger
        self.started = time.monotonic()
        self.artifact: UUID | None = None
        self.bar: int | None = None

    def __call__(self, epoch: int, loss: float) -> None:
        epochs = self.spec.epochs
        percent = 100.0 * epoch / epochs
        name = self.spec.method.value
        self.logger.info("%s: epoch %d/%d (%.0f%%), loss %.4g", name, epoch, epochs, percent, loss)
        if time.monotonic() - self.started < SHOW_PROGRESS_AFTER_S and self.artifact is None:
            return
        if self.artifact is None:
            self.artifact = create_progress_artifact(
                percent,
                key=f"train-{name}-progress",
                description=f"Training {name}: share of the {epochs} epochs done",
            )
        else:
            update_progress_artifact(self.artifact, percent)
        if self.bar is None and sys.stderr.isatty():
            self.bar = _bars.add(f"{name} ({epochs} epochs)", epochs)
        if self.bar is not None:
            _bars.update(self.bar, epoch, loss)

    def close(self) -> None:
        if self.bar is not None:
            _bars.remove(self.bar)
            self.bar = None


@contextlib.contextmanager
def progress_report(
    spec: MethodSpec, logger: logging.Logger | logging.LoggerAdapter
) -> Iterator[ProgressReport]:
    report = ProgressReport(spec, logger)
    try:
        yield report
    finally:
        report.close()


@task(cache_policy=STABLE_INPUTS, persist_result=True)
def train_method(dataset: DatasetRef, spec: MethodSpec, data_dir: str) -> HistoryRef:
    """Train one method and store its per-epoch history as Parquet."""
    logger = get_run_logger()
    computed = ahead.trained(dataset, spec)
    if computed is not None:
        logger.info("%s: trained ahead, while the run started", spec.method.value)
    with progress_report(spec, logger) as report:
        ref = fit(dataset, spec, history_path(Path(data_dir), dataset, spec), report, computed)
    if ref.diverged:
        logger.warning("%s diverged: %s", spec.method.value, ref.reason)
    logger.info(
        "%s: final loss %.6g, w = %.6g, b = %.6g after %s updates in %.3f s",
        spec.method.value,
        ref.final_loss,
        ref.final_w,
        ref.final_b,
        f"{ref.updates:,}",
        ref.wall_time_s,
    )
    return ref
