"""Runs killed with SIGKILL while writing Parquet, training and reporting, then run again.

After every kill, no file that a reader would accept differs from its recorded hash, and the
next run reuses what had finished: the data set once the training began, the trained methods
once the report began. Each round ends with a run that completes, with the exact numbers of a
run that was never interrupted.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter

from tasks.data.synthetic import generate
from tasks.history import read_history
from tasks.params import RunParams
from tasks.paths import dataset_path, reports_dir
from tasks.policies import FlockLockManager, locks_dir
from tasks.stats import moments
from tasks.storage import read_manifest
from tasks.training.methods import train
from tests.processes import dataset_key, start, trusted_but_wrong

ROWS = 1_000_000
EPOCHS = 100  # training lasts long enough to be caught in the act
MAX_MISSES = 4  # runs that finished before they could be killed, per round
ROUNDS = 2
SEED = 20240611  # of the kill delays; printed with every failure
PHASES = ("writing", "training", "reporting")


def _held_locks() -> set[str]:
    folder = locks_dir()
    if not folder.is_dir():
        return set()
    manager = FlockLockManager()
    keys = {p.name.removesuffix(".lock") for p in folder.glob("*.lock")}
    return {key for key in keys if manager.is_locked(key)}


def temp_files(data_dir: Path) -> set[Path]:
    """Temporary files of atomic writes: in progress, or left by a killed run."""
    return set(data_dir.rglob(".*.tmp"))


def phase(data_dir: Path, dataset: Path, dataset_lock: str, stale: set[Path]) -> str | None:
    """What a run is doing right now, judged from the files it is writing or locking."""
    writing = temp_files(data_dir) - stale
    if any(p.parent.parent == reports_dir(data_dir) for p in writing):
        return "reporting"  # publishing starts only once every training task has returned
    if any(p.name.startswith(f".{dataset.name}.") for p in writing):
        return "writing"
    if _held_locks() - {dataset_lock}:
        return "training"  # a method's lock is held: the data set task has returned
    return None


def _wait(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            return True
        time.sleep(0.001)
    return False


def _run_id(stderr: str) -> str | None:
    found = re.search(r"flow-run/([0-9a-f-]{36})", stderr)
    return found.group(1) if found else None


def task_states(run_id: str | None) -> dict[str, str]:
    """{task-run name prefix: state name} of one flow run's finished task runs, as the server
    saw them: a task killed while pending or running (a cached one too, before its cache
    lookup ended) says nothing about what it would have reused."""
    if run_id is None:
        return {}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
    finished = [r for r in runs if r.state and r.state.is_final()]
    return {r.name.split("-lr")[0].split("-n")[0]: r.state.name for r in finished}


def check_reuse(states: dict[str, str], after: str | None, context: str) -> None:
    """What a run must have reused, given the phase its predecessor was killed in."""
    if after in ("training", "reporting", "completed") and "generate" in states:
        assert states["generate"] == "Cached", context
    if after == "writing" and "generate" in states:
        assert states["generate"] == "Completed", context
    if after in ("reporting", "completed"):
        trained = {v for k, v in states.items() if k.startswith("train")}
        assert trained <= {"Cached"}, context


def reference(params: RunParams) -> dict[str, tuple[np.ndarray, ...]]:
    """Loss, w and b of every method from a run in this process, never interrupted."""
    x, y = generate(params.data_spec())
    stats = moments(x, y)
    out = {}
    for method in params.methods:
        h = train(x, y, params.method_spec(method, x.size), stats)
        out[method.value] = (h.loss, h.w, h.b)
    return out


def kill_one(
    args: list[str], data_dir: Path, api: str, params: RunParams, target: str, rng: random.Random
) -> tuple[str | None, subprocess.CompletedProcess[str]]:
    """Start a run and SIGKILL it in `target` phase (or at a random moment for "any").

    Returns the phase it was in when killed, None if it finished first, and how it ended.
    """
    stale = temp_files(data_dir)
    dataset = dataset_path(data_dir, params.data_spec())
    lock = dataset_key(params, data_dir)
    proc = start(*args, data_dir=data_dir, api=api)
    if target == "any":
        _wait(proc, lambda: False, timeout=rng.uniform(0.5, 4.0))
    else:
        _wait(proc, lambda: phase(data_dir, dataset, lock, stale) == target)
        time.sleep(rng.uniform(0.0, 0.05 if target == "writing" else 0.15))
    now = phase(data_dir, dataset, lock, stale) or "between phases"
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=60)
    ended = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return (now if proc.returncode == -signal.SIGKILL else None), ended


def test_killed_runs_never_leave_a_trusted_bad_file_and_the_next_run_reuses_work(
    tmp_path, prefect_api: str
) -> None:
    rng = random.Random(SEED)
    data_dir = tmp_path / "data"
    kills: list[str] = []
    for round_ in range(ROUNDS):
        params = RunParams(n_samples=ROWS, epochs=EPOCHS, seed=round_, data_dir=str(data_dir))
        args = ["run", "--json", "--n-samples", str(ROWS), "--epochs", str(EPOCHS)]
        args += ["--seed", str(round_)]
        before: str | None = None  # what happened to the previous run of this round
        targets = [*PHASES, "any", "any"]
        misses = 0
        while targets:
            context = f"round {round_}, after {before}, seed {SEED}, kills so far {kills}"
            killed_in, ended = kill_one(args, data_dir, prefect_api, params, targets[0], rng)
            run_id = _run_id(ended.stderr)
            assert run_id is not None or killed_in not in PHASES, ended.stderr[-3000:]
            check_reuse(task_states(run_id), before, context)
            if killed_in is None:  # it finished first: try again on the next run
                assert ended.returncode == 0, ended.stderr[-3000:]
                misses += 1
                assert misses <= MAX_MISSES, f"{targets[0]} never seen in time; {context}"
                before = "completed"
            else:
                kills.append(killed_in)
                before = killed_in
                targets.pop(0)
            assert trusted_but_wrong(data_dir) == [], context
            for summary in reports_dir(data_dir).glob("*/summary.json"):
                json.loads(summary.read_text())  # complete, or absent: never half-written

        proc = start(*args, data_dir=data_dir, api=prefect_api)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        result = json.loads(stdout)
        check_reuse(task_states(result["flow_run"]["id"]), before, f"round {round_}, last run")
        for name, (loss, w, b) in reference(params).items():
            record = read_manifest(Path(result["methods"][name]["history"]))
            assert record is not None, name
            history = read_history(record)
            np.testing.assert_array_equal(history.loss, loss, err_msg=name)
            np.testing.assert_array_equal(history.w, w, err_msg=name)
            np.testing.assert_array_equal(history.b, b, err_msg=name)
        assert trusted_but_wrong(data_dir) == []

    assert len(kills) >= 10, kills
    for name in PHASES:
        assert kills.count(name) >= 2, (name, kills)
