"""Data a run cannot use, at the command line: a store out of reach, a file that is no regular
file, synthetic data beyond float32. Each is refused in one line, exit code 2, within seconds,
before anything is written."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.errors import EXIT_BAD_INPUT as BAD_INPUT
from tests.processes import assert_one_line_error, gdflow


def _fifo(root: Path) -> str:
    os.mkfifo(root / "pipe.parquet")
    return str(root / "pipe.parquet")


def _socket(root: Path) -> str:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(root / "s.parquet"))
    return str(root / "s.parquet")


SOURCES = [
    pytest.param(
        lambda _: "s3://gdflow-no-such-bucket/key.parquet",
        ["cannot read data file s3://gdflow-no-such-bucket/key.parquet", "network"],
        id="s3",
    ),
    pytest.param(
        lambda _: "gs://gdflow-no-such-bucket/key.parquet",
        ["cannot read data file gs://gdflow-no-such-bucket/key.parquet", "network"],
        id="gcs",
    ),
    pytest.param(
        lambda _: "hdfs://namenode:8020/data/x.parquet",
        ["hdfs://namenode:8020/data/x.parquet", "needs Java and Hadoop"],
        id="hdfs",
    ),
    pytest.param(_fifo, ["is not a regular file but a FIFO (named pipe)"], id="fifo"),
    pytest.param(_socket, ["is not a regular file but a socket"], id="socket"),
    pytest.param(
        lambda _: "/dev/null",
        ["/dev/null is not a regular file but a character device"],
        id="dev-null",
    ),
]


@pytest.mark.parametrize(("source", "words"), SOURCES)
def test_an_unusable_data_source_is_refused_in_one_line_within_seconds(
    tmp_path: Path, source: Callable[[Path], str], words: list[str]
) -> None:
    data_dir = tmp_path / "data"
    uri = source(tmp_path)
    start = time.monotonic()
    result = gdflow("run", "--data", uri, "--data-dir", str(data_dir), timeout=60)
    assert time.monotonic() - start < 30
    line = assert_one_line_error(result, BAD_INPUT, *words)
    assert "empty (0 bytes)" not in line
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("run", ["--x-start", "-1e39"]),
        ("run", ["--slope", "1e39"]),
        ("run", ["--intercept", "1e39"]),
        ("run", ["--noise-std", "1e38"]),
        ("run", ["--slope", "7e37"]),  # |y| reaches 3.5e38 at x = -5
        ("sweep", ["--slope", "1e39"]),
        ("sweep", ["--x-stop", "1e39"]),
    ],
    ids=["x-start", "slope", "intercept", "noise-std", "slope-times-x", "sweep-slope", "sweep-x"],
)
def test_synthetic_data_beyond_float32_are_refused_before_any_work(
    tmp_path: Path, command: str, args: list[str]
) -> None:
    data_dir = tmp_path / "data"
    result = gdflow(command, *args, "--data-dir", str(data_dir), timeout=120)
    words = ["leave float32's range", "--x-start/--x-stop, --slope, --intercept or --noise-std"]
    assert_one_line_error(result, BAD_INPUT, *words)
    assert not data_dir.exists()
