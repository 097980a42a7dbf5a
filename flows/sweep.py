"""The sweep flow: one training task per step size x batch size x seed, fanned out on a runner."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.common import cached
from tasks.dataset import DatasetRef
from tasks.fitting import history_path, train_method
from tasks.generation import generate_dataset
from tasks.params import SweepParams
from tasks.paths import dataset_path, resolve_data_dir
from tasks.sweeping import grid, publish_sweep

_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/:]+:\d+$")


def _run_name() -> str:
    params = flow_run.parameters.get("params")
    if not isinstance(params, SweepParams):
        params = SweepParams.model_validate(params or {})
    shape = f"{len(params.lrs)}x{len(params.batch_sizes)}x{len(params.seeds)}"
    return f"sweep-n{params.n_samples}-e{params.epochs}-{shape}"


def _datasets(params: SweepParams, data_dir: Path) -> list[DatasetRef]:
    """One data set per seed, generated concurrently (or read from the cache)."""
    futures = []
    for seed in params.seeds:
        spec = params.data_spec(seed)
        generate = cached(generate_dataset, data_dir, dataset_path(data_dir, spec), params.refresh)
        futures.append(generate.submit(spec, str(data_dir)))
    return [f.result() for f in futures]


@flow(name="gd-sweep", flow_run_name=_run_name, persist_result=False)
def gd_sweep(params: SweepParams | None = None) -> dict[str, Any]:
    """Train every step size x batch size x seed and publish where each converges."""
    params = params or SweepParams()
    logger = get_run_logger()
    data_dir = resolve_data_dir(params.data_dir)
    datasets = dict(zip(params.seeds, _datasets(params, data_dir), strict=True))

    cells = grid(params)
    futures = []
    for cell in cells:
        dataset = datasets[cell.seed]
        spec = params.method_spec(cell.lr, cell.batch_size)
        output = history_path(data_dir, dataset, spec)
        trainer = cached(train_method, data_dir, output, params.refresh).with_options(
            task_run_name=f"train-{cell.label}"
        )
        futures.append(trainer.submit(dataset, spec, str(data_dir)))
    histories = [f.result() for f in futures]
    reused = sum(f.state.name == "Cached" for f in futures)
    logger.info("%d runs, %d of them from the cache", len(cells), reused)

    report = publish_sweep(cells, histories, list(datasets.values()), params, str(data_dir))
    return {
        "datasets": {str(seed): d.file.path for seed, d in datasets.items()},
        "cells": len(cells),
        "cached": reused,
        "diverged": report.diverged,
        "best": report.best,
        "figure": report.figure,
        "figure_svg": report.figure_svg,
        "histories": report.histories,
        "data_dir": str(data_dir),
    }


def task_runner(
    dask: bool = False, address: str | None = None, workers: int | None = None
) -> TaskRunner:
    """Threads in this process, or Dask: the cluster at `address`, else a new local one.

    A local cluster has `workers` single-threaded worker processes (default: one per CPU core).
    """
    if workers is not None and (address is not None or not dask):
        raise ValueError("--dask-workers sizes the local cluster of --dask: use it with --dask")
    if workers is not None and workers < 1:
        raise ValueError(f"--dask-workers must be at least 1 (got {workers})")
    if address is None and not dask:
        return ThreadPoolTaskRunner()
    if address is not None:
        check_scheduler(address)
    _quiet_dask_logs()
    from prefect_dask import DaskTaskRunner

    if address is not None:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": ":0",
        }
    )


def _quiet_dask_logs() -> None:
    """Keep Dask's warnings but not its INFO chatter about starting and stopping workers."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read by worker processes
    logging.getLogger("distributed").setLevel(logging.WARNING)


def check_scheduler(address: str, timeout_s: float = 5.0) -> None:
    """Raise ValueError unless `address` is tcp://HOST:PORT (or tls://) and accepts connections."""
    if not _ADDRESS.match(address):
        raise ValueError(f"--dask-address {address!r}: expected tcp://HOST:PORT")
    parts = urlsplit(address)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ValueError(
            f"no Dask scheduler answers at {address} ({exc.strerror or exc}); "
            "start one with `dask scheduler` or fix --dask-address"
        ) from None


@contextlib.contextmanager
def shared_api() -> Iterator[str]:
    """A Prefect API URL that worker processes can reach: the configured one, else a local server.

    Without PREFECT_API_URL every process would start its own temporary server; Dask workers
    get the URL through the settings that prefect-dask sends along with each task.
    """
    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server.api_url


def run_sweep(params: SweepParams, runner: TaskRunner) -> Any:
    """Run the sweep flow on `runner` and return its final state."""
    if isinstance(runner, ThreadPoolTaskRunner):
        return gd_sweep(params=params, return_state=True)
    with shared_api():
        return gd_sweep.with_options(task_runner=runner)(params=params, return_state=True)
