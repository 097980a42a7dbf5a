"""Scheduled use end to end: prefect.yaml deployed to a real server, a run executed by a worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

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

from flows.serving import WORK_POOL, ensure_work_pool
from tasks.paths import PROJECT_ROOT

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
    assert nightly.parameters == {"params": {"preset": "default"}}
    assert tutorial.parameters == {"params": {"preset": "tutorial"}}
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
