"""The user's Parquet file: refused with a one-line reason, or copied in as float32 x, y."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.data.userfile import (
    check_values,
    ingest,
    inspect_source,
    open_parquet,
    read_columns,
    stat_source,
)
from tasks.errors import InputError
from tasks.storage import file_metadata, is_intact, sha256_file


def user_file(path: Path, slope: float = -3.0, rows: int = 200, **extra: Any) -> Path:
    """A Parquet file of y = slope·x + 1 + noise in float64 columns a and b."""
    x = np.linspace(-4.0, 4.0, rows)
    y = slope * x + 1.0 + np.random.default_rng(1).normal(0.0, 0.2, rows)
    pq.write_table(pa.table({"a": x, "b": y, **extra}), path, row_group_size=64)
    return path


def _good() -> dict[str, np.ndarray]:
    x = np.arange(-5, 5, 0.1)
    return {"x": x, "y": -3.0 * x + 1.0 + np.random.default_rng(0).normal(0, 0.3, x.size)}


def _write(table: pa.Table) -> Callable[[Path], None]:
    return lambda path: pq.write_table(table, path)


def _with(**columns: object) -> Callable[[Path], None]:
    return _write(pa.table({**_good(), **columns}))


def _bad_value(column: str, row: int, value: float) -> Callable[[Path], None]:
    values = _good()[column].copy()
    values[row] = value
    return _with(**{column: values})


def _truncated(path: Path) -> None:
    pq.write_table(pa.table(_good()), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _duplicate_names(path: Path) -> None:
    good = _good()
    columns = [pa.array(good["x"]), pa.array(good["x"]), pa.array(good["y"])]
    pq.write_table(pa.Table.from_arrays(columns, names=["x", "x", "y"]), path)


def _nulls(path: Path) -> None:
    y = _good()["y"].tolist()
    y[5] = None
    _with(y=pa.array(y, pa.float64()))(path)


def check_file(uri: str, x_col: str, y_col: str) -> None:
    """The checks a run makes before any work: the cheap look first, then every value."""
    inspect_source(uri, x_col, y_col)
    check_values(uri, x_col, y_col)


FILE_CASES = [
    pytest.param(None, "x", ["does not exist"], id="missing"),
    pytest.param(lambda path: path.mkdir(), "x", ["is a directory"], id="directory"),
    pytest.param(lambda path: path.write_bytes(b""), "x", ["empty (0 bytes)"], id="empty"),
    pytest.param(
        lambda path: path.write_text("x,y\n1,2\n3,4\n"), "x", ["not a Parquet file"], id="csv"
    ),
    pytest.param(_truncated, "x", ["truncated or damaged"], id="truncated"),
    pytest.param(_write(pa.table(_good()).slice(0, 0)), "x", ["has 0 rows"], id="zero-rows"),
    pytest.param(_write(pa.table({"x": [1.0], "y": [2.0]})), "x", ["has 1 row;"], id="one-row"),
    pytest.param(_with(), "nope", ["no column 'nope'", "--x-col"], id="no-column"),
    pytest.param(
        _with(x=[f"{v:.1f}" for v in _good()["x"]]),
        "x",
        ["column 'x'", "not numbers", "--x-col"],
        id="text-column",
    ),
    pytest.param(_bad_value("y", 7, np.nan), "x", ["column 'y'", "(nan) at row 7"], id="nan"),
    pytest.param(_bad_value("x", 3, np.inf), "x", ["column 'x'", "(inf) at row 3"], id="inf"),
    pytest.param(
        _bad_value("y", 9, 1e300), "x", ["too large for float32", "row 9"], id="too-large"
    ),
    pytest.param(_nulls, "x", ["column 'y'", "null", "row 5"], id="nulls"),
    pytest.param(_duplicate_names, "x", ["2 columns named 'x'"], id="duplicate-names"),
]


@pytest.mark.parametrize(("make", "x_col", "words"), FILE_CASES)
def test_unusable_files_are_refused_with_the_reason_in_one_line(
    tmp_path: Path, make: Callable[[Path], None] | None, x_col: str, words: list[str]
) -> None:
    path = tmp_path / "data.parquet"
    if make is not None:
        make(path)
    with pytest.raises(InputError) as refused:
        check_file(str(path), x_col, "y")
    message = str(refused.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message


def test_an_unknown_uri_scheme_is_refused() -> None:
    with pytest.raises(InputError, match=r"nosuch://bucket/x\.parquet.*URI"):
        stat_source("nosuch://bucket/x.parquet")


def test_columns_are_read_in_bounded_chunks(tmp_path) -> None:
    source = user_file(tmp_path / "mine.parquet", rows=10_000)
    opened, _ = open_parquet(str(source), "a", "b")
    chunks = list(read_columns(opened, str(source), "a", "b", chunk_rows=1000))
    assert max(len(x) for x, _ in chunks) <= 1000
    assert np.array_equal(
        np.concatenate([x for x, _ in chunks]),
        pq.read_table(source)["a"].to_numpy().astype(np.float32),
    )
    assert inspect_source(str(source), "a", "b").rows == 10_000


def test_a_users_file_is_copied_in_as_float32_with_its_provenance(tmp_path) -> None:
    source = user_file(tmp_path / "mine.parquet")
    target = tmp_path / "copy.parquet"
    ref = ingest(stat_source(str(source)), "a", "b", target)
    stored = pq.read_table(target)
    assert stored.schema.names == ["x", "y"]
    assert stored.schema.field("x").type == pa.float32()
    original = pq.read_table(source)
    assert np.array_equal(stored["x"].to_numpy(), original["a"].to_numpy().astype(np.float32))
    assert np.array_equal(stored["y"].to_numpy(), original["b"].to_numpy().astype(np.float32))
    assert ref.file.rows == 200
    assert ref.file.sha256 == sha256_file(target)
    assert is_intact(target)
    provenance = json.loads(file_metadata(target)["gdflow.source"])
    assert provenance["uri"] == str(source)
    assert provenance["columns"] == ["a", "b"]
    assert provenance["types"] == {"a": "double", "b": "double"}
    assert len(provenance["sha256"]) == 64
    assert ref.source == (
        f"file {source}: columns a (x) and b (y), 200 rows, sha256 {provenance['sha256'][:12]}"
    )


def test_integer_and_extra_columns_are_copied_in(tmp_path) -> None:
    path = tmp_path / "ints.parquet"
    x = np.arange(-5, 5)
    pq.write_table(pa.table({"x": x, "y": -2 * x + 3, "label": [f"p{i}" for i in range(10)]}), path)
    ingest(stat_source(str(path)), "x", "y", tmp_path / "copy.parquet")
    stored = pq.read_table(tmp_path / "copy.parquet")
    assert stored.schema.names == ["x", "y"]
    assert np.array_equal(stored["x"].to_numpy(), x.astype(np.float32))


def test_a_file_uri_is_the_same_file_as_its_path(tmp_path) -> None:
    source = user_file(tmp_path / "mine.parquet")
    by_path = ingest(stat_source(str(source)), "a", "b", tmp_path / "p.parquet")
    by_uri = ingest(stat_source(source.as_uri()), "a", "b", tmp_path / "u.parquet")
    assert source.as_uri() in by_uri.source
    assert pq.read_table(tmp_path / "p.parquet").equals(pq.read_table(tmp_path / "u.parquet"))
    hashes = [
        json.loads(file_metadata(tmp_path / name)["gdflow.source"])["sha256"]
        for name in ("p.parquet", "u.parquet")
    ]
    assert hashes[0] == hashes[1]
    assert by_path.moments == by_uri.moments


def test_a_file_changed_after_it_was_checked_is_refused(tmp_path) -> None:
    source = user_file(tmp_path / "mine.parquet")
    checked = stat_source(str(source))
    user_file(source, slope=2.0)
    os.utime(source, ns=(1, 1))
    with pytest.raises(InputError, match="changed after it was checked; run again"):
        ingest(checked, "a", "b", tmp_path / "copy.parquet")
    assert not (tmp_path / "copy.parquet").exists()


def test_bad_values_leave_no_copy_behind(tmp_path) -> None:
    source = user_file(tmp_path / "bad.parquet", extra_col=np.zeros(200))
    table = pq.read_table(source)
    b = table["b"].to_numpy().copy()
    b[150] = np.nan
    pq.write_table(table.set_column(1, "b", pa.array(b)), source, row_group_size=64)
    copies = tmp_path / "copies"
    with pytest.raises(InputError, match=r"\(nan\) at row 150"):
        ingest(stat_source(str(source)), "a", "b", copies / "copy.parquet")
    assert list(copies.iterdir()) == []
