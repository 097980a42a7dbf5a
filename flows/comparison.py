"""The comparison flow: data -> one training task per method -> figure and artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import State, flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from flows.common import cached
from tasks.datafile import stat_source
from tasks.dataset import DatasetRef, chunk_sizes
from tasks.fitting import history_path, train_method
from tasks.generation import generate_dataset
from tasks.normal import uses_torch
from tasks.params import RunParams
from tasks.paths import dataset_path, resolve_data_dir
from tasks.publishing import publish_report
from tasks.userdata import load_user_data, user_dataset_path


def _run_name() -> str:
    params = flow_run.parameters.get("params")
    if not isinstance(params, RunParams):
        params = RunParams.model_validate(params or {})
    data = Path(params.data).stem if params.data else f"n{params.n_samples}"
    methods = "+".join(m.value for m in params.methods)
    return f"{params.preset}-{data}-e{params.epochs}-{methods}"


def warm_up(params: RunParams) -> None:
    """Load what a run of `params` will need, ahead of it: the numba kernels, matplotlib, and
    torch when the synthetic data set is not on disk yet and its generation needs torch.

    Meant for time the process would otherwise spend waiting (a temporary server booting in
    its own process); loading takes the same time later if it is skipped.
    """
    from tasks import kernels
    from tasks.reporting import load_matplotlib

    spec = params.data_spec()
    if (
        not params.data
        and not dataset_path(resolve_data_dir(params.data_dir), spec).exists()
        and uses_torch(chunk_sizes(spec))
    ):
        import torch  # noqa: F401  (generation needs it)
    kernels.warm_up(params.dtype)
    load_matplotlib()


def _tag_run(tag: str) -> None:
    """Add `tag` to this flow run, however it was started (CLI, deployment, schedule)."""
    if tag not in flow_run.tags:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=[*flow_run.tags, tag])


def _dataset(params: RunParams, data_dir: Path) -> State[DatasetRef]:
    """The user's file copied in (params.data), else the synthetic data set; cached."""
    if params.data:
        source = stat_source(params.data)
        stored = user_dataset_path(data_dir, source, params.x_col, params.y_col)
        load = cached(load_user_data, data_dir, stored, params.refresh)
        return load(source, params.x_col, params.y_col, str(data_dir), return_state=True)
    spec = params.data_spec()
    generate = cached(generate_dataset, data_dir, dataset_path(data_dir, spec), params.refresh)
    return generate(spec, str(data_dir), return_state=True)


@flow(name="gd-comparison", flow_run_name=_run_name, persist_result=False)
def gd_comparison(params: RunParams | None = None) -> dict[str, Any]:
    """Compare batch, stochastic and mini-batch gradient descent on one data set."""
    params = params or RunParams()
    logger = get_run_logger()
    data_dir = resolve_data_dir(params.data_dir)

    _tag_run(f"preset:{params.preset}")

    state = _dataset(params, data_dir)
    dataset = state.result()
    origin = "cached" if state.name == "Cached" else "copied in" if params.data else "generated"
    logger.info(
        "Dataset: %s rows, sha256 %s, %s (%s)",
        f"{dataset.file.rows:,}",
        dataset.file.sha256[:12],
        origin,
        dataset.source,
    )

    futures = []
    for method in params.methods:
        method_spec = params.method_spec(method, dataset.file.rows)
        output = history_path(data_dir, dataset, method_spec)
        trainer = cached(train_method, data_dir, output, params.refresh).with_options(
            task_run_name=f"train-{method.value}-lr{method_spec.lr:g}"
        )
        futures.append(trainer.submit(dataset, method_spec, str(data_dir)))
    histories = [f.result() for f in futures]

    report = publish_report(dataset, histories, params, str(data_dir))
    return {
        "dataset": {
            "path": dataset.file.path,
            "sha256": dataset.file.sha256,
            "rows": dataset.file.rows,
            "source": dataset.source,
        },
        "methods": {h.method: h.model_dump(mode="json") for h in histories},
        "figure": report.figure,
        "figure_svg": report.figure_svg,
        "summary": report.summary,
        "data_dir": str(data_dir),
    }
