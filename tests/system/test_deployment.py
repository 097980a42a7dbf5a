"""Scheduled use end to end: prefect.yaml deployed to a real server, a run executed by a worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact, Deployment
from prefect.states import Scheduled

from flows.comparison import gd_comparison
from flows.serving import WORK_POOL, ensure_work_pool
from tasks.params import PRESETS, RunParams
from tasks.paths import PROJECT_ROOT

METHODS = ("bgd", "sgd", "minibatch")
pytestmark = pytest.mark.slow  # one `prefect deploy` and one worker process


def prefect(*args: str, api: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The `prefect` command line, run from the repository root against `api`."""
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PREFECT_API_URL": api, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def run_worker_once(api: str, data_dir: Path) -> None:
    """A process worker on the project's pool runs the flow runs waiting there, then stops."""
    worker = prefect(
        "worker", "start", "--pool", WORK_POOL, "--run-once", api=api, GDFLOW_DATA_DIR=str(data_dir)
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr


def artifacts_of(client: SyncPrefectClient, run_id: UUID, key: str) -> list[Artifact]:
    """The artifacts under `key` that one flow run published."""
    return client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
        flow_run_filter=FlowRunFilter(id={"any_": [run_id]}),
    )


@pytest.fixture(scope="module")
def deployments(prefect_api: str) -> dict[str, Deployment]:
    """prefect.yaml's deployments, created with `prefect deploy --all` as README says."""
    ensure_work_pool(prefect_api)
    result = prefect("--no-prompt", "deploy", "--all", api=prefect_api)
    assert result.returncode == 0, result.stdout + result.stderr
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["nightly", "tutorial", "sweep"])
            )
        )
    return {d.name: d for d in found}


def test_prefect_yaml_declares_nightly_tutorial_and_sweep_deployments(deployments) -> None:
    assert set(deployments) == {"nightly", "tutorial", "sweep"}
    nightly, tutorial, sweep = deployments["nightly"], deployments["tutorial"], deployments["sweep"]
    assert nightly.parameters == {"params": {"preset": "default", "seed_from_date": True}}
    assert tutorial.parameters == {
        "params": {"preset": "tutorial", "methods": ["bgd", "sgd"], "sgd_lr": 0.1}
    }
    assert sweep.parameters == {"params": {}}
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert sweep.entrypoint == "flows/sweep.py:gd_sweep"
    for d in deployments.values():
        if d.name != "sweep":
            assert d.entrypoint == "flows/comparison.py:gd_comparison"
        assert d.work_pool_name == WORK_POOL
        assert d.enforce_parameter_schema
        assert "params" in d.parameter_openapi_schema["properties"]
        (step,) = d.pull_steps
        directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
        assert Path(directory) == PROJECT_ROOT


@pytest.mark.parametrize(
    ("deployment", "bad", "named"),
    [
        ("gd-comparison/tutorial", {"epochs": 0}, "params.epochs"),
        ("gd-comparison/tutorial", {"epoch": 5}, "'epoch' was unexpected"),
        ("gd-sweep/sweep", {"lrs": [0.01, -1]}, "params.lrs"),
        ("gd-sweep/sweep", {"methods": ["sgd"]}, "'methods' was unexpected"),
    ],
)
def test_a_bad_parameter_is_refused_when_the_run_is_requested(
    deployments, prefect_api, deployment: str, bad: dict[str, Any], named: str
) -> None:
    result = prefect(
        "deployment", "run", deployment, "--param", f"params={json.dumps(bad)}", api=prefect_api
    )
    assert result.returncode == 1
    assert named in " ".join((result.stdout + result.stderr).split())
    target = deployments[deployment.split("/")[1]]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id={"any_": [target.id]})
        )
    assert runs == []


def test_a_scheduled_run_is_executed_by_a_worker(deployments, prefect_api, tmp_path) -> None:
    nightly = deployments["nightly"]
    with get_client(sync_client=True) as client:
        # what the scheduler creates for each occurrence: a Scheduled run of the deployment
        scheduled = client.create_flow_run_from_deployment(nightly.id, tags=["auto-scheduled"])
    run_worker_once(prefect_api, tmp_path)

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(scheduled.id)
        artifacts = artifacts_of(client, run.id, "gd-comparison")
        logs = [
            log.message
            for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
        ]
    assert run.state_name == "Completed", run.state
    assert re.fullmatch(r"default-n100-e20-bgd\+sgd\+minibatch-[0-9a-f]{6}", run.name)
    assert {"auto-scheduled", "nightly", "preset:default"} <= set(run.tags)
    (artifact,) = artifacts
    assert "data:image/png;base64," in artifact.data
    assert any(m.startswith("Dataset: 100 rows, sha256 ") and "generated" in m for m in logs)
    for method in ("bgd", "sgd", "minibatch"):
        assert any(m.startswith(f"{method}: final loss") for m in logs), method
    assert list((tmp_path / "reports").glob("default-*/comparison.png"))


def test_a_sweep_split_by_seed_runs_on_a_worker(deployments, prefect_api, tmp_path) -> None:
    params = {"seeds": [3], "lrs": [0.01, 0.02], "batch_sizes": [1, 10], "n_samples": 200}
    with get_client(sync_client=True) as client:
        requested = client.create_flow_run_from_deployment(
            deployments["sweep"].id, parameters={"params": params}
        )
    run_worker_once(prefect_api, tmp_path)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(requested.id)
        artifacts = artifacts_of(client, run.id, "gd-sweep-cells")
    assert run.state_name == "Completed", run.state
    (cells,) = artifacts
    assert len(json.loads(cells.data)) == 4  # 2 step sizes x 2 batch sizes x 1 seed
    assert list((tmp_path / "reports").glob("sweep-*/sweep.png"))


def _as_the_ui_submits(deployment: Deployment) -> dict[str, Any]:
    """The parameters the UI's run form submits unchanged: the deployment's values, and for
    every other field of the flow's parameter model the default its schema shows."""
    schema = deployment.parameter_openapi_schema
    name = schema["properties"]["params"]["anyOf"][0]["$ref"].rsplit("/", 1)[1]
    fields = schema["definitions"][name]["properties"]
    given = deployment.parameters["params"]
    shown = {k: given.get(k, field.get("default")) for k, field in fields.items()}
    return {"params": {k: v for k, v in shown.items() if v is not None}}


@pytest.mark.parametrize(("name", "sgd_diverges"), [("tutorial", True), ("nightly", False)])
def test_the_ui_form_submitted_unchanged_runs_the_preset(
    deployments, prefect_api, tmp_path, name: str, sgd_diverges: bool
) -> None:
    deployment = deployments[name]
    submitted = _as_the_ui_submits(deployment)
    with get_client(sync_client=True) as client:  # the server checks them against the schema
        requested = client.create_flow_run_from_deployment(deployment.id, parameters=submitted)
        client.delete_flow_run(requested.id)  # no worker is to run it: it is run here, below
    params = RunParams.model_validate({**submitted["params"], "data_dir": str(tmp_path)})
    assert params == RunParams(**{**deployment.parameters["params"], "data_dir": str(tmp_path)})
    result = gd_comparison(params=params)
    assert result.methods["sgd"].diverged is sgd_diverges
    if name == "tutorial":
        assert set(result.methods) == {"bgd", "sgd"}


def test_each_preset_deployment_spells_out_what_its_preset_sets(deployments) -> None:
    for deployment in deployments.values():
        given = deployment.parameters["params"]
        if "preset" in given:
            wanted = RunParams(preset=given["preset"]).model_dump(mode="json")
            assert {k: given[k] for k in PRESETS[given["preset"]]} == {
                k: wanted[k] for k in PRESETS[given["preset"]]
            }


def test_two_nights_of_the_nightly_deployment_draw_two_data_sets_and_a_trend(
    deployments, prefect_api, tmp_path
) -> None:
    nightly = deployments["nightly"]
    nights = [datetime(2026, 11, 30, 2, tzinfo=UTC), datetime(2026, 12, 1, 2, tzinfo=UTC)]
    for night in nights:  # as the scheduler makes them, one a night, and a worker runs it
        with get_client(sync_client=True) as client:
            scheduled = Scheduled(scheduled_time=night)
            client.create_flow_run_from_deployment(nightly.id, state=scheduled)
        run_worker_once(prefect_api, tmp_path)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id={"any_": [nightly.id]}),
        )
        trend = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gd-trend-nightly"]))
        )
    done = [r for r in runs if r.expected_start_time in nights]
    assert sorted(r.state_name for r in done) == ["Completed", "Completed"]
    datasets = sorted((tmp_path / "datasets").glob("synthetic-*.parquet"))
    seeds = sorted(json.loads(pq.read_schema(p).metadata[b"gdflow.param.seed"]) for p in datasets)
    assert seeds == [20261130, 20261201]
    # the trend's newest two versions: each night adds one row per method (earlier tests of this
    # module ran the deployment too, so the first of them may hold more than one)
    newest = sorted(trend, key=lambda a: a.created)[-2:]
    counts = []
    for artifact in newest:
        lines = artifact.data.split("\n")
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        counts.append([sum(len(r) > 2 and r[2] == m for r in cells) for m in METHODS])
    assert counts[1] == [n + 1 for n in counts[0]], counts
    assert min(counts[0]) >= 1, counts
