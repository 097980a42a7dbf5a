"""Prefect's own operations for gdflow: retries, the divergence event, the automation, schedules
and concurrency limits, each checked against a real Prefect server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, DeploymentStatus
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.states import Failed
from prefect.task_engine import TaskRunTimeoutError

from flows.comparison import gd_comparison
from flows.serving import ensure_work_pool
from tasks.errors import CorruptFileError, InputError
from tasks.params import RunParams
from tasks.paths import PROJECT_ROOT
from tasks.policies import is_transient
from tasks.steps.data import generate_dataset, load_user_data
from tasks.steps.training import DIVERGED_EVENT, train_method
from tests.system.test_deployment import prefect
from tests.system.test_serving import start_gdflow, stop, wait_for

AUTOMATION_FILE = PROJECT_ROOT / "automations" / "diverged-or-failed.yaml"


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConnectionResetError("connection reset by peer"), True),
        (OSError("stale file handle"), True),
        (InputError("data file x.parquet has no column 'x'; choose one with --x-col"), False),
        (CorruptFileError("data/datasets/a.parquet does not match its hash"), False),
        (TaskRunTimeoutError("the task ran out its time"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_transient_io_errors_are_retried(error: Exception, retried: bool) -> None:
    assert is_transient(load_user_data, None, Failed(data=error)) is retried


def test_io_tasks_retry_and_numeric_work_does_not() -> None:
    assert load_user_data.retries > 0
    assert load_user_data.retry_condition_fn is is_transient
    assert generate_dataset.retries == 0
    assert train_method.retries == 0


@pytest.mark.usefixtures("prefect_api")
def test_prefect_retries_an_os_error_but_not_bad_input() -> None:
    calls: list[type[Exception]] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=is_transient)
    def flaky(error: type[Exception]) -> str:
        calls.append(error)
        if len(calls) == 1:
            raise error("the first try fails")
        return "done"

    @flow
    def run(error: type[Exception]) -> Any:
        return flaky(error, return_state=True)

    assert run(OSError, return_state=True).is_completed()
    assert calls == [OSError, OSError]
    calls.clear()
    assert run(InputError, return_state=True).is_failed()
    assert calls == [InputError]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_diverged_method_emits_an_event_about_its_flow_run(tmp_path: Path) -> None:
    state = gd_comparison(
        params=RunParams(preset="tutorial", data_dir=str(tmp_path)), return_state=True
    )
    report = state.result()
    assert report.methods["sgd"].diverged
    assert not report.methods["bgd"].diverged
    run_id = str(state.state_details.flow_run_id)
    of_this_run = EventFilter(
        event=EventNameFilter(name=[DIVERGED_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
    )
    with get_client(sync_client=True) as client:
        (event,) = wait_for(
            lambda: client.read_events(filter=of_this_run, limit=10).events,
            "the diverged event",
            60,
        )
    sgd = report.methods["sgd"]
    assert event.payload == {
        "method": "sgd",
        "lr": 0.1,
        "stability_bound": sgd.stability_bound,
        "reason": sgd.reason,
    }
    assert event.payload["lr"] > event.payload["stability_bound"]
    roles = {r.role: r for r in event.related}
    assert roles["task-run"].id.startswith("prefect.task-run.")
    assert roles["flow"]["prefect.resource.name"] == "gd-comparison"


@pytest.mark.slow
def test_the_automation_file_creates_an_automation(prefect_api: str) -> None:
    result = prefect("automation", "create", "--from-file", str(AUTOMATION_FILE), api=prefect_api)
    assert result.returncode == 0, result.stdout + result.stderr
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name("gdflow-diverged-or-failed")
        client.delete_automation(automation.id)
    assert automation.enabled
    assert automation.trigger.expect == {DIVERGED_EVENT, "prefect.flow-run.Failed"}
    assert automation.trigger.match_related.model_dump() == {
        "prefect.resource.role": "flow",
        "prefect.resource.name": "gd-comparison",
    }
    assert [action.type for action in automation.actions] == ["do-nothing"]


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "paused"), [("--no-pause-on-shutdown", False), (None, True)])
def test_serve_takes_several_schedules_and_pauses_them_unless_asked_not_to(
    prefect_api: str, tmp_path: Path, flag: str | None, paused: bool
) -> None:
    name = f"two-schedules-{paused}".lower()
    options = ["--cron", "0 2 * * *", "--cron", "30 14 * * 1-5", "--interval", "3600"]
    log = tmp_path / "serve.log"
    serving = start_gdflow(
        "serve", *options, *([flag] if flag else []), "--name", name, "--data-dir", str(tmp_path),
        log=log, PREFECT_API_URL=prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1",
    )  # fmt: skip
    by_name = DeploymentFilter(name=DeploymentFilterName(any_=[name]))

    def polled() -> list[Any]:  # the deployment, once its runner asks for work: it has started
        found = client.read_deployments(deployment_filter=by_name)
        return [d for d in found if d.status == DeploymentStatus.READY]

    try:
        with get_client(sync_client=True) as client:
            (deployment,) = wait_for(polled, "the deployment, served")
    finally:
        code = stop(serving)
    assert code == 0, log.read_text()[-3000:]
    schedules = [s.schedule for s in deployment.schedules]
    assert sorted(s.cron for s in schedules if hasattr(s, "cron")) == ["0 2 * * *", "30 14 * * 1-5"]
    assert [s.interval.total_seconds() for s in schedules if hasattr(s, "interval")] == [3600]
    assert {s.timezone for s in schedules} == {"UTC"}
    with get_client(sync_client=True) as client:
        (after,) = client.read_deployments(deployment_filter=by_name)
    assert after.paused is paused


def _scheduled(deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in deployments if d.get("schedules")]


def test_prefect_yaml_limits_each_scheduled_deployment_to_one_run() -> None:
    declared = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    assert _scheduled(declared)
    for deployment in _scheduled(declared):
        assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
        assert all(schedule.get("timezone") for schedule in deployment["schedules"])


@pytest.mark.slow
def test_the_deployed_nightly_run_has_its_concurrency_limit(prefect_api: str) -> None:
    ensure_work_pool(prefect_api)
    result = prefect("--no-prompt", "deploy", "--name", "nightly", api=prefect_api)
    assert result.returncode == 0, result.stdout + result.stderr
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("gd-comparison/nightly")
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
