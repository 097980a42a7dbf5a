"""The synthetic data set, generated chunk by chunk and stored as Parquet (free of Prefect;
the task that runs it is tasks.generation)."""

from __future__ import annotations

import mmap
import platform
import threading
import weakref
from collections.abc import Iterator
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from tasks.keys import dumps_metadata
from tasks.normal import NormalStream
from tasks.params import DataSpec
from tasks.stats import Moments, MomentsAccumulator
from tasks.storage import (
    CorruptFileError,
    FileRecord,
    iter_row_groups,
    write_parquet,
)

CHUNK_ROWS = 1 << 20  # a multiple of 16, so chunked normal draws equal one whole draw
PREVIEW_POINTS = 2000
SCHEMA = pa.schema([("x", pa.float32()), ("y", pa.float32())])
_ARANGE_LANES = 8
_ARANGE_UNROLL = 16


class DatasetRef(BaseModel):
    """A stored data set: its file, where it came from, its moments and a small preview."""

    model_config = ConfigDict(frozen=True)

    file: FileRecord
    source: str
    x_col: str = "x"
    y_col: str = "y"
    moments: dict[str, float]
    preview_x: list[float]
    preview_y: list[float]

    def stats(self) -> Moments:
        return Moments(**self.moments)  # type: ignore[arg-type]


def x_values(spec: DataSpec, lo: int, hi: int) -> np.ndarray:
    """x[lo:hi] exactly as torch.arange(x_start, x_stop, step) computes it on the CPU.

    torch fills 8-lane vectors two at a time: each lane group starts from one float32-rounded
    base, lanes add multiples of the step in float64; the last n % 16 values are scalar.
    (Equal to torch for n up to 32768; torch splits longer ranges across threads.)
    """
    step = (spec.x_stop - spec.x_start) / spec.n_samples
    idx = np.arange(lo, hi, dtype=np.int64)
    base_idx = idx - idx % _ARANGE_LANES
    base = (spec.x_start + step * base_idx).astype(np.float32).astype(np.float64)
    x = base + step * (idx - base_idx)
    scalar = idx >= spec.n_samples - spec.n_samples % _ARANGE_UNROLL
    x[scalar] = spec.x_start + step * idx[scalar]
    return x.astype(np.float32)


def _chunk_bounds(spec: DataSpec, chunk_rows: int) -> list[tuple[int, int]]:
    n = spec.n_samples
    return [(lo, min(lo + chunk_rows, n)) for lo in range(0, n, chunk_rows)]


def chunk_sizes(spec: DataSpec, chunk_rows: int = CHUNK_ROWS) -> list[int]:
    """The sizes of the chunks generate_chunks yields (and of its noise draws)."""
    return [hi - lo for lo, hi in _chunk_bounds(spec, chunk_rows)]


def generate_chunks(
    spec: DataSpec, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x, y) float32 chunks: y = slope·x + intercept + noise_std·N(0, 1), seeded.

    The noise is torch.randn's, drawn chunk by chunk from one generator; torch is imported only
    where tasks.normal's numpy replica of that draw does not apply (and a cached run never
    generates, so it never pays for torch).
    """
    bounds = _chunk_bounds(spec, chunk_rows)
    noise = NormalStream(spec.seed, [hi - lo for lo, hi in bounds])
    if not noise.uses_torch:
        # torch's float32 arithmetic, step by step: each Python float is rounded to float32
        # (torch does so for a scalar operand of a float32 tensor) and each step rounds once.
        with np.errstate(over="ignore", invalid="ignore"):
            coefs = [np.float32(v) for v in (spec.slope, spec.intercept, spec.noise_std)]
        slope, intercept, noise_std = coefs
        for lo, hi in bounds:
            x = x_values(spec, lo, hi)
            draw = noise.draw(hi - lo)
            with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN as torch gives them
                y = (x * slope + intercept) + noise_std * draw
            yield x, y
        return

    import torch

    slope_t = torch.tensor(spec.slope, dtype=torch.float32)
    for lo, hi in bounds:
        x_t = torch.from_numpy(x_values(spec, lo, hi))
        noise_t = torch.randn(hi - lo, generator=noise.generator)
        y_t = (x_t * slope_t + spec.intercept) + spec.noise_std * noise_t
        yield x_t.numpy(), y_t.numpy()


def generate(spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """The whole data set in memory (small sizes, tests)."""
    xs, ys = zip(*generate_chunks(spec), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def describe(spec: DataSpec) -> str:
    return (
        f"synthetic: y = {spec.slope:g}·x + {spec.intercept:g} + {spec.noise_std:g}·N(0,1), "
        f"{spec.n_samples:,} points, x in [{spec.x_start:g}, {spec.x_stop:g}), seed {spec.seed}"
    )


def _metadata(spec: DataSpec) -> dict[str, str]:
    versions = {name: version(name) for name in ("torch", "numpy", "pyarrow", "prefect", "gdflow")}
    versions["python"] = platform.python_version()
    return {
        "gdflow.kind": "dataset",
        "gdflow.generator": dumps_metadata(spec.model_dump()),
        "gdflow.versions": dumps_metadata(versions),
        **{f"gdflow.param.{k}": str(v) for k, v in spec.model_dump().items()},
    }


class Summary:
    """Moments and a strided preview, collected while chunks stream past."""

    def __init__(self, n: int) -> None:
        self.stride = max(1, -(-n // PREVIEW_POINTS))
        self.moments = MomentsAccumulator()
        self.px: list[np.ndarray] = []
        self.py: list[np.ndarray] = []
        self.seen = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        first = (-self.seen) % self.stride
        # Copies: a strided view would keep the whole chunk alive.
        self.px.append(x[first :: self.stride].copy())
        self.py.append(y[first :: self.stride].copy())
        self.moments.add(x, y)
        self.seen += len(x)

    def preview(self) -> tuple[np.ndarray, np.ndarray]:
        """The preview points as float64 arrays, as a DatasetRef holds them."""
        return np.concatenate(self.px).astype(float), np.concatenate(self.py).astype(float)

    def ref(
        self, record: FileRecord, source: str, x_col: str = "x", y_col: str = "y"
    ) -> DatasetRef:
        preview_x, preview_y = self.preview()
        return DatasetRef(
            file=record,
            source=source,
            x_col=x_col,
            y_col=y_col,
            moments=asdict(self.moments.result()),
            preview_x=preview_x.tolist(),
            preview_y=preview_y.tolist(),
        )


def write_dataset(spec: DataSpec, target: Path) -> DatasetRef:
    """Generate the data set into `target` chunk by chunk, with bounded memory."""
    summary = Summary(spec.n_samples)

    def batches() -> Iterator[pa.RecordBatch]:
        for x, y in generate_chunks(spec):
            summary.add(x, y)
            yield pa.record_batch([pa.array(x), pa.array(y)], schema=SCHEMA)

    record = write_parquet(target, SCHEMA, batches(), _metadata(spec))
    return summary.ref(record, describe(spec))


_loaded: weakref.WeakValueDictionary[tuple[str, ...], np.ndarray] = weakref.WeakValueDictionary()
_load_lock = threading.Lock()


def _as_float32(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy().astype(np.float32, copy=False)


def load_columns(
    record: FileRecord, x_col: str = "x", y_col: str = "y"
) -> tuple[np.ndarray, np.ndarray]:
    """x and y as float32 arrays, from a file whose content hash is checked first.

    The file is read row group by row group into one array, so memory holds the columns once;
    callers in one process share that copy while any of them still holds it.
    """
    key = (record.path, record.sha256, x_col, y_col)
    with _load_lock:
        both = _loaded.get(key)
        if both is None:
            # Anonymous pages, not numpy's huge pages: their first touch is several times faster.
            pages = mmap.mmap(-1, max(1, 8 * record.rows))
            both = np.ndarray((2, record.rows), dtype=np.float32, buffer=pages)
            lo = 0
            for table in iter_row_groups(record, [x_col, y_col]):
                hi = lo + table.num_rows
                both[0, lo:hi] = _as_float32(table, x_col)
                both[1, lo:hi] = _as_float32(table, y_col)
                lo = hi
            if lo != record.rows:
                raise CorruptFileError(f"{record.path} holds {lo} rows, not {record.rows}")
            _loaded[key] = both
    return both[0], both[1]


def stream_columns(
    record: FileRecord, x_col: str = "x", y_col: str = "y"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """x and y as float32 arrays one row group at a time, from a file whose hash is checked."""
    for table in iter_row_groups(record, [x_col, y_col]):
        yield _as_float32(table, x_col), _as_float32(table, y_col)
