"""The comparison flow: data -> one training task per method -> figure and artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.locking.filesystem import FileSystemLockManager
from prefect.runtime import flow_run
from prefect.transactions import IsolationLevel

from tasks.caching import STABLE_INPUTS
from tasks.dataset import dataset_path, generate_dataset
from tasks.fitting import history_path, train_method
from tasks.params import RunParams
from tasks.paths import cache_dir, locks_dir, resolve_data_dir
from tasks.publishing import publish_report
from tasks.storage import is_intact


def _run_name() -> str:
    params = flow_run.parameters.get("params")
    if not isinstance(params, RunParams):
        params = RunParams.model_validate(params or {})
    methods = "+".join(m.value for m in params.methods)
    return f"{params.preset}-n{params.n_samples}-e{params.epochs}-{methods}"


def _cached(task: Any, data_dir: Path, output: Path, refresh: bool) -> Any:
    """The task with result storage and locks under `data_dir`; refreshed if its file is gone."""
    policy: CachePolicy = STABLE_INPUTS.configure(
        lock_manager=FileSystemLockManager(lock_files_directory=locks_dir(data_dir)),
        isolation_level=IsolationLevel.SERIALIZABLE,
    )
    return task.with_options(
        cache_policy=policy,
        result_storage=cache_dir(data_dir),
        refresh_cache=refresh or not is_intact(output),
    )


@flow(name="gd-comparison", flow_run_name=_run_name, persist_result=False)
def gd_comparison(params: RunParams | None = None) -> dict[str, Any]:
    """Compare batch, stochastic and mini-batch gradient descent on one data set."""
    params = params or RunParams()
    logger = get_run_logger()
    data_dir = resolve_data_dir(params.data_dir)
    spec = params.data_spec()

    dataset_file = dataset_path(data_dir, spec)
    regenerate = params.refresh or not is_intact(dataset_file)
    dataset = _cached(generate_dataset, data_dir, dataset_file, regenerate)(spec, str(data_dir))
    logger.info(
        "Dataset: %s rows, sha256 %s (%s)",
        f"{dataset.file.rows:,}",
        dataset.file.sha256[:12],
        dataset.source,
    )

    futures = []
    for method in params.methods:
        method_spec = params.method_spec(method)
        output = history_path(data_dir, dataset, method_spec)
        trainer = _cached(train_method, data_dir, output, params.refresh).with_options(
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
