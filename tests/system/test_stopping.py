"""However a command ends (Ctrl-C, SIGTERM, SIGKILL, a Prefect home it cannot use), it ends
promptly, in one line, and leaves no process and no half-written file behind."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tasks.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED
from tests.processes import (
    assert_one_line_error,
    free_port,
    gdflow,
    leftovers,
    processes_with,
    start,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")

BIG = "20000000"  # rows: a data set that takes a second or more to write


def _when_writing(run: subprocess.Popen[str], data_dir: Path, timeout: float = 120) -> None:
    """Wait until the run is writing its data set (its temporary file exists)."""
    deadline = time.monotonic() + timeout
    while not list((data_dir / "datasets").glob(".*.tmp")):
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the data set was never written"
        time.sleep(0.01)


def _gone(marker: str, timeout: float = 20) -> list[str]:
    """The processes still running with `marker` in their environment after up to `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_the_data_is_written_ends_the_run_at_once(tmp_path, signum) -> None:
    data_dir = tmp_path / "data"
    run = start("run", "--n-samples", BIG, data_dir=data_dir)  # on a temporary server
    _when_writing(run, data_dir)
    run.send_signal(signum)
    sent = time.monotonic()
    out, err = run.communicate(timeout=60)
    assert run.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert time.monotonic() - sent < 15, "it took too long to stop"
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "gdflow: interrupted"
    assert out == ""
    assert leftovers(data_dir) == []
    assert _gone(f"GDFLOW_DATA_DIR={data_dir}") == []


def test_a_killed_run_leaves_no_server_running(tmp_path) -> None:
    data_dir = tmp_path / "data"
    run = start("run", "--n-samples", BIG, data_dir=data_dir)
    _when_writing(run, data_dir)  # its temporary server is up by now
    assert len(processes_with(f"GDFLOW_DATA_DIR={data_dir}")) >= 2
    run.kill()
    run.communicate(timeout=60)
    assert _gone(f"GDFLOW_DATA_DIR={data_dir}") == []


@pytest.mark.slow
def test_an_interrupted_sweep_on_dask_ends_as_interrupted(tmp_path) -> None:
    data_dir = tmp_path / "data"
    args = ["sweep", "--dask", "--dask-workers", "2", "--n-samples", "100000"]
    sweep = start(*args, data_dir=data_dir)
    assert sweep.stderr is not None
    while "Task run 'train-" not in (line := sweep.stderr.readline()):  # the cells are running
        assert line, "the sweep ended before it trained"
    sweep.send_signal(signal.SIGINT)
    _, err = sweep.communicate(timeout=60)
    assert sweep.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "gdflow: interrupted"
    assert _gone(f"GDFLOW_DATA_DIR={data_dir}") == []


def _home_is_a_file(home: Path) -> None:
    home.write_text("not a directory")


def _database_is_not_sqlite(home: Path) -> None:
    home.mkdir()
    (home / "prefect.db").write_text("a text file where the database should be")


@pytest.mark.parametrize(
    ("damage", "words"),
    [(_home_is_a_file, ["is a file"]), (_database_is_not_sqlite, ["not a SQLite database"])],
    ids=["home-is-a-file", "database-is-not-sqlite"],
)
@pytest.mark.parametrize("command", ["run", "server"])
def test_a_broken_prefect_home_is_one_line_not_a_hang(tmp_path, damage, words, command) -> None:
    home = tmp_path / "prefect-home"
    damage(home)
    started = time.monotonic()
    args = ["server", "--port", str(free_port())] if command == "server" else [command]
    result = gdflow(*args, data_dir=tmp_path / "data", timeout=60, PREFECT_HOME=str(home))
    assert_one_line_error(result, EXIT_FAILED, str(home), *words)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "99999"], ["--port 99999", "1 to 65535"]),
        (["--port", "0"], ["--port 0"]),
        (["--port", "-1"], ["--port -1"]),
        (["--host", "no such host"], ["--host 'no such host'"]),
        (["--host", "192.0.2.1"], ["192.0.2.1", "--host"]),  # not an address of this machine
    ],
    ids=["port-too-large", "port-zero", "port-negative", "host-unknown", "host-not-here"],
)
def test_a_server_address_that_cannot_be_listened_on_is_refused(tmp_path, args, words) -> None:
    result = gdflow("server", *args, timeout=60, PREFECT_HOME=str(tmp_path / "home"))
    assert_one_line_error(result, EXIT_BAD_INPUT, *words)
