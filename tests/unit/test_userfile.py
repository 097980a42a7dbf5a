"""The user's Parquet file: refused with a one-line reason, or copied in as float32 x, y."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from decimal import Decimal, localcontext
from fractions import Fraction
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
    open_filesystem,
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


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))


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
    pytest.param(os.mkfifo, "x", ["is not a regular file but a FIFO (named pipe)"], id="fifo"),
    pytest.param(_socket, "x", ["is not a regular file but a socket"], id="socket"),
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


def test_a_character_device_is_refused_as_such() -> None:
    with pytest.raises(InputError, match="/dev/null is not a regular file but a character device"):
        check_file("/dev/null", "x", "y")


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("s3://gdflow-no-such-bucket/key.parquet", ["cannot read", "network"]),
        ("hdfs://namenode:8020/data/x.parquet", ["cannot open", "Java and Hadoop"]),
    ],
    ids=["s3", "hdfs"],
)
def test_an_unreachable_store_is_refused_in_one_line_within_seconds(
    uri: str, words: list[str]
) -> None:
    start = time.monotonic()
    with pytest.raises(InputError) as refused:
        check_file(uri, "x", "y")
    assert time.monotonic() - start < 20
    message = str(refused.value)
    assert "\n" not in message
    for word in [uri, *words]:
        assert word in message


def test_an_s3_uri_keeps_its_options() -> None:
    fs, path = open_filesystem("s3://key:secret@bucket/dir/x.parquet?region=eu-west-1&scheme=http")
    assert (fs.region, path) == ("eu-west-1", "bucket/dir/x.parquet")


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


def nearest_float32(value: Fraction) -> np.float32:
    """The float32 nearest to `value`, ties to even, found by exact arithmetic."""
    guess = np.float32(float(value))  # rounded twice, so possibly one step off
    with np.errstate(over="ignore"):  # a neighbour of the largest float32 is infinite
        steps = [np.nextafter(guess, np.float32(side)) for side in (-np.inf, np.inf)] + [guess]
    candidates = [c for c in steps if np.isfinite(c)]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), c.view(np.uint32) & 1))


def float32_midpoints(count: int, exponents: tuple[int, int], seed: int) -> list[Fraction]:
    """Exact midpoints between neighbouring float32 values of magnitude 2^lo to 2^hi, both signs."""
    rng = np.random.default_rng(seed)
    scale = np.exp2(rng.integers(*exponents, count, endpoint=True).astype(np.float64))
    lower = (rng.uniform(1.0, 2.0, count) * scale).astype(np.float32)
    upper = np.nextafter(lower, np.float32(np.inf))
    signs = rng.choice([-1, 1], count)
    return [
        s * (Fraction(float(a)) + Fraction(float(b))) / 2
        for s, a, b in zip(signs, lower, upper, strict=True)
    ]


def _integers(kind: pa.DataType) -> list[int]:
    info = np.iinfo(kind.to_pandas_dtype())
    rng = np.random.default_rng(info.bits)
    values = [
        int(v)
        for v in rng.integers(
            info.min, info.max, 2000, endpoint=True, dtype=np.int64 if info.min else np.uint64
        )
    ]
    if info.bits > 24:  # exact ties and their neighbours: from 2^24 on, midpoints are integers
        for mid in float32_midpoints(1000, (24, info.bits - 1), seed=info.bits):
            values += [int(mid) + step for step in (-1, 0, 1)]
    return [v for v in values if info.min <= v <= info.max] + [int(info.min), int(info.max)]


def _floats64() -> list[float]:
    mids = [float(m) for m in float32_midpoints(3000, (-149, 126), seed=64)]  # exact in float64
    near = [float(np.nextafter(m, side)) for m in mids for side in (-np.inf, np.inf)]
    return mids + near + [1e-46, 7.1e-46, -3.4028235e38, 0.1, 1.5]


def _decimals(scale: int, exponents: tuple[int, int]) -> list[Decimal]:
    unit = Decimal(1).scaleb(-scale)
    values = [Decimal("1.5"), Decimal("-0.1"), Decimal("3.3333333333333333")]
    with localcontext() as exact:
        exact.prec = 200
        for mid in float32_midpoints(1500, exponents, seed=scale):
            tie = Decimal(mid.numerator) / Decimal(mid.denominator)
            assert tie == tie.quantize(unit)  # a tie written exactly at this scale
            values += [tie - unit, tie, tie + unit]
    return values


NUMERIC_CASES = {
    **{
        str(kind): lambda kind=kind: pa.array(_integers(kind), kind)
        for kind in (
            pa.int8(),
            pa.int16(),
            pa.int32(),
            pa.int64(),
            pa.uint8(),
            pa.uint16(),
            pa.uint32(),
            pa.uint64(),
        )
    },
    "halffloat": lambda: pa.array(
        np.random.default_rng(16).standard_normal(5000).astype(np.float16) * np.float16(1000)
    ),
    "float": lambda: pa.array(
        (np.random.default_rng(32).standard_normal(5000) * 1e30).astype(np.float32)
    ),
    "double": lambda: pa.array(_floats64()),
    "decimal128(38, 30)": lambda: pa.array(_decimals(30, (-6, 25)), pa.decimal128(38, 30)),
    "decimal256(76, 38)": lambda: pa.array(_decimals(38, (-14, 125)), pa.decimal256(76, 38)),
}


@pytest.mark.parametrize("kind", NUMERIC_CASES)
def test_every_numeric_type_is_read_as_its_nearest_float32(tmp_path: Path, kind: str) -> None:
    values = NUMERIC_CASES[kind]()
    path = tmp_path / "exact.parquet"
    pq.write_table(pa.table({"x": values, "y": values}), path, row_group_size=2000)
    opened, types = open_parquet(str(path), "x", "y")
    assert types == {"x": kind, "y": kind}  # the file holds the type under test
    got = np.concatenate([x for x, _ in read_columns(opened, str(path), "x", "y", chunk_rows=999)])
    want = np.array([nearest_float32(Fraction(v)) for v in values.to_pylist()], np.float32)
    wrong = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert wrong.size == 0, [(values[int(i)].as_py(), got[i], want[i]) for i in wrong[:5]]
