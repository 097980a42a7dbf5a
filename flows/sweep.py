"""The sweep flow: one training per step size x batch size x seed, in batches fanned out on a
task runner."""

from __future__ import annotations

import logging
import os
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.errors import InputError
from tasks.params import SweepParams
from tasks.paths import resolve_data_dir
from tasks.policies import in_data_dir, time_box, time_limit
from tasks.steps.data import generate_dataset
from tasks.steps.reports import SweepReport, publish_sweep
from tasks.steps.training import train_cells

_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/:]+:\d+$")
# Task runs per worker thread that trains cells: enough to even out cells of unequal work.
BATCHES_PER_SLOT = 2


class SweepResult(SweepReport):
    """What a sweep returns: its report, how many cells came from the cache, the flow run's name
    and the data directory."""

    flow_run_name: str
    cached: int
    data_dir: str


def _run_name() -> str:
    params = SweepParams.model_validate(flow_run.parameters.get("params") or {})
    shape = f"{len(params.lrs)}x{len(params.batch_sizes)}x{len(params.seeds)}"
    return f"sweep-n{params.n_samples}-e{params.epochs}-{shape}-{flow_run.id[:6]}"


def _slots() -> int:
    """How many cells can train at once: the Dask cluster's worker threads (at least 1: a
    cluster may gain its workers later), else CPU cores."""
    client = getattr(FlowRunContext.get().task_runner, "client", None)  # a Dask runner's
    slots = sum(client.nthreads().values()) if client is not None else os.cpu_count()
    return slots or 1


# As gd_comparison: each stage has a time limit sized from its work, no retries.
@flow(name="gd-sweep", flow_run_name=_run_name, persist_result=False)
def gd_sweep(params: SweepParams | None = None) -> SweepResult:
    """Train every step size x batch size x seed and publish where each converges."""
    params = params or SweepParams()
    data_dir = resolve_data_dir(params.data_dir)
    cells = params.cells()

    # 1. one data set per seed, generated concurrently (or read from the cache)
    with time_box(time_limit(params.n_samples * len(params.seeds)), "generating the data"):
        generate = in_data_dir(generate_dataset, data_dir, params.refresh)
        pending = {
            seed: generate.submit(params.data_spec(seed), str(data_dir)) for seed in params.seeds
        }
        datasets = {seed: run.result() for seed, run in pending.items()}
    # 2. the cells in a few batches per worker, each cell cached on its own (train_cells)
    count = min(len(cells), BATCHES_PER_SLOT * _slots())
    batches = [cells[i::count] for i in range(count)]  # interleaved: similar in their work
    everything = time_limit(params.n_samples * len(cells), params.epochs, params.engine)
    with time_box(everything, "training the cells"):
        runs = [
            train_cells.with_options(
                task_run_name=f"train-{len(batch)}-cells-{i + 1}of{count}",
                timeout_seconds=time_limit(
                    params.n_samples * len(batch), params.epochs, params.engine
                ),
            ).submit(
                [
                    (c.label, datasets[c.seed], params.method_spec(c.lr, c.batch_size))
                    for c in batch
                ],
                str(data_dir),
                params.refresh,
            )
            for i, batch in enumerate(batches)
        ]
        done = [run.result() for run in runs]
    outcomes = [done[i % count][i // count] for i in range(len(cells))]
    results = [outcome.result for outcome in outcomes]
    reused = sum(outcome.cached for outcome in outcomes)
    get_run_logger().info("%d runs, %d of them from the cache", len(cells), reused)
    # 3. the heat map, tables and artifacts (its task has its own limit)
    publish = publish_sweep.with_options(timeout_seconds=time_limit(len(cells), params.epochs + 1))
    report = publish(cells, results, datasets, params, str(data_dir))
    return SweepResult(
        **report.model_dump(), flow_run_name=flow_run.name, cached=reused, data_dir=str(data_dir)
    )


def check_scheduler(address: str, timeout_s: float = 5.0) -> None:
    """Refuse an address that is not tcp://HOST:PORT (or tls://) or where nothing answers."""
    if not _ADDRESS.match(address):
        raise InputError(
            f"invalid --dask-address {address!r}; give the scheduler as tcp://HOST:PORT"
        )
    parts = urlsplit(address)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout_s).close()
    except OSError as exc:
        raise InputError(
            f"no Dask scheduler answers at {address} ({exc.strerror or exc}); "
            "start one with `dask scheduler` or fix --dask-address"
        ) from None


def task_runner(
    dask: bool = False, address: str | None = None, workers: int | None = None
) -> TaskRunner:
    """Threads in this process, or Dask: the cluster at `address`, else a new local one.

    A local cluster has `workers` single-threaded worker processes (default: one per CPU core).
    """
    if workers is not None and (address is not None or not dask):
        raise InputError("--dask-workers sizes the local cluster of --dask: use it with --dask")
    if workers is not None and workers < 1:
        raise InputError(f"--dask-workers must be at least 1 (got {workers}); give 1 or more")
    if address is None and not dask:
        return ThreadPoolTaskRunner()
    if address is not None:
        check_scheduler(address)
    try:
        from prefect_dask import DaskTaskRunner  # the optional extra gdflow[dask]
    except ImportError:
        raise InputError(
            "--dask needs gdflow's dask extra (prefect-dask, distributed); "
            "install it with: pip install -e '.[dask]'"
        ) from None
    # Keep Dask's warnings but not its INFO chatter about starting and stopping workers.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read by worker processes
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if address is not None:
        return DaskTaskRunner(address=address)
    cluster = dict(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    return DaskTaskRunner(cluster_kwargs=cluster)


def run_sweep(params: SweepParams, runner: TaskRunner) -> Any:
    """Run the sweep flow on `runner` and return its final state."""
    return gd_sweep.with_options(task_runner=runner)(params=params, return_state=True)
