"""Bad input and a broken environment, case by case, as a user meets them at the command line.

Every case: one line that names the problem and the fix, exit code 2 for bad input and 1 for a
broken environment, no traceback, nothing half-written, and earlier results left as they were.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.comparison import gd_comparison
from tasks.errors import EXIT_BAD_INPUT as BAD_INPUT
from tasks.errors import EXIT_FAILED as BROKEN_ENVIRONMENT
from tasks.params import RunParams
from tests.processes import assert_one_line_error, free_port, gdflow, leftovers, snapshot


@pytest.fixture(scope="module")
def earlier(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the results of one earlier, successful run."""
    root = tmp_path_factory.mktemp("earlier")
    state = gd_comparison(params=RunParams(data_dir=str(root)), return_state=True)
    assert state.is_completed(), state.message
    return root


@pytest.fixture
def data_dir(earlier: Path, tmp_path: Path) -> Path:
    """A fresh copy of the earlier results for one case to (not) touch."""
    target = tmp_path / "data"
    shutil.copytree(earlier, target)
    return target


def _good() -> dict[str, np.ndarray]:
    x = np.arange(-5, 5, 0.1)
    return {"x": x, "y": -3.0 * x + 1.0 + np.random.default_rng(0).normal(0, 0.3, x.size)}


def _with(**columns: object) -> pa.Table:
    return pa.table({**_good(), **columns})


def _write(table: pa.Table) -> Callable[[Path], None]:
    return lambda path: pq.write_table(table, path)


def _truncated(path: Path) -> None:
    pq.write_table(pa.table(_good()), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _duplicate_names(path: Path) -> None:
    good = _good()
    columns = [pa.array(good["x"]), pa.array(good["x"]), pa.array(good["y"])]
    pq.write_table(pa.Table.from_arrays(columns, names=["x", "x", "y"]), path)


def _nulls() -> pa.Table:
    y = _good()["y"].tolist()
    y[5] = None
    return _with(y=pa.array(y, pa.float64()))


def _bad_value(column: str, row: int, value: float) -> pa.Table:
    values = _good()[column].copy()
    values[row] = value
    return _with(**{column: values})


FILES: dict[str, Callable[[Path], None] | None] = {
    "missing": None,
    "directory": lambda path: path.mkdir(),
    "empty": lambda path: path.write_bytes(b""),
    "csv": lambda path: path.write_text("x,y\n1,2\n3,4\n"),
    "truncated": _truncated,
    "zero-rows": _write(pa.table(_good()).slice(0, 0)),
    "one-row": _write(pa.table({"x": [1.0], "y": [2.0]})),
    "text-column": _write(_with(x=[f"{v:.1f}" for v in _good()["x"]])),
    "nan": _write(_bad_value("y", 7, np.nan)),
    "inf": _write(_bad_value("x", 3, np.inf)),
    "huge": _write(_bad_value("y", 9, 1e300)),
    "nulls": _write(_nulls()),
    "duplicate-names": _duplicate_names,
    "good": _write(pa.table(_good())),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One data file per kind of damage, by name."""
    root = tmp_path_factory.mktemp("files")
    paths = {}
    for name, make in FILES.items():
        paths[name] = root / f"{name}.parquet"
        if make is not None:
            make(paths[name])
    return paths


PARAMETER_CASES = [
    pytest.param(["--n-samples", "0"], ["--n-samples"], id="n-0"),
    pytest.param(["--n-samples", "1"], ["--n-samples"], id="n-1"),
    pytest.param(["--n-samples", "-5"], ["--n-samples", "-5"], id="n-negative"),
    pytest.param(["--n-samples", str(10**13)], ["--n-samples"], id="n-absurd"),
    pytest.param(["--sgd-lr", "nan"], ["--sgd-lr"], id="lr-nan"),
    pytest.param(["--bgd-lr", "inf"], ["--bgd-lr"], id="lr-inf"),
    pytest.param(["--minibatch-lr", "0"], ["--minibatch-lr"], id="lr-zero"),
    pytest.param(["--sgd-lr", "-0.1"], ["--sgd-lr"], id="lr-negative"),
    pytest.param(["--epochs", "0"], ["--epochs"], id="epochs-0"),
    pytest.param(["--epochs", str(10**9)], ["--epochs"], id="epochs-absurd"),
    pytest.param(["--batch-size", "0"], ["--batch-size"], id="batch-0"),
    pytest.param(["--batch-size", "101"], ["batch_size (101)", "n_samples (100)"], id="batch-gt-n"),
    pytest.param(["--methods", "bgd,adam"], ["--methods", "adam"], id="unknown-method"),
    pytest.param(["--preset", "fastest"], ["fastest", "default", "tutorial"], id="unknown-preset"),
    pytest.param(["--epochs", "ten"], ["--epochs"], id="malformed-int"),
    pytest.param(["--sgd-lr", "fast"], ["--sgd-lr"], id="malformed-float"),
    pytest.param(["--methods", ","], ["--methods"], id="no-methods"),
    pytest.param(["--dtype", "float16"], ["--dtype", "float16"], id="unknown-dtype"),
    pytest.param(["--shuffle", "maybe"], ["maybe"], id="malformed-flag"),
    pytest.param(["--epoch", "3"], ["--epoch", "--epochs"], id="misspelt-option"),
]


@pytest.mark.parametrize(("args", "words"), PARAMETER_CASES)
def test_bad_parameters_are_refused_before_any_work(
    data_dir: Path, args: list[str], words: list[str]
) -> None:
    before = snapshot(data_dir)
    result = gdflow("run", *args, "--data-dir", str(data_dir))
    assert_one_line_error(result, BAD_INPUT, *words)
    assert snapshot(data_dir) == before


FILE_CASES = [
    pytest.param("missing", [], ["does not exist"], id="file-missing"),
    pytest.param("directory", [], ["is a directory"], id="file-directory"),
    pytest.param("empty", [], ["empty (0 bytes)"], id="file-empty"),
    pytest.param("csv", [], ["not a Parquet file"], id="file-not-parquet"),
    pytest.param("truncated", [], ["truncated or damaged"], id="file-truncated"),
    pytest.param("zero-rows", [], ["has 0 rows"], id="file-zero-rows"),
    pytest.param("one-row", [], ["has 1 row;"], id="file-one-row"),
    pytest.param("good", ["--x-col", "nope"], ["no column 'nope'", "--x-col"], id="file-no-column"),
    pytest.param("text-column", [], ["column 'x'", "not numbers"], id="file-text-column"),
    pytest.param("nan", [], ["column 'y'", "(nan) at row 7"], id="file-nan"),
    pytest.param("inf", [], ["column 'x'", "(inf) at row 3"], id="file-inf"),
    pytest.param("huge", [], ["too large for float32", "row 9"], id="file-too-large"),
    pytest.param("nulls", [], ["column 'y'", "null", "row 5"], id="file-nulls"),
    pytest.param("duplicate-names", [], ["2 columns named 'x'"], id="file-duplicate-names"),
    pytest.param("good", ["--batch-size", "500"], ["batch_size (500)", "100 rows"], id="file-bs"),
    pytest.param("good", ["--x-col", "y"], ["x_col and y_col"], id="file-same-columns"),
]


@pytest.mark.parametrize(("name", "args", "words"), FILE_CASES)
def test_unusable_data_files_are_refused_before_any_work(
    data_dir: Path, files: dict[str, Path], name: str, args: list[str], words: list[str]
) -> None:
    before = snapshot(data_dir)
    result = gdflow("run", "--data", str(files[name]), *args, "--data-dir", str(data_dir))
    assert_one_line_error(result, BAD_INPUT, *words)
    assert snapshot(data_dir) == before


def test_an_unknown_uri_scheme_is_refused(data_dir: Path) -> None:
    result = gdflow("run", "--data", "nosuch://bucket/x.parquet", "--data-dir", str(data_dir))
    assert_one_line_error(result, BAD_INPUT, "nosuch://bucket/x.parquet", "URI")


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("not a directory")
    result = gdflow("run", "--data-dir", str(target))
    assert_one_line_error(result, BAD_INPUT, "--data-dir", "is a file")
    assert target.read_text() == "not a directory"


@contextlib.contextmanager
def _tmpfs(mountpoint: Path, size: str, contents: Path, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at `mountpoint` holding a copy of `contents`; skips where mount is refused."""
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        shutil.copytree(contents, mountpoint, dirs_exist_ok=True)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


@contextlib.contextmanager
def _unwritable(earlier: Path, tmp_path: Path) -> Iterator[Path]:
    """A data directory with earlier results that this process cannot write to."""
    if os.geteuid() != 0:  # permissions stop an ordinary user
        target = tmp_path / "data"
        shutil.copytree(earlier, target)
        target.chmod(0o555)
        try:
            yield target
        finally:
            target.chmod(0o755)
    else:  # root ignores permissions, not a read-only file system
        with _tmpfs(tmp_path / "data", "8m", earlier, read_only=True) as target:
            yield target


def test_an_unwritable_data_dir_is_an_environment_error(earlier: Path, tmp_path: Path) -> None:
    with _unwritable(earlier, tmp_path) as target:
        before = snapshot(target)
        result = gdflow("run", "--data-dir", str(target))
        assert_one_line_error(result, BROKEN_ENVIRONMENT, "cannot write", str(target))
        assert snapshot(target) == before


def test_a_full_disk_is_refused_before_any_work(earlier: Path, tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "data", "2m", earlier) as target:
        before = snapshot(target)
        result = gdflow("run", "--data-dir", str(target), "--n-samples", "1000")
        assert_one_line_error(result, BROKEN_ENVIRONMENT, "not enough free space", "MiB")
        assert snapshot(target) == before


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_disk_that_fills_during_the_run_leaves_no_partial_file(
    data_dir: Path, prefect_api: str
) -> None:
    before = snapshot(data_dir)
    result = gdflow(
        "run",
        "--n-samples",
        "1000000",
        "--data-dir",
        str(data_dir),
        api=prefect_api,
        preexec_fn=_file_size_limit(2 << 20),
    )
    assert result.returncode == BROKEN_ENVIRONMENT, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gdflow: error: the disk is full or a file-size limit was reached")
    assert "; free some space" in last
    after = snapshot(data_dir)
    assert {k: after[k] for k in before} == before
    assert leftovers(data_dir) == []
    new = set(after) - set(before)
    assert not any(name.endswith(".parquet") for name in new), new


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_an_unreachable_prefect_server_is_an_environment_error(data_dir: Path, command) -> None:
    before = snapshot(data_dir)
    url = f"http://127.0.0.1:{free_port()}/api"
    result = gdflow(command, "--data-dir", str(data_dir), api=url)
    assert_one_line_error(result, BROKEN_ENVIRONMENT, "PREFECT_API_URL", url)
    assert snapshot(data_dir) == before
