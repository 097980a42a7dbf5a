"""`gdflow server` and `gdflow serve` as a user runs them: real processes, a real scheduler."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
)

from flows.serving import WORK_POOL, api_is_up, deployment_parameters, local_server
from tasks.params import RunParams
from tests.processes import free_port


def start_gdflow(*args: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


def gdflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 150.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`gdflow server` on a free port with a fresh Prefect home; yields (UI address, its log)."""
    home = tmp_path_factory.mktemp("server")
    address = f"http://127.0.0.1:{free_port()}"
    log = home / "server.log"
    process = start_gdflow(
        "server", "--port", address.rsplit(":", 1)[1], log=log, PREFECT_HOME=str(home)
    )
    try:
        wait_for(lambda: f"Prefect UI: {address}" in log.read_text(), "the server's UI address")
        yield address, log
    finally:
        code = stop(process)
    assert code == 0, log.read_text()


@pytest.mark.slow
def test_server_prints_its_ui_and_creates_the_work_pool(server) -> None:
    address, log = server
    text = log.read_text()
    assert f"export PREFECT_API_URL={address}/api" in text
    with SyncPrefectClient(f"{address}/api") as client:
        assert client.read_work_pool(WORK_POOL).type == "process"


@pytest.mark.slow
def test_server_refuses_a_port_in_use(server) -> None:
    address, _ = server
    result = gdflow("server", "--port", address.rsplit(":", 1)[1])
    assert result.returncode == 2
    assert result.stderr.startswith("gdflow: error: port ")
    assert "--port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_serve_schedules_the_flow_and_runs_it(server, tmp_path) -> None:
    address, _ = server
    api = f"{address}/api"
    log = tmp_path / "serve.log"
    serving = start_gdflow(
        "serve", "--interval", "3600", "--preset", "tutorial", "--epochs", "30",
        "--data-dir", str(tmp_path), "--name", "hourly",
        log=log, PREFECT_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY="1",
    )  # fmt: skip
    try:
        with SyncPrefectClient(api) as client:
            by_name = DeploymentFilter(name=DeploymentFilterName(any_=["hourly"]))
            (deployment,) = wait_for(
                lambda: client.read_deployments(deployment_filter=by_name), "the deployment"
            )
            of_deployment = FlowRunFilter(deployment_id={"any_": [deployment.id]})
            # the server's scheduler books the coming occurrences
            upcoming = wait_for(
                lambda: client.read_flow_runs(flow_run_filter=of_deployment), "scheduled runs"
            )
            # one due now, as the scheduler books it when its time comes
            due = client.create_flow_run_from_deployment(deployment.id, tags=["auto-scheduled"])
            run = wait_for(
                lambda: (r := client.read_flow_run(due.id)).state.is_final() and r,
                "the due run to finish",
            )
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gd-comparison"])),
                flow_run_filter=FlowRunFilter(id={"any_": [run.id]}),
            )
    finally:
        code = stop(serving)
    assert code == 0, log.read_text()[-3000:]
    assert run.state_name == "Completed", log.read_text()[-3000:]
    assert re.fullmatch(r"tutorial-n100-e30-bgd\+sgd-[0-9a-f]{6}", run.name)
    assert {"auto-scheduled", "served", "preset:tutorial"} <= set(run.tags)
    tutorial = {"preset": "tutorial", "methods": ["bgd", "sgd"], "sgd_lr": 0.1}  # its preset's
    assert deployment.parameters == {
        "params": {**tutorial, "epochs": 30, "data_dir": str(tmp_path)}
    }
    assert deployment.schedules[0].schedule.interval.total_seconds() == 3600
    waits = sorted(
        (r.expected_start_time - deployment.created).total_seconds()
        for r in upcoming
        if r.state_name == "Scheduled"
    )
    assert waits, [r.state_name for r in upcoming]
    assert 3500 < waits[0] < 3700
    assert len(artifacts) == 1
    assert list(tmp_path.glob("reports/tutorial-*/comparison.png"))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--interval", "0"], "--interval"),
        (["--cron", "every night"], "--cron"),
        (["--interval", "60", "--interval", "-1"], "--interval"),
        (["--cron", "0 2 * * *", "--epochs", "0"], "--epochs"),
    ],
)
def test_serve_refuses_bad_options_in_one_line(args: list[str], named: str) -> None:
    result = gdflow("serve", *args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gdflow: error:")
    assert named in line


def test_serve_and_run_say_how_to_reach_a_server() -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    for command in (["run"], ["serve", "--cron", "0 2 * * *"]):
        result = gdflow(*command, PREFECT_API_URL=dead)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert f"no Prefect server answers at PREFECT_API_URL={dead}" in line, command
        assert "gdflow server" in line


def test_deployment_parameters_are_the_options_given_and_the_presets(monkeypatch) -> None:
    monkeypatch.chdir("/")
    given = {"preset": "tutorial", "sgd_lr": "0.02", "data_dir": "tmp/x"}
    params = RunParams.model_validate(given)
    # the fields the preset sets are spelled out (the UI's form shows them), paths made absolute
    assert deployment_parameters(params, given) == {
        "params": {
            "preset": "tutorial",
            "methods": ["bgd", "sgd"],
            "sgd_lr": 0.02,
            "data_dir": "/tmp/x",
        }
    }
    assert deployment_parameters(RunParams(), {}) == {"params": {}}


@pytest.mark.slow
def test_a_local_server_answers_while_in_use_and_is_gone_after(capfd) -> None:
    with local_server() as api:
        assert api.startswith("http://127.0.0.1:")
        assert api.endswith("/api")
        assert api_is_up(api)
        with SyncPrefectClient(api) as client:
            assert client.api_healthcheck() is None  # None: healthy
    assert not api_is_up(api, timeout=1.0)
    out, _ = capfd.readouterr()
    assert out == ""  # the server's banner and logs stay off this command's stdout
