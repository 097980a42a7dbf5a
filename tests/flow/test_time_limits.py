"""A flow run's stages end TimedOut past their time limits, even when their tasks never start."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import LocalCluster
from prefect_dask import DaskTaskRunner

import flows.comparison
import flows.sweep
from flows.comparison import gd_comparison
from flows.sweep import run_sweep
from tasks.errors import RunTimeout
from tasks.params import RunParams, SweepParams

LIMIT_S = 3.0


@pytest.fixture
def no_workers() -> Iterator[DaskTaskRunner]:
    """A real Dask scheduler that has lost all its workers: a task sent there never starts."""
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        yield DaskTaskRunner(address=cluster.scheduler_address)


def _small_limits(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    monkeypatch.setattr(module, "time_limit", lambda *_args, **_kwargs: LIMIT_S)


def test_a_sweep_whose_cells_never_start_ends_timed_out(
    no_workers: DaskTaskRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _small_limits(monkeypatch, flows.sweep)
    params = SweepParams(n_samples=100, epochs=2, lrs=[0.01], batch_sizes=[1], seeds=[0])
    start = time.monotonic()
    state = run_sweep(params.model_copy(update={"data_dir": str(tmp_path)}), no_workers)
    assert time.monotonic() - start < LIMIT_S + 30
    assert state.name == "TimedOut"
    error = state.result(raise_on_failure=False)
    assert isinstance(error, RunTimeout)
    assert "generating the data went on past its time limit of 3 s" in str(error)


def test_a_comparison_whose_trainings_never_start_ends_timed_out(
    no_workers: DaskTaskRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _small_limits(monkeypatch, flows.comparison)
    monkeypatch.setattr(flows.comparison, "REPORT_LIMIT_S", 0.0)
    params = RunParams(n_samples=100, epochs=2, data_dir=str(tmp_path))
    flow = gd_comparison.with_options(task_runner=no_workers)
    state = flow(params=params, return_state=True)
    assert state.name == "TimedOut"
    error = state.result(raise_on_failure=False)
    assert isinstance(error, RunTimeout)
    assert "training and publishing went on past its time limit of 6 s" in str(error)
