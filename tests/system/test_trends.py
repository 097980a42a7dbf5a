"""Results across runs: recorded on the server, the gd-trend artifact, `gdflow runs` and
`gdflow compare`, against a real Prefect server."""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.comparison import gd_comparison
from flows.serving import ensure_work_pool
from tasks.params import RunParams
from tests.processes import assert_one_line_error, gdflow
from tests.system.test_deployment import prefect, run_worker_once

METHODS = ("bgd", "sgd", "minibatch")


@pytest.fixture(scope="module")
def two_runs(prefect_api, tmp_path_factory) -> list[dict[str, Any]]:
    """Two completed runs of the default preset that differ in their epochs: id and name."""
    data_dir = tmp_path_factory.mktemp("trend-data")
    found = []
    for epochs in (20, 21):
        params = RunParams(epochs=epochs, data_dir=str(data_dir))
        state = gd_comparison(params=params, return_state=True)
        assert state.is_completed(), state.message
        run_id = str(state.state_details.flow_run_id)
        found.append({"id": run_id, "name": state.result().flow_run_name})
    return found


def test_two_runs_of_a_preset_give_a_trend_with_a_row_per_run_and_method(two_runs) -> None:
    with get_client(sync_client=True) as client:
        latest = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gd-trend-preset-default"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )[0]
    assert str(latest.flow_run_id) == two_runs[1]["id"]  # the newer run published it
    markdown = latest.data
    assert "data:image/png;base64," in markdown
    names = {run["name"] for run in two_runs}
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()]
    mine = [row for row in cells if len(row) > 2 and row[1] in names]
    for method in METHODS:
        assert sorted(row[1] for row in mine if row[2] == method) == sorted(names), method
    assert len(mine) == 2 * len(METHODS)


def _runs_json(api: str, *args: str) -> list[dict[str, Any]]:
    result = gdflow("runs", "--json", *args, api=api)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["runs"]


def test_runs_lists_both_runs_with_their_results(two_runs, prefect_api) -> None:
    listed = {r["id"]: r for r in _runs_json(prefect_api, "--preset", "default", "--limit", "50")}
    for run, epochs in zip(two_runs, (20, 21), strict=True):
        record = listed[run["id"]]
        assert record["name"] == run["name"]
        assert record["preset"] == "default"
        assert record["deployment"] is None
        assert record["params"]["epochs"] == epochs
        assert set(record["methods"]) == set(METHODS)
        for result in record["methods"].values():
            assert 0 < result["final_loss"] < 0.5
            assert 0 <= result["excess_loss"] < result["final_loss"]
            assert result["diverged"] is False
            assert result["updates"] > 0
    digests = {listed[run["id"]]["params_digest"] for run in two_runs}
    assert len(digests) == 2


def test_runs_parquet_holds_the_values_the_json_lists(two_runs, prefect_api, tmp_path) -> None:
    target = tmp_path / "runs.parquet"
    listed = _runs_json(prefect_api, "--limit", "5", "--parquet", str(target))
    rows = pq.read_table(target).to_pylist()
    assert len(rows) == sum(len(r["methods"]) for r in listed)
    by_key = {(row["run_id"], row["method"]): row for row in rows}
    for record in listed:
        for method, result in record["methods"].items():
            row = by_key[(record["id"], method)]
            assert row["run_name"] == record["name"]
            assert row["params_digest"] == record["params_digest"]
            for key, value in result.items():
                assert row[key] == value or math.isclose(row[key], value), (key, row, result)
    assert {run["id"] for run in two_runs} <= {row["run_id"] for row in rows}
    assert list(tmp_path.iterdir()) == [target]  # written atomically: no temporary file left


def test_compare_names_the_parameter_that_differs(two_runs, prefect_api) -> None:
    first, second = two_runs
    result = gdflow("compare", first["name"], second["id"][:8], api=prefect_api)
    assert result.returncode == 0, result.stderr
    assert "Parameters that differ: epochs" in result.stdout
    assert first["name"] in result.stdout
    assert second["name"] in result.stdout
    assert "final loss" in result.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["compare", "{first}", "no-such-run"], "no-such-run"),
        (["compare", "{first}", "deadbeef0"], "deadbeef0"),  # an id prefix no run has
        (["runs", "--deployment", "no-such-deployment"], "no-such-deployment"),
        (["runs", "--limit", "0"], "--limit"),
        (["runs", "--preset", "fastest"], "--preset"),
    ],
)
def test_an_unknown_run_or_filter_is_a_one_line_error(two_runs, prefect_api, args, named) -> None:
    args = [arg.format(first=two_runs[0]["id"]) for arg in args]
    assert_one_line_error(gdflow(*args, api=prefect_api), 2, named)


@pytest.mark.parametrize("args", [["runs"], ["compare", "a", "b"]])
def test_without_a_server_the_commands_say_to_start_one(args, tmp_path) -> None:
    result = gdflow(*args, data_dir=tmp_path)
    assert_one_line_error(result, 2, "PREFECT_API_URL", "gdflow server")


def test_a_parquet_path_that_is_a_directory_is_refused(two_runs, prefect_api, tmp_path) -> None:
    result = gdflow("runs", "--parquet", str(tmp_path), api=prefect_api)
    assert_one_line_error(result, 2, "--parquet", "directory")
    assert tmp_path.is_dir()


@pytest.mark.slow  # one `prefect deploy` and one worker process
def test_a_deployment_run_records_its_deployment_and_publishes_its_trend(
    prefect_api, tmp_path
) -> None:
    ensure_work_pool(prefect_api)
    deployed = prefect("--no-prompt", "deploy", "--name", "nightly", api=prefect_api)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("gd-comparison/nightly")
        run = client.create_flow_run_from_deployment(nightly.id)
    run_worker_once(prefect_api, tmp_path)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state_name == "Completed"
        trend = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gd-trend-nightly"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert [str(a.flow_run_id) for a in trend] == [str(run.id)]
    assert "deployment nightly" in trend[0].data
    (record,) = _runs_json(prefect_api, "--deployment", "nightly", "--limit", "1")
    assert record["id"] == str(run.id)
    assert record["deployment"] == "nightly"
    assert record["preset"] == "default"
