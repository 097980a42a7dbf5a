"""Computing ahead: the helper's results are the tasks' own, taken only on an exact match."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tasks import ahead
from tasks.dataset import generate
from tasks.history import read_history, write_history
from tasks.params import Method, RunParams
from tasks.paths import PROJECT_ROOT, report_name, reports_dir
from tasks.stats import moments
from tasks.storage import read_manifest
from tasks.training import train
from tests.processes import gdflow, start

PARAMS = RunParams(n_samples=240, epochs=6)


@pytest.fixture(scope="module")
def trained() -> tuple[np.ndarray, np.ndarray, list]:
    x, y = generate(PARAMS.data_spec())
    stats = moments(x, y)
    histories = [train(x, y, PARAMS.method_spec(m), stats) for m in PARAMS.methods]
    return x, y, histories


def test_history_key_changes_with_every_input(trained) -> None:
    x, y, _ = trained
    stats = moments(x, y)
    spec = PARAMS.method_spec(Method.sgd)
    key = ahead.history_key(x, y, stats, spec)
    assert ahead.history_key(x.copy(), y.copy(), stats, spec) == key
    other_y = y.copy()
    other_y[7] = np.nextafter(other_y[7], np.float32(np.inf))
    assert ahead.history_key(x, other_y, stats, spec) != key
    assert ahead.history_key(x, y, replace(stats, var_x=stats.var_x * 2), spec) != key
    assert ahead.history_key(x, y, stats, spec.model_copy(update={"lr": 0.02})) != key


def test_figure_key_survives_the_history_files(trained, tmp_path) -> None:
    """The publish task keys the histories it reads back; the helper, the ones it trained."""
    x, y, histories = trained
    stats = moments(x, y)
    read_back = [
        read_history(write_history(h, tmp_path / f"{h.method}.parquet", {"gdflow.note": "x"}))
        for h in histories
    ]
    args = (x.astype(float), y.astype(float), stats, -5.0, 0.0, "caption")
    key = ahead.figure_key(histories, *args)
    assert ahead.figure_key(read_back, *args) == key
    assert ahead.figure_key(read_back[:2], *args) != key
    assert ahead.figure_key(read_back, *args[:-1], "another caption") != key


def _helper(messages: list[tuple[str, str, object]], delay: float = 0.0):
    """An Ahead fed by a process that sends `messages` (after `delay` s), then ends."""

    def send(conn) -> None:
        time.sleep(delay)
        for message in messages:
            conn.send(message)

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=send, args=(sender,), daemon=True)
    process.start()
    sender.close()
    return ahead.Ahead(process, receiver)


def test_take_waits_for_a_planned_result_and_refuses_an_unplanned_one() -> None:
    helper = _helper(
        [("plan", "history", ["a", "b"]), ("history", "a", 1), ("history", "b", 2)], delay=0.3
    )
    try:
        start = time.monotonic()
        assert helper.take("history", "b") == 2  # waited for it
        assert time.monotonic() - start >= 0.25
        assert helper.take("history", "c") is None  # not in the plan: no wait for the rest
        assert helper.take("history", "a") == 1
        assert helper.take("history", "a") is None  # taken once
    finally:
        helper.stop()


def test_take_gives_up_when_the_helper_ends_without_the_result() -> None:
    helper = _helper([("plan", "figure", ["f"])])  # dies before sending it
    try:
        done = threading.Event()
        got: list[object] = []
        threading.Thread(
            target=lambda: (got.append(helper.take("figure", "f")), done.set())
        ).start()
        assert done.wait(30)
        assert got == [None]
    finally:
        helper.stop()


def test_a_repeated_run_computes_nothing_ahead(tmp_path) -> None:
    params = PARAMS.model_copy(update={"data_dir": str(tmp_path)})
    assert ahead.worth_computing(params)
    from tasks.paths import dataset_path

    data = dataset_path(tmp_path, params.data_spec())
    data.parent.mkdir(parents=True)
    data.write_bytes(b"stand-in")
    assert ahead.worth_computing(params)  # the figure is not drawn yet
    drawn = reports_dir(tmp_path) / report_name(params) / ahead.FIGURE_INPUTS
    drawn.parent.mkdir(parents=True)
    drawn.write_text("{}")
    assert not ahead.worth_computing(params)
    assert ahead.worth_computing(params.model_copy(update={"refresh": True}))
    for other in (
        {"data": "mine.csv"},
        {"engine": "reference"},
        {"n_samples": ahead.AHEAD_MAX_ROWS + 1},
        {"epochs": ahead.AHEAD_MAX_VISITS // params.n_samples + 1},
    ):
        assert not ahead.worth_computing(params.model_copy(update={**other, "refresh": True}))


def _run(data_dir: Path, api: str, **env: str) -> tuple[dict, str]:
    result = gdflow(
        "run", "--n-samples", "240", "--epochs", "6", "--json", data_dir=data_dir, api=api, **env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), result.stderr


@pytest.mark.usefixtures("prefect_api")
def test_a_run_computed_ahead_stores_what_the_tasks_compute(tmp_path, prefect_api) -> None:
    fresh, fresh_log = _run(tmp_path / "ahead", prefect_api)
    plain, plain_log = _run(tmp_path / "plain", prefect_api, **{ahead.SWITCH_ENV: "0"})
    assert fresh_log.count("trained ahead") == 3, fresh_log[-3000:]
    assert "Figure drawn ahead" in fresh_log
    assert "trained ahead" not in plain_log
    assert "drawn ahead" not in plain_log
    assert "epoch 6/6 (100%)" in fresh_log  # the helper's progress, replayed in the task's log
    for method in fresh["methods"]:
        ours, theirs = (
            read_history(read_manifest(Path(r["methods"][method]["history"])))
            for r in (fresh, plain)
        )
        for column in ("epoch", "loss", "w", "b", "updates"):
            assert np.array_equal(getattr(ours, column), getattr(theirs, column)), method
        assert (ours.diverged, ours.reason, ours.lr) == (theirs.diverged, theirs.reason, theirs.lr)
    assert fresh["dataset"]["sha256"] == plain["dataset"]["sha256"]
    assert Path(fresh["figure"]).read_bytes() == Path(plain["figure"]).read_bytes()
    _, again_log = _run(tmp_path / "ahead", prefect_api)
    assert (
        "trained ahead" not in again_log
    )  # a repeat finds everything cached: no helper work to take


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_the_helper_ends_with_a_killed_command(tmp_path, prefect_api) -> None:
    proc = start(
        "run", "--n-samples", "1000000", "--epochs", "20", data_dir=tmp_path, api=prefect_api
    )
    try:
        deadline = time.monotonic() + 60
        helpers: list[int] = []
        while not helpers and time.monotonic() < deadline and proc.poll() is None:
            helpers = [c for c in _children(proc.pid) if "flows.cli" in _cmdline(c)]
            time.sleep(0.05)
        assert helpers, "no helper process seen"
    finally:
        proc.kill()
        proc.communicate()
    deadline = time.monotonic() + 1.0  # a helper left alone would work on for seconds
    while Path(f"/proc/{helpers[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{helpers[0]}").exists() or "zombie" in _status(helpers[0])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "zombie"


_ORPHAN = """
import multiprocessing, sys
from tasks import ahead
from tasks.params import RunParams

params = RunParams(n_samples=240, epochs=6, data_dir=sys.argv[1])
context = multiprocessing.get_context("fork")
receiver, sender = context.Pipe(duplex=False)
helper = context.Process(target=ahead._helper_main, args=(params, sender, receiver), daemon=True)
helper.start()
sender.close()
receiver.close()  # the command stops listening, and stays alive
helper.join(30)
print("alive" if helper.is_alive() else "ended")
helper.kill()
"""


def test_a_helper_nobody_listens_to_ends(tmp_path) -> None:
    """Its sends fail at once instead of filling the pipe and waiting forever."""
    result = subprocess.run(
        [sys.executable, "-c", _ORPHAN, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip() == "ended", result.stderr[-2000:]
