"""Stage 2: train one method on a stored data set and store its history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict

from tasks import caching
from tasks.caching import STABLE_INPUTS, stable_digest
from tasks.dataset import DatasetRef, load_columns
from tasks.history import write_history
from tasks.params import MethodSpec
from tasks.paths import histories_dir
from tasks.storage import FileRecord
from tasks.training import train


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
    digest = stable_digest(dataset.file, spec, caching.CODE_VERSION)[:16]
    return histories_dir(data_dir) / f"{spec.method.value}-{digest}.parquet"


def fit(dataset: DatasetRef, spec: MethodSpec, target: Path) -> HistoryRef:
    """Train `spec` on the data set and write its history to `target`."""
    x, y = load_columns(dataset.file, dataset.x_col, dataset.y_col)
    if spec.dtype == "float64":
        x, y = x.astype(np.float64), y.astype(np.float64)
    history = train(x, y, spec, dataset.stats())
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


@task(cache_policy=STABLE_INPUTS, persist_result=True)
def train_method(dataset: DatasetRef, spec: MethodSpec, data_dir: str) -> HistoryRef:
    """Train one method and store its per-epoch history as Parquet."""
    logger = get_run_logger()
    ref = fit(dataset, spec, history_path(Path(data_dir), dataset, spec))
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
