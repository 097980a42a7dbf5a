"""The user's own data: a checked Parquet file copied into the project's x, y format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from prefect import get_run_logger, task

from tasks import keys
from tasks.caching import STABLE_INPUTS, stable_digest
from tasks.datafile import (
    SourceFile,
    check_footer,
    content_hash,
    open_filesystem,
    parquet_file,
    read_columns,
    stat_source,
)
from tasks.dataset import SCHEMA, DatasetRef, Summary
from tasks.keys import dumps_metadata
from tasks.params import InputError
from tasks.storage import write_parquet


def user_dataset_path(data_dir: Path, source: SourceFile, x_col: str, y_col: str) -> Path:
    """Where the copy of this version of the user's file lives (same file, same path)."""
    digest = stable_digest(source, x_col, y_col, keys.CODE_VERSION)[:16]
    return data_dir / "datasets" / f"user-{digest}.parquet"


def describe(source: SourceFile, sha256: str, rows: int, x_col: str, y_col: str) -> str:
    return (
        f"file {source.uri}: columns {x_col} (x) and {y_col} (y), {rows:,} rows, "
        f"sha256 {sha256[:12]}"
    )


def ingest(source: SourceFile, x_col: str, y_col: str, target: Path) -> DatasetRef:
    """Copy the file's two columns into `target` as float32 x, y, in bounded memory."""
    if stat_source(source.uri) != source:
        raise InputError(f"data file {source.uri} changed after it was checked; run again")
    fs, path = open_filesystem(source.uri)
    sha256 = content_hash(fs, path)
    pf = parquet_file(source.uri)
    rows, types = check_footer(pf, source.uri, x_col, y_col)
    summary = Summary(rows)

    def batches() -> Iterator[pa.RecordBatch]:
        for x, y in read_columns(pf, source.uri, x_col, y_col):
            summary.add(x, y)
            yield pa.record_batch([pa.array(x), pa.array(y)], schema=SCHEMA)
        if stat_source(source.uri) != source:  # raised before the copy is moved into place
            raise InputError(f"data file {source.uri} changed while it was read; run again")

    metadata = {
        "gdflow.kind": "dataset",
        "gdflow.source": dumps_metadata(
            {**source.model_dump(), "sha256": sha256, "columns": [x_col, y_col], "types": types}
        ),
    }
    record = write_parquet(target, SCHEMA, batches(), metadata)
    return summary.ref(record, describe(source, sha256, rows, x_col, y_col))


@task(cache_policy=STABLE_INPUTS, persist_result=True, task_run_name="load-data")
def load_user_data(source: SourceFile, x_col: str, y_col: str, data_dir: str) -> DatasetRef:
    """Check the user's Parquet file and store its x and y columns as the run's data set."""
    ref = ingest(source, x_col, y_col, user_dataset_path(Path(data_dir), source, x_col, y_col))
    get_run_logger().info("Loaded %s -> %s", ref.source, ref.file.path)
    return ref
