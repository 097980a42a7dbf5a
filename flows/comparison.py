"""The comparison flow: the data, one training per method, then the figure and artifacts."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from flows.trend import publish_run_trend
from tasks.data.dataset import DatasetRef
from tasks.data.userfile import stat_source
from tasks.params import MAX_SAMPLES, RunParams
from tasks.paths import resolve_data_dir
from tasks.policies import REPORT_LIMIT_S, in_data_dir, time_box, time_limit
from tasks.steps.data import generate_dataset, load_user_data
from tasks.steps.reports import RunReport, publish_report
from tasks.steps.training import train_method


class RunResult(RunReport):
    """What a comparison run returns: its report, the flow run's name and the data directory."""

    flow_run_name: str
    data_dir: str


def _run_name() -> str:
    """The run's key parameters and a short id: two runs of the same parameters differ."""
    params = RunParams.model_validate(flow_run.parameters.get("params") or {})
    data = Path(params.data).stem if params.data else f"n{params.n_samples}"
    methods = "+".join(m.value for m in params.methods)
    return f"{params.preset}-{data}-e{params.epochs}-{methods}-{flow_run.id[:6]}"


def _tag_run(params: RunParams) -> None:
    """Tag this flow run with its preset, methods and data source, however it was started
    (CLI, deployment, schedule)."""
    tags = [f"preset:{params.preset}", *(f"method:{m.value}" for m in params.methods)]
    tags.append("data:file" if params.data else "data:synthetic")
    missing = [tag for tag in tags if tag not in flow_run.tags]
    if missing:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=[*flow_run.tags, *missing])


def prepare_data(params: RunParams, data_dir: Path) -> DatasetRef:
    """The user's file copied in (params.data), else the synthetic data set; cached."""
    if params.data:
        load = in_data_dir(load_user_data, data_dir, params.refresh)
        source = stat_source(params.data)
        state = load(source, params.x_col, params.y_col, str(data_dir), return_state=True)
    else:
        generate = in_data_dir(generate_dataset, data_dir, params.refresh)
        state = generate(params.data_spec(), str(data_dir), return_state=True)
    dataset = state.result()
    origin = "cached" if state.name == "Cached" else "copied in" if params.data else "generated"
    get_run_logger().info(
        "Dataset: %s rows, sha256 %s, %s (%s)",
        f"{dataset.file.rows:,}",
        dataset.file.sha256[:12],
        origin,
        dataset.source,
    )
    return dataset


# Each stage has a time limit sized from its work (time_box), as each task has. No retries: a
# failed run is looked at.
@flow(name="gd-comparison", flow_run_name=_run_name, persist_result=False)
def gd_comparison(params: RunParams | None = None) -> RunResult:
    """Compare batch, stochastic and mini-batch gradient descent on one data set."""
    params = params or RunParams()
    if params.seed_from_date:
        night = flow_run.scheduled_start_time.astimezone(UTC)
        params = params.model_copy(update={"seed": int(night.strftime("%Y%m%d"))})
    data_dir = resolve_data_dir(params.data_dir)
    _tag_run(params)

    # 1. the data: generated, or the user's file copied in (its size is known once it is read)
    rows = MAX_SAMPLES if params.data else params.n_samples
    with time_box(time_limit(rows, passes=2), "preparing the data"):
        dataset = prepare_data(params, data_dir)
    limit = time_limit(dataset.file.rows, params.epochs, params.engine)  # the run's own size
    with time_box(limit + REPORT_LIMIT_S + time_limit(0), "training and publishing"):
        # 2. one training per method, concurrently
        train = in_data_dir(train_method, data_dir, params.refresh)
        train = train.with_options(timeout_seconds=limit)
        specs = [params.method_spec(method, dataset.file.rows) for method in params.methods]
        runs = [train.submit(dataset, spec, str(data_dir)) for spec in specs]
        results = [run.result() for run in runs]
        # 3. the figure, tables and artifacts
        report = publish_report(dataset, results, params, str(data_dir))
        # 4. this run's results on the server, and the trend of the last runs like it
        publish_run_trend(dataset, report, params)
    return RunResult(**report.model_dump(), flow_run_name=flow_run.name, data_dir=str(data_dir))
