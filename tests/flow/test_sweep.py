"""The sweep flow on threads and on a real Dask cluster of worker processes, and its runners."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster, get_task_stream
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

from flows.comparison import gd_comparison
from flows.sweep import BATCHES_PER_SLOT, gd_sweep, run_sweep, task_runner
from tasks.errors import InputError
from tasks.params import RunParams, SweepParams
from tasks.report.sweep_tables import CELLS_KEY, SWEEP_KEY

SMALL = {"lrs": [0.01, 0.02, 0.1], "batch_sizes": [1, 10, "n"], "seeds": [0]}


# --- runners ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"workers": 2}, "--dask-workers"),
        ({"dask": True, "workers": 0}, "at least 1"),
        ({"address": "127.0.0.1:8786"}, "tcp://HOST:PORT"),
        ({"address": "tcp://127.0.0.1:1"}, "no Dask scheduler answers"),
    ],
)
def test_bad_runner_options_are_refused(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        task_runner(**kwargs)


# --- the flow ---------------------------------------------------------------------------


def _task_states(state: Any, expected: int) -> dict[str, str]:
    """{name: state name} of the flow run's task runs, once the server has recorded `expected`
    of them in a final state (it records them from events, a moment after they end)."""
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
            )
        if len(runs) >= expected and all(r.state is not None and r.state.is_final() for r in runs):
            return {r.name: r.state.name for r in runs}
        assert time.monotonic() < deadline, [(r.name, r.state) for r in runs]
        time.sleep(0.2)


def _newest_artifact(key: str) -> Any:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return max(found, key=lambda a: a.created)


def _written(path: str) -> tuple[int, int]:
    stat = Path(path).stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.mark.usefixtures("prefect_api")
def test_sweep_reuses_the_cells_a_run_computed_and_publishes_its_report(tmp_path) -> None:
    run = gd_comparison(params=RunParams(data_dir=str(tmp_path)), return_state=True)
    # the defaults of `gdflow run` (bgd 0.1, sgd 0.01, mini-batch 0.02 in batches of 10) are cells
    run_histories = {r.history: _written(r.history) for r in run.result().methods.values()}
    state = gd_sweep(params=SweepParams(data_dir=str(tmp_path), **SMALL), return_state=True)
    assert state.is_completed(), state.message
    # the 9 cells train in a few task runs (two per core), named for what they hold
    batches = min(9, BATCHES_PER_SLOT * (os.cpu_count() or 1))
    states = _task_states(state, expected=batches + 2)  # with the data set and the report
    trains = {name: s for name, s in states.items() if name.startswith("train-")}
    assert 1 < len(trains) == batches
    sizes = [re.fullmatch(rf"train-(\d+)-cells-\d+of{len(trains)}", name) for name in trains]
    assert sum(int(match[1]) for match in sizes if match) == 9
    assert set(trains.values()) == {"Completed"}
    assert states["generate-n100-seed0"] == "Cached"
    # the run's three cells were read back, their histories untouched
    assert {path: _written(path) for path in run_histories} == run_histories

    result = state.result().model_dump()
    assert (result["cells"], result["cached"], result["diverged"]) == (9, 3, 1)
    assert re.fullmatch(r"sweep-n100-e20-3x3x1-[0-9a-f]{6}", result["flow_run_name"])
    assert Path(result["datasets"]["0"]).is_file()
    assert Path(result["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    histories = pq.read_table(result["histories"])
    assert histories.num_rows == 9 * 21
    assert {"seed", "method", "lr", "batch_size", "epoch", "loss", "w", "b", "diverged"} <= set(
        histories.column_names
    )
    table = histories.to_pydict()
    rows = zip(table["batch_size"], table["lr"], table["diverged"], strict=True)
    assert {(size, lr) for size, lr, diverged in rows if diverged} == {(1, 0.1)}
    best = {b["batch_size"]: b["best_lr"] for b in result["best"]}
    assert best == {1: 0.02, 10: 0.02, 100: 0.1}

    markdown = _newest_artifact(SWEEP_KEY)
    assert markdown.type == "markdown"
    assert "data:image/png;base64," in markdown.data
    cells = json.loads(_newest_artifact(CELLS_KEY).data)
    assert len(cells) == 9
    assert {c["method"] for c in cells} == {"sgd", "minibatch", "bgd"}

    # one step size more: only its cells are computed
    wider = SweepParams(data_dir=str(tmp_path), **{**SMALL, "lrs": [*SMALL["lrs"], 0.05]})
    again = gd_sweep(params=wider, return_state=True).result().model_dump()
    assert (again["cells"], again["cached"]) == (12, 9)
    # a cell whose history is lost is trained again, and only that one
    lost = next(iter(run_histories))
    Path(lost).unlink()
    again = gd_sweep(params=wider, return_state=True).result().model_dump()
    assert (again["cells"], again["cached"]) == (12, 11)
    assert Path(lost).is_file()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_sweep_on_a_dask_cluster_of_two_worker_processes(tmp_path) -> None:
    params = SweepParams(
        data_dir=str(tmp_path), lrs=[0.01, 0.05], batch_sizes=[1, "n"], seeds=[0, 1]
    )
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        runner = task_runner(address=cluster.scheduler_address)
        with get_task_stream(client) as stream:
            state = run_sweep(params, runner)
    assert state.is_completed(), state.message
    on_dask = state.result().model_dump()
    assert on_dask["cells"] == 8
    workers = {t["worker"] for t in stream.data if "train_cells" in t["key"]}
    assert len(workers) >= 2, workers

    # the workers wrote to the shared cache: the same sweep on threads reuses every cell
    again = run_sweep(params, task_runner())
    assert again.is_completed(), again.message
    on_threads = again.result().model_dump()
    assert on_threads["cached"] == 8
    assert on_threads["best"] == on_dask["best"]
