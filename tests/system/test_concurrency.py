"""Four identical runs started at once: all succeed, agree, and share one computation."""

from __future__ import annotations

import json
import time
from collections import defaultdict

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter

from tasks.params import RunParams
from tasks.policies import FlockLockManager
from tests.processes import dataset_key, start, trusted_but_wrong

RUNS = 4
ROWS, SEED = 200_000, 7  # a data set no other test makes, so its task runs are these runs'


def _running(task_run_name: str) -> int:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                name={"any_": [task_run_name]}, state={"type": {"any_": ["RUNNING"]}}
            )
        )
    return len(runs)


def _final_task_states(flow_run_ids: list[str], expected: int) -> dict[str, list[str]]:
    """{task name: state names} of the flow runs' task runs, once the server has recorded them
    all in a final state: it records task runs from the runs' events, a moment after the runs
    end."""
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": flow_run_ids})
            )
        states = [t.state for t in task_runs]
        if len(task_runs) >= expected and all(s is not None and s.is_final() for s in states):
            break
        assert time.monotonic() < deadline, [(t.name, t.state) for t in task_runs]
        time.sleep(0.2)
    by_task: dict[str, list[str]] = defaultdict(list)
    for t in task_runs:
        by_task[t.name.split("-lr")[0]].append(t.state.name)
    return by_task


def test_four_identical_runs_at_once_compute_everything_once(tmp_path, prefect_api: str) -> None:
    data_dir = tmp_path / "data"
    generate_name = f"generate-n{ROWS}-seed{SEED}"
    # Hold the data set's lock until all four runs wait for it, so they really contend.
    key = dataset_key(RunParams(n_samples=ROWS, seed=SEED), data_dir)
    locks = FlockLockManager()
    assert locks.acquire_lock(key, "test")
    args = ["run", "--json", "--n-samples", str(ROWS), "--seed", str(SEED)]
    procs = [start(*args, data_dir=data_dir, api=prefect_api) for _ in range(RUNS)]
    try:
        deadline = time.monotonic() + 180
        while _running(generate_name) < RUNS:
            assert time.monotonic() < deadline, "the four runs never all reached the data set"
            for p in procs:
                assert p.poll() is None, f"a run ended early: {p.communicate()[1][-3000:]}"
            time.sleep(0.2)
    finally:
        locks.release_lock(key, "test")
    ended = [(p.communicate(timeout=300), p.returncode) for p in procs]
    for (_, stderr), code in ended:
        assert code == 0, stderr[-3000:]
    results = [json.loads(stdout) for (stdout, _), _ in ended]

    runs = [r.pop("flow_run") for r in results]
    assert all(r == results[0] for r in results[1:])  # same files, hashes and numbers
    assert trusted_but_wrong(data_dir) == []

    by_task = _final_task_states([r["id"] for r in runs], expected=6 * RUNS)
    assert sorted(by_task.pop("publish-report")) == ["Completed"] * RUNS
    assert sorted(by_task.pop("publish-trend")) == ["Completed"] * RUNS
    assert set(by_task) == {generate_name, "train-bgd", "train-sgd", "train-minibatch"}
    for name, states in by_task.items():
        assert sorted(states) == ["Cached"] * (RUNS - 1) + ["Completed"], (name, states)
