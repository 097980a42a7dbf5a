"""A stored data set: written atomically from chunks, read back verified and shared in memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks.data.dataset import DatasetRef, load_columns, stream_columns, write_dataset
from tasks.data.synthetic import generate, generate_chunks, write_synthetic
from tasks.errors import CorruptFileError
from tasks.storage import FileRecord, is_intact
from tests.specs import data_spec

SPEC = data_spec(n_samples=2_200_000, seed=3)  # three row groups, the last one short


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetRef:
    return write_synthetic(SPEC, tmp_path_factory.mktemp("data") / "d.parquet")


def damaged_copy(record: FileRecord, target: Path) -> FileRecord:
    """A copy of the file with one byte flipped, described by the original's record."""
    data = bytearray(Path(record.path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return record.model_copy(update={"path": str(target)})


def test_loads_are_verified_and_share_one_copy(dataset: DatasetRef) -> None:
    x, y = load_columns(dataset.file)
    again, _ = load_columns(dataset.file)
    assert np.shares_memory(x, again)
    want_x, want_y = generate(SPEC)
    assert np.array_equal(x, want_x)
    assert np.array_equal(y, want_y)
    pieces = list(stream_columns(dataset.file))
    assert len(pieces) > 1
    assert np.array_equal(np.concatenate([p[1] for p in pieces]), want_y)


@pytest.mark.parametrize("read", [load_columns, lambda r: list(stream_columns(r))])
def test_a_damaged_file_is_refused_by_loads_and_streams(dataset, tmp_path, read) -> None:
    with pytest.raises(CorruptFileError, match="changed since it was written"):
        read(damaged_copy(dataset.file, tmp_path / "bad.parquet"))


def test_a_file_changed_after_a_verified_read_is_checked_again(dataset, tmp_path) -> None:
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(Path(dataset.file.path).read_bytes())
    record = dataset.file.model_copy(update={"path": str(copy)})
    assert len(list(stream_columns(record))) > 1
    damaged_copy(record, copy)
    os.utime(copy, ns=(1, 1))
    with pytest.raises(CorruptFileError):
        list(stream_columns(record))


def test_a_failed_write_leaves_nothing_behind(tmp_path) -> None:
    target = tmp_path / "d.parquet"
    write_synthetic(data_spec(), target)
    before = target.read_bytes()

    def exploding() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from generate_chunks(data_spec(n_samples=3000), chunk_rows=1024)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dataset(target, exploding(), 3000, "exploding", {})
    assert target.read_bytes() == before
    assert is_intact(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet", "d.parquet.manifest.json"]
