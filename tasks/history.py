"""The result of training one method: its per-epoch history, stored as Parquet, and the summary
that travels from the training task to the report, the CLI table and the JSON output."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from tasks.storage import FileRecord, iter_row_groups, write_parquet


@dataclass
class History:
    """Per-epoch state of one training run.

    Row e holds the state at the start of epoch e (before its updates); the last row
    (e = epochs) holds the state after training. `loss` is the full-data MSE at (w, b).
    `updates` counts the parameter updates made before that row's state. `wall_time_s` is the
    training time when the history comes from training, None when it is read from a file
    (the file leaves it out, so the same training always writes the same bytes).
    """

    method: str
    epoch: np.ndarray  # int64, 0..epochs
    loss: np.ndarray  # float64
    w: np.ndarray  # float64
    b: np.ndarray  # float64
    updates: np.ndarray  # int64, cumulative
    diverged: bool
    reason: str | None  # why it is marked diverged, None otherwise
    stability_bound: float  # largest stable step size for this method on this data
    lr: float
    engine: str
    dtype: str
    compute_dtype: str
    extra: dict[str, str] = field(default_factory=dict)
    wall_time_s: float | None = None

    @property
    def epochs(self) -> int:
        return int(self.epoch[-1])

    @property
    def final_loss(self) -> float:
        return float(self.loss[-1])


class MethodResult(BaseModel):
    """One method's training: the facts the report, the CLI table and the JSON output show,
    and where its full history is stored."""

    model_config = ConfigDict(frozen=True)

    method: str
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
    history: str  # path of the stored history file

    @classmethod
    def from_history(cls, history: History, path: str | Path) -> MethodResult:
        """The summary of a history just trained (it carries its wall time), stored at `path`."""
        if history.wall_time_s is None:
            raise ValueError("a history read from a file has no wall time to report")
        return cls(
            method=history.method,
            lr=float(history.lr),
            final_loss=history.final_loss,
            final_w=float(history.w[-1]),
            final_b=float(history.b[-1]),
            diverged=bool(history.diverged),
            reason=history.reason,
            stability_bound=float(history.stability_bound),
            updates=int(history.updates[-1]),
            wall_time_s=float(history.wall_time_s),
            engine=history.engine,
            dtype=history.dtype,
            history=str(path),
        )


_SCHEMA = pa.schema(
    [
        ("epoch", pa.int64()),
        ("loss", pa.float64()),
        ("w", pa.float64()),
        ("b", pa.float64()),
        ("updates", pa.int64()),
    ]
)
# The wall time is left out: it differs from run to run, and the file must not.
_SCALARS = [
    f.name for f in fields(History) if f.name not in {*_SCHEMA.names, "extra", "wall_time_s"}
]


def write_history(history: History, target: Path, context: dict[str, str]) -> FileRecord:
    """Store a history as Parquet; summary facts and `context` go into its metadata.

    The same history and context give the same bytes.
    """
    # numpy scalars (a numpy bool, say) go into JSON as plain Python values
    plain = {k: getattr(history, k) for k in _SCALARS}
    metadata = {f"gdflow.{k}": json.dumps(v, default=lambda v: v.item()) for k, v in plain.items()}
    metadata.update({f"gdflow.extra.{k}": v for k, v in history.extra.items()})
    metadata.update(context)
    batch = pa.record_batch([getattr(history, c) for c in _SCHEMA.names], schema=_SCHEMA)
    return write_parquet(target, _SCHEMA, [batch], {"gdflow.kind": "history", **metadata})


def read_history(record: FileRecord) -> History:
    """Load a stored history, verifying its content hash; its wall time is None."""
    table = pa.concat_tables(iter_row_groups(record))
    raw = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    scalars = {k: json.loads(raw[f"gdflow.{k}"]) for k in _SCALARS}
    extra = {
        k.removeprefix("gdflow.extra."): v for k, v in raw.items() if k.startswith("gdflow.extra.")
    }
    columns = {c: table.column(c).to_numpy() for c in _SCHEMA.names}
    return History(**columns, **scalars, extra=extra)
