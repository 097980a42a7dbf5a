"""The user's Parquet file: found, checked column by column and copied in as x, y float32, in
bounded memory."""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

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
# A remote store gives up within seconds. Without network, pyarrow's defaults took 6 s here for
# S3 (a lookup of the bucket's region, retried, then three tries per call), 5 min where packets
# are dropped, and over 3 min for GCS (stopped there).
_CONNECT_SECONDS = 5
_RETRY_SECONDS = 5
_SPECIAL_FILES = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


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
        parts = urlsplit(uri)
        if parts.scheme == "s3":
            return _s3_filesystem(parts)
        if parts.scheme in ("gs", "gcs") and "retry_limit_seconds=" not in parts.query:
            limit = f"{'&' if parts.query else '?'}retry_limit_seconds={_RETRY_SECONDS}"
            return pafs.FileSystem.from_uri(uri + limit)
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise InputError(
            f"cannot open data {uri!r} ({_reason(exc)}); give a local path or a URI of a "
            "filesystem pyarrow can use here (file://, s3://, gs://; hdfs:// needs Java and Hadoop)"
        ) from None


def _s3_filesystem(parts: SplitResult) -> tuple[pafs.FileSystem, str]:
    """pyarrow's S3 filesystem for an s3:// URI and its options, failing within seconds.

    The region is the URI's (?region=) or the AWS configuration's, never looked up from the
    bucket: that lookup retries for minutes without network.
    """
    options: dict[str, Any] = dict(parse_qsl(parts.query))
    if parts.username:
        options.update(access_key=unquote(parts.username), secret_key=unquote(parts.password or ""))
    fs = pafs.S3FileSystem(
        connect_timeout=_CONNECT_SECONDS,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2),
        **options,
    )
    return fs, parts.netloc.rpartition("@")[2] + parts.path.rstrip("/")


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _unreadable(uri: str, exc: BaseException) -> InputError:
    return InputError(
        f"cannot read data file {uri} ({_reason(exc)}); check its permissions, and for a "
        "remote file the network and your credentials"
    )


def _special_kind(fs: pafs.FileSystem, path: str) -> str:
    """What a file that is neither a regular file nor a directory is, where the OS can tell."""
    try:
        mode = os.stat(path).st_mode if isinstance(fs, pafs.LocalFileSystem) else 0
    except OSError:
        mode = 0
    return _SPECIAL_FILES.get(stat.S_IFMT(mode), "a special file")


def stat_source(uri: str) -> SourceFile:
    """Identify the file at `uri` from its file info, refusing what cannot be a data file."""
    fs, path = open_filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(uri, exc) from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"data file {uri} does not exist; check the path given to --data")
    if info.type == pafs.FileType.Directory:
        raise InputError(f"data {uri} is a directory; give the path of one Parquet file in it")
    if info.type != pafs.FileType.File:  # never opened: reading a FIFO would wait for a writer
        raise InputError(
            f"data {uri} is not a regular file but {_special_kind(fs, path)}; "
            "give the path of a Parquet file"
        )
    if not info.size:
        raise InputError(f"data file {uri} is empty (0 bytes); give a Parquet file with x, y data")
    if info.mtime_ns is not None:
        return SourceFile(uri=uri, size=info.size, version=f"mtime:{info.mtime_ns}")
    try:
        digest = sha256_file(path, fs)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(uri, exc) from None
    return SourceFile(uri=uri, size=info.size, version=f"sha256:{digest}")


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
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(uri, exc) from None
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
    # Every type arrives at its nearest float32 (ties to even), as the tests check. A decimal goes
    # through its text, which pyarrow parses exactly: its decimal casts round inexactly (1.5
    # became 1.5000001) or, via float64, twice (values near a tie went the wrong way). The text
    # costs 0.27 s per 10^6 values instead of 0.03 s.
    exact = pc.cast(column, pa.string()) if pa.types.is_decimal(column.type) else column
    values = pc.cast(exact, pa.float32(), safe=False).to_numpy()
    finite = np.isfinite(values)
    if not finite.all():
        at = int(np.argmin(finite))
        original = column[at].as_py()
        overflow = math.isfinite(float(original))
        what = f"{original} is too large for float32" if overflow else str(original)
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
    try:
        sha256 = sha256_file(path, fs)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(source.uri, exc) from None
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
