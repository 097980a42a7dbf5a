"""A stored data set: x, y float32 Parquet, its moments and preview, and verified reads of it."""

from __future__ import annotations

import mmap
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from tasks.errors import CorruptFileError
from tasks.stats import Moments, MomentsAccumulator
from tasks.storage import FileRecord, iter_row_groups, write_parquet

PREVIEW_POINTS = 2000
SCHEMA = pa.schema([("x", pa.float32()), ("y", pa.float32())])


class DatasetRef(BaseModel):
    """A stored data set: its file, where it came from, its moments and a small preview."""

    model_config = ConfigDict(frozen=True)

    file: FileRecord
    source: str
    moments: dict[str, float]
    preview_x: list[float]
    preview_y: list[float]

    def stats(self) -> Moments:
        """The data set's moments as a Moments object."""
        return Moments(**self.moments)  # type: ignore[arg-type]


def write_dataset(
    target: Path,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    rows: int,
    source: str,
    metadata: dict[str, str],
) -> DatasetRef:
    """Store float32 (x, y) chunks of a `rows`-row data set at `target`, in bounded memory.

    The moments and a preview of every stride-th point are collected as the chunks stream past.
    """
    stride = max(1, -(-rows // PREVIEW_POINTS))
    moments = MomentsAccumulator()
    preview_x: list[np.ndarray] = []
    preview_y: list[np.ndarray] = []

    def batches() -> Iterator[pa.RecordBatch]:
        seen = 0
        for x, y in chunks:
            first = (-seen) % stride
            # Copies: a strided view would keep the whole chunk alive.
            preview_x.append(x[first::stride].copy())
            preview_y.append(y[first::stride].copy())
            moments.add(x, y)
            seen += len(x)
            yield pa.record_batch([pa.array(x), pa.array(y)], schema=SCHEMA)

    record = write_parquet(target, SCHEMA, batches(), metadata)
    return DatasetRef(
        file=record,
        source=source,
        moments=asdict(moments.result()),
        preview_x=np.concatenate(preview_x).astype(float).tolist(),
        preview_y=np.concatenate(preview_y).astype(float).tolist(),
    )


_loaded: weakref.WeakValueDictionary[tuple[str, ...], np.ndarray] = weakref.WeakValueDictionary()
_load_lock = threading.Lock()


def _as_float32(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy().astype(np.float32, copy=False)


def load_columns(record: FileRecord) -> tuple[np.ndarray, np.ndarray]:
    """x and y as float32 arrays, from a file whose content hash is checked first.

    The file is read row group by row group into one array, so memory holds the columns once;
    callers in one process share that copy while any of them still holds it.
    """
    key = (record.path, record.sha256)
    with _load_lock:
        both = _loaded.get(key)
        if both is None:
            # Anonymous pages, not numpy's huge pages: their first touch is several times faster.
            pages = mmap.mmap(-1, max(1, 8 * record.rows))
            both = np.ndarray((2, record.rows), dtype=np.float32, buffer=pages)
            lo = 0
            for table in iter_row_groups(record, ["x", "y"]):
                hi = lo + table.num_rows
                both[0, lo:hi] = _as_float32(table, "x")
                both[1, lo:hi] = _as_float32(table, "y")
                lo = hi
            if lo != record.rows:
                raise CorruptFileError(f"{record.path} holds {lo} rows, not {record.rows}")
            _loaded[key] = both
    return both[0], both[1]


def stream_columns(record: FileRecord) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """x and y as float32 arrays one row group at a time, from a file whose hash is checked."""
    for table in iter_row_groups(record, ["x", "y"]):
        yield _as_float32(table, "x"), _as_float32(table, "y")
