"""The result of training one method: a per-epoch history plus summary facts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks.storage import FileRecord, read_verified, write_parquet


@dataclass
class History:
    """Per-epoch state of one training run.

    Row e holds the state at the start of epoch e (before its updates); the last row
    (e = epochs) holds the state after training. `loss` is the full-data MSE at (w, b).
    `updates` counts the parameter updates made before that row's state.
    """

    method: str
    epoch: np.ndarray  # int64, 0..epochs
    loss: np.ndarray  # float64
    w: np.ndarray  # float64
    b: np.ndarray  # float64
    updates: np.ndarray  # int64, cumulative
    wall_time_s: float
    diverged: bool
    reason: str | None  # why it is marked diverged, None otherwise
    stability_bound: float  # largest stable step size for this method on this data
    lr: float
    engine: str
    dtype: str
    compute_dtype: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return int(self.epoch[-1])

    @property
    def final_loss(self) -> float:
        return float(self.loss[-1])

    @property
    def total_updates(self) -> int:
        return int(self.updates[-1])


_COLUMNS = ("epoch", "loss", "w", "b", "updates")
_SCALARS = (
    "method",
    "wall_time_s",
    "diverged",
    "reason",
    "stability_bound",
    "lr",
    "engine",
    "dtype",
    "compute_dtype",
)


def history_schema() -> pa.Schema:
    return pa.schema(
        [
            ("epoch", pa.int64()),
            ("loss", pa.float64()),
            ("w", pa.float64()),
            ("b", pa.float64()),
            ("updates", pa.int64()),
        ]
    )


def write_history(history: History, target: Path, context: dict[str, str]) -> FileRecord:
    """Store a history as Parquet; summary facts and `context` go into its metadata."""
    metadata = {f"gdflow.{k}": json.dumps(getattr(history, k), default=_plain) for k in _SCALARS}
    metadata.update({f"gdflow.extra.{k}": v for k, v in history.extra.items()})
    metadata.update(context)
    batch = pa.record_batch(
        [pa.array(getattr(history, c)) for c in _COLUMNS], schema=history_schema()
    )
    return write_parquet(target, history_schema(), [batch], {"gdflow.kind": "history", **metadata})


def read_history(record: FileRecord) -> History:
    """Load a stored history, verifying its content hash."""
    table = read_verified(record)
    raw = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    scalars = {k: json.loads(raw[f"gdflow.{k}"]) for k in _SCALARS}
    extra = {
        k.removeprefix("gdflow.extra."): v for k, v in raw.items() if k.startswith("gdflow.extra.")
    }
    columns = {c: table.column(c).to_numpy() for c in _COLUMNS}
    return History(**columns, **scalars, extra=extra)


def _plain(value: object) -> object:
    """numpy scalars as plain Python values for JSON."""
    return value.item()  # type: ignore[attr-defined]
