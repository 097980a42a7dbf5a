"""The user's Parquet file: found, checked column by column and copied in as x, y float32, in
bounded memory."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from tasks.data.dataset import DatasetRef, write_dataset
from tasks.digest import dumps
from tasks.errors import InputError
from tasks.storage import sha256_file

CHUNK_ROWS = 1 << 20
MIN_ROWS = 2
_PARQUET_MAGIC = b"PAR1"


class SourceFile(BaseModel):
    """A user's file as it was when looked at: where it is, its size and its version."""

    model_config = ConfigDict(frozen=True)

    uri: str
    size: int
    version: str  # "mtime:<ns>", or "sha256:<hex>" where the filesystem keeps no times


class Inspection(NamedTuple):
    """What a cheap look at a Parquet file tells: its identity and its number of rows."""

    source: SourceFile
    rows: int


def open_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding `uri` and the path within it."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(
            f"cannot open data {uri!r} ({_reason(exc)}); give a local path or a URI that "
            "pyarrow supports (file://, s3://, gs://, hdfs://)"
        ) from None


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def stat_source(uri: str) -> SourceFile:
    """Identify the file at `uri` from its file info, refusing what cannot be a data file."""
    fs, path = open_filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise InputError(f"cannot look at data file {uri} ({_reason(exc)}); check it") from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"data file {uri} does not exist; check the path given to --data")
    if info.type == pafs.FileType.Directory:
        raise InputError(f"data {uri} is a directory; give the path of one Parquet file in it")
    if not info.size:
        raise InputError(f"data file {uri} is empty (0 bytes); give a Parquet file with x, y data")
    if info.mtime_ns is not None:
        version = f"mtime:{info.mtime_ns}"
    else:
        version = f"sha256:{sha256_file(path, fs)}"
    return SourceFile(uri=uri, size=info.size, version=version)


def _check_column(schema: pa.Schema, name: str, uri: str, option: str) -> str:
    """The type of column `name`, refusing a missing, repeated or non-numeric column."""
    found = schema.get_all_field_indices(name)
    if not found:
        names = ", ".join(schema.names[:12]) + (", ..." if len(schema.names) > 12 else "")
        raise InputError(
            f"data file {uri} has no column {name!r} (it has: {names}); choose one with {option}"
        )
    if len(found) > 1:
        raise InputError(
            f"data file {uri} has {len(found)} columns named {name!r}; "
            "rename them so that each name is used once"
        )
    kind = schema.field(found[0]).type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        raise InputError(
            f"column {name!r} of {uri} holds {kind}, not numbers; "
            f"choose a numeric column with {option}"
        )
    return str(kind)


def open_parquet(uri: str, x_col: str, y_col: str) -> tuple[pq.ParquetFile, dict[str, str]]:
    """Open the file's footer and check it: the file and the types of its x and y columns.

    Tells a non-Parquet file from a truncated one; refuses unusable columns or too few rows.
    """
    fs, path = open_filesystem(uri)
    try:
        handle = fs.open_input_file(path)
        head = handle.read(len(_PARQUET_MAGIC))
    except OSError as exc:
        raise InputError(
            f"cannot read data file {uri} ({_reason(exc)}); check its permissions"
        ) from None
    try:
        pf = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as exc:
        if head != _PARQUET_MAGIC:
            raise InputError(
                f"data file {uri} is not a Parquet file; convert it, "
                "e.g. with pandas.DataFrame.to_parquet"
            ) from None
        raise InputError(
            f"data file {uri} is a truncated or damaged Parquet file ({_reason(exc)}); "
            "copy or export it again"
        ) from None
    types = {
        x_col: _check_column(pf.schema_arrow, x_col, uri, "--x-col"),
        y_col: _check_column(pf.schema_arrow, y_col, uri, "--y-col"),
    }
    rows = pf.metadata.num_rows
    if rows < MIN_ROWS:
        raise InputError(
            f"data file {uri} has {rows} row{'s' if rows != 1 else ''}; "
            f"fitting a line needs at least {MIN_ROWS}"
        )
    return pf, types


def inspect_source(uri: str, x_col: str, y_col: str) -> Inspection:
    """Check a file cheaply (file info and footer only): exists, Parquet, columns, row count."""
    source = stat_source(uri)
    pf, _ = open_parquet(uri, x_col, y_col)
    return Inspection(source, pf.metadata.num_rows)


def _as_float32(column: pa.Array, name: str, uri: str, first_row: int) -> np.ndarray:
    """A column chunk as finite float32 values, refusing nulls, NaN and infinities."""
    if column.null_count:
        row = first_row + pc.index(pc.is_null(column), True).as_py()
        raise InputError(
            f"column {name!r} of {uri} has empty (null) values, the first at row {row:,}; "
            "fill or drop those rows"
        )
    values = pc.cast(column, pa.float32(), safe=False).to_numpy()
    finite = np.isfinite(values)
    if not finite.all():
        at = int(np.argmin(finite))
        original = column[at].as_py()
        overflow = math.isfinite(float(original))
        what = f"{original!r} is too large for float32" if overflow else repr(original)
        raise InputError(
            f"column {name!r} of {uri} has a non-finite value ({what}) at row {first_row + at:,}; "
            "remove or fix the rows that are not finite numbers"
        )
    return values


def read_columns(
    pf: pq.ParquetFile, uri: str, x_col: str, y_col: str, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (x, y) of an opened file as checked float32 chunks, in bounded memory."""
    seen = 0
    try:
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=[x_col, y_col]):
            x = _as_float32(batch.column(x_col), x_col, uri, seen)
            y = _as_float32(batch.column(y_col), y_col, uri, seen)
            seen += batch.num_rows
            yield x, y
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"data file {uri} cannot be read past row {seen:,} ({_reason(exc)}); "
            "it is damaged: copy or export it again"
        ) from None


def check_values(uri: str, x_col: str, y_col: str) -> None:
    """Read the two columns through once, refusing nulls and non-finite values."""
    pf, _ = open_parquet(uri, x_col, y_col)
    for _ in read_columns(pf, uri, x_col, y_col):
        pass


def ingest(source: SourceFile, x_col: str, y_col: str, target: Path) -> DatasetRef:
    """Copy the file's two columns into `target` as float32 x, y, in bounded memory."""
    if stat_source(source.uri) != source:
        raise InputError(f"data file {source.uri} changed after it was checked; run again")
    fs, path = open_filesystem(source.uri)
    sha256 = sha256_file(path, fs)
    pf, types = open_parquet(source.uri, x_col, y_col)
    rows = pf.metadata.num_rows

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from read_columns(pf, source.uri, x_col, y_col)
        if stat_source(source.uri) != source:  # raised before the copy is moved into place
            raise InputError(f"data file {source.uri} changed while it was read; run again")

    provenance = {
        **source.model_dump(),
        "sha256": sha256,
        "columns": [x_col, y_col],
        "types": types,
    }
    metadata = {"gdflow.kind": "dataset", "gdflow.source": dumps(provenance)}
    described = f"file {source.uri}: columns {x_col} (x) and {y_col} (y), {rows:,} rows"
    return write_dataset(target, chunks(), rows, f"{described}, sha256 {sha256[:12]}", metadata)
