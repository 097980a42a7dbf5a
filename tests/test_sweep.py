"""The sweep: its grid, its report, the flow on threads and on a real Dask cluster, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster, get_task_stream
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter
from pydantic import ValidationError

from flows.comparison import gd_comparison
from flows.sweep import gd_sweep, run_sweep, task_runner
from tasks.history import History
from tasks.params import Method, RunParams, SweepParams
from tasks.sweeping import (
    CELLS_KEY,
    SWEEP_KEY,
    Cell,
    cell_rows,
    epochs_to_target,
    grid,
    history_batches,
    summarise,
    sweep_markdown,
)
from tests.processes import gdflow

SMALL = {"lrs": [0.01, 0.02, 0.1], "batch_sizes": [1, 10, "n"], "seeds": [0]}


def _history(loss: list[float], lr: float = 0.1, diverged: bool = False) -> History:
    n = len(loss)
    return History(
        method="bgd",
        epoch=np.arange(n),
        loss=np.array(loss, dtype=float),
        w=np.zeros(n),
        b=np.zeros(n),
        updates=np.arange(n),
        wall_time_s=0.0,
        diverged=diverged,
        reason="grew" if diverged else None,
        stability_bound=0.12,
        lr=lr,
        engine="fast",
        dtype="float32",
        compute_dtype="float64",
    )


# --- the grid ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "method", "lr"),
    [(1, Method.sgd, 0.01), (10, Method.minibatch, 0.02), (100, Method.bgd, 0.1)],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_a_cell_is_the_same_training_run_as_gdflow_run(batch_size, method, lr, shuffle) -> None:
    sweep = SweepParams(shuffle=shuffle, epochs=7, w0=1.5)
    run = RunParams(shuffle=shuffle, epochs=7, w0=1.5, seed=3)
    assert sweep.method_spec(lr, batch_size) == run.method_spec(method)
    assert sweep.data_spec(3) == run.data_spec()


def test_grid_covers_every_step_size_batch_size_and_seed() -> None:
    params = SweepParams(
        lrs=[0.1, 0.01, 0.1], batch_sizes=["n", 5, 1, 5], seeds=[2, 0], n_samples=50
    )
    assert params.lrs == [0.01, 0.1]
    assert params.batch_sizes == [1, 5, 50]
    cells = grid(params)
    assert len(cells) == 2 * 3 * 2
    assert len(set(cells)) == len(cells)
    assert {c.batch_size: c.method for c in cells} == {
        1: Method.sgd,
        5: Method.minibatch,
        50: Method.bgd,
    }
    assert [c.seed for c in cells[:6]] == [2] * 6


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"batch_sizes": [1, 101]}, "larger than n_samples"),
        ({"lrs": [0.0]}, "lrs"),
        ({"lrs": []}, "lrs"),
        ({"seeds": [-1]}, "seeds"),
        ({"sgd_lr": 0.1}, "sgd_lr"),
        ({"data": "points.parquet"}, "data"),
    ],
)
def test_bad_sweeps_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        SweepParams(**fields)


# --- the report's pure parts ------------------------------------------------------------


def test_epochs_to_target_is_the_first_epoch_a_thousand_times_closer() -> None:
    floor = 1.0
    assert epochs_to_target(_history([1001.0, 100.0, 2.5, 1.5, 1.0005]), floor) == 3
    assert epochs_to_target(_history([1001.0, 100.0, 2.5]), floor) is None
    assert epochs_to_target(_history([1001.0, 1.0, 1e9], diverged=True), floor) is None


def test_summary_folds_seeds_marks_divergence_and_picks_the_best_step() -> None:
    cells = [
        Cell(seed=s, batch_size=100, lr=lr, method=Method.bgd)
        for s in (0, 1)
        for lr in (0.01, 0.1, 0.2)
    ]
    losses = {0.01: [11.0, 5.0], 0.1: [11.0, 1.5], 0.2: [11.0, 1e9]}
    histories = [_history(losses[c.lr], c.lr, diverged=c.lr == 0.2 and c.seed == 1) for c in cells]
    summary = summarise(cell_rows(cells, histories, {0: 1.0, 1: 1.0}))
    assert summary.lrs == [0.01, 0.1, 0.2]
    assert summary.diverged[:, 0].tolist() == [0, 0, 1]
    assert summary.excess[0, 0] == pytest.approx(4.0)
    assert np.isnan(summary.excess[2, 0])  # one seed of two diverged: the cell is marked
    assert summary.best == [1]
    assert summary.bounds.tolist() == [0.12]


def test_markdown_embeds_the_figure_and_names_every_batch_size() -> None:
    cells = [Cell(seed=0, batch_size=b, lr=0.1, method=Method.bgd) for b in (10, 100)]
    rows = cell_rows(cells, [_history([11.0, 2.0]), _history([11.0, 3.0])], {0: 1.0})
    best = [{**r, "best_lr": r["lr"], "diverged_lrs": []} for r in rows]
    text = sweep_markdown(best, rows, b"\x89PNG fake", "caption", "/x/histories.parquet")
    assert "data:image/png;base64," in text
    assert "| 10 | bgd | 0.1 |" in text
    assert "| 100 | bgd | 0.1 |" in text
    assert "0 of 2 runs diverged" in text


def test_history_batches_tag_every_epoch_with_its_cell() -> None:
    cells = [Cell(seed=4, batch_size=1, lr=0.05, method=Method.sgd)]
    (batch,) = history_batches(cells, [_history([3.0, 2.0, 1.0], diverged=True)])
    table = batch.to_pydict()
    assert table["seed"] == [4, 4, 4]
    assert table["method"] == ["sgd"] * 3
    assert table["epoch"] == [0, 1, 2]
    assert table["loss"] == [3.0, 2.0, 1.0]
    assert table["diverged"] == [True] * 3


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
    with pytest.raises(ValueError, match=problem):
        task_runner(**kwargs)


# --- the flow ---------------------------------------------------------------------------


def _task_states(state: Any) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
        )
    return {r.name: r.state.name for r in runs}


def _newest_artifact(key: str) -> Any:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return max(found, key=lambda a: a.created)


@pytest.mark.usefixtures("prefect_api")
def test_sweep_reuses_the_cells_a_run_computed_and_publishes_its_report(tmp_path) -> None:
    assert gd_comparison(params=RunParams(data_dir=str(tmp_path)), return_state=True).is_completed()
    state = gd_sweep(params=SweepParams(data_dir=str(tmp_path), **SMALL), return_state=True)
    assert state.is_completed(), state.message
    states = _task_states(state)
    # the defaults of `gdflow run`: bgd 0.1, sgd 0.01, mini-batch 0.02 in batches of 10
    same_as_run = {"train-b1-lr0.01-seed0", "train-b10-lr0.02-seed0", "train-b100-lr0.1-seed0"}
    trains = {name: s for name, s in states.items() if name.startswith("train-")}
    assert len(trains) == 9
    assert {trains[name] for name in same_as_run} == {"Cached"}
    assert {s for name, s in trains.items() if name not in same_as_run} == {"Completed"}
    assert states["generate-n100-seed0"] == "Cached"

    result = state.result()
    assert (result["cells"], result["cached"], result["diverged"]) == (9, 3, 1)
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
    on_dask = state.result()
    assert on_dask["cells"] == 8
    workers = {t["worker"] for t in stream.data if "train_method" in t["key"]}
    assert len(workers) >= 2, workers

    # the workers wrote to the shared cache: the same sweep on threads reuses every cell
    again = run_sweep(params, task_runner())
    assert again.is_completed(), again.message
    on_threads = again.result()
    assert on_threads["cached"] == 8
    assert on_threads["best"] == on_dask["best"]


# --- the command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--lrs", "0.1,x"], "--lrs"),
        (["--batch-sizes", "1,500"], "--batch-sizes"),
        (["--seeds", "-1"], "--seeds"),
        (["--sgd-lr", "0.1"], "--sgd-lr"),
        (["--dask-address", "localhost"], "--dask-address"),
    ],
)
def test_cli_refuses_bad_sweeps_in_one_line(tmp_path, args: list[str], names: str) -> None:
    result = gdflow("sweep", *args, data_dir=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gdflow: error:")
    assert names in lines[0]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_sweep_on_a_new_local_dask_cluster(tmp_path, prefect_api) -> None:
    result = gdflow(
        "sweep",
        "--dask",
        "--dask-workers",
        "2",
        "--json",
        "--lrs",
        "0.01,0.2",
        "--batch-sizes",
        "1,n",
        "--seeds",
        "5",
        data_dir=tmp_path,
        api=prefect_api,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["flow_run"]["state"] == "Completed"
    assert (payload["cells"], payload["diverged"]) == (4, 2)
    assert pq.read_table(payload["histories"]).num_rows == 4 * 21
    assert Path(payload["data_dir"]) == tmp_path.resolve()
