"""Sweep benchmark: what a sweep costs beyond its work, on threads and on Dask worker processes.

Times whole `gdflow sweep` processes, as a user meets them, against a bare Prefect hello flow,
all reporting to one running `gdflow server`, and reads each sweep's training window (first
training task run started to last one finished) from its API. Two grids:

    grid    200 cells (10 step sizes x batch sizes 1, 10, 100, 1000, n x 4 seeds) at 10^6 rows,
            20 epochs: a cell's work is milliseconds. Against the same cells fitted in one plain
            loop without Prefect. Targets: threads within 12 s of hello, 2 Dask workers within 20.
    long    16 cells (4 step sizes x batch sizes 1, 10 x 2 seeds) of the reference engine at
            10^4 rows, 40 epochs: a cell's work is seconds (its per-point loop is compute-bound,
            where the fast engine's shuffled epochs at 10^7 rows are bound by the memory that
            both cores share). Target: 2 Dask workers at least 1.6x faster than 1.

Each sweep runs on a new data directory whose data sets already exist, so every cell is
computed and none of the data. Other load on the machine skews the figures: the load average
is printed with each measurement.

    python -m benchmarks.sweep [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter

from benchmarks.oneoff import HELLO, start_server
from tasks.data.dataset import DatasetRef, load_columns
from tasks.data.synthetic import write_synthetic
from tasks.history import write_history
from tasks.params import MethodSpec, SweepParams
from tasks.training.methods import train

GRID: dict[str, Any] = {
    "n_samples": 1_000_000,
    "lrs": [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2],
    "batch_sizes": [1, 10, 100, 1000, "n"],
    "seeds": [0, 1, 2, 3],
}
LONG: dict[str, Any] = {
    "n_samples": 10_000,
    "epochs": 40,
    "engine": "reference",
    "lrs": [0.0005, 0.001, 0.002, 0.005],
    "batch_sizes": [1, 10],
    "seeds": [0, 1],
}
THREADS_BEYOND_HELLO_S, DASK_BEYOND_HELLO_S, DASK_SPEED_UP = 12.0, 20.0, 1.6


def _load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def fit(dataset: DatasetRef, spec: MethodSpec, target: Path) -> None:
    """What a cell's training does, without Prefect: load, train, store the history."""
    x, y = load_columns(dataset.file)
    write_history(train(x, y, spec, dataset.stats()), target, {})


def plain_loop(params: SweepParams, root: Path) -> float:
    """Seconds to fit every cell in one plain loop (data read, training, history written)."""
    datasets = {
        s: write_synthetic(params.data_spec(s), root / f"data-{s}.parquet") for s in params.seeds
    }
    cells = params.cells()
    warm = cells[0]  # loads the compiled kernels, as each worker does once
    fit(datasets[warm.seed], params.method_spec(warm.lr, warm.batch_size), root / "warm.parquet")
    start = time.perf_counter()
    for cell in cells:
        spec = params.method_spec(cell.lr, cell.batch_size)
        fit(datasets[cell.seed], spec, root / f"{cell.label}.parquet")
    return time.perf_counter() - start


def _options(grid: dict[str, Any]) -> list[str]:
    options = []
    for name, value in grid.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, list):
            options += [flag, ",".join(str(v) for v in value)]
        elif value is True:
            options.append(flag)
        else:
            options += [flag, str(value)]
    return options


class Bench:
    """Processes reporting to one running server, with the environment they share."""

    def __init__(self, root: Path) -> None:
        self.root = root
        home = root / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PREFECT_HOME": str(home)}
        self.env.pop("PREFECT_API_URL", None)
        self.server, self.env["PREFECT_API_URL"] = start_server(self.env)

    def close(self) -> None:
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(timeout=60)

    def hello(self) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", HELLO], env=self.env, check=True, capture_output=True)
        return time.perf_counter() - start

    def sweep(self, grid: dict[str, Any], data_dir: Path, *runner: str) -> dict[str, Any]:
        """One `gdflow sweep --json` process: its JSON output, with its wall time added."""
        command = [sys.executable, "-m", "flows.cli", "sweep", "--json", *_options(grid)]
        command += ["--data-dir", str(data_dir), *runner]
        start = time.perf_counter()
        done = subprocess.run(command, env=self.env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"gdflow sweep failed:\n{done.stdout}{done.stderr}")
        return {**json.loads(done.stdout), "wall": wall}

    def timed_sweep(self, grid: dict[str, Any], name: str, *runner: str) -> tuple[float, float]:
        """Wall seconds of a sweep in which every cell is computed, and of its training window.

        Its data sets are made first, by a one-cell sweep of the same data (a step size the
        grid lacks)."""
        data_dir = self.root / name
        warm = {**grid, "lrs": [0.3], "batch_sizes": ["n"], "epochs": 1}
        self.sweep(warm, data_dir)
        result = self.sweep(grid, data_dir, *runner)
        if result["cached"]:
            raise SystemExit("cells came from the cache: the measurement needs new cells")
        return result["wall"], self.training_window(result["flow_run"]["id"])

    def training_window(self, flow_run_id: str) -> float:
        """Seconds from the first training task run's start to the last one's end."""
        with SyncPrefectClient(self.env["PREFECT_API_URL"]) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}), limit=200
            )
        trains = [r for r in runs if r.name.startswith("train-")]
        first = min(r.start_time for r in trains if r.start_time)
        last = max(r.end_time for r in trains if r.end_time)
        return (last - first).total_seconds()


def _runner(workers: int) -> list[str]:
    return ["--dask", "--dask-workers", str(workers)] if workers else []


def _label(workers: int) -> str:
    return f"{workers} Dask worker(s)" if workers else "threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="scratch directory")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="gdflow-bench-sweep-"))
    cells = len(SweepParams(**GRID).cells())
    print(f"{os.cpu_count()} cores, scratch {root}; {_load()}", flush=True)
    plain = plain_loop(SweepParams(**GRID), root / "plain")
    print(f"grid: {cells} cells, plain loop without Prefect {plain:.1f} s; {_load()}", flush=True)

    bench = Bench(root)
    try:
        hello = [bench.hello() for _ in range(3)][1:]  # the first warms the Prefect home
        hello_s = min(hello)
        print(f"hello flow: {hello_s:.2f} s; {_load()}", flush=True)
        grid = {}
        for workers in (0, 2):
            grid[workers] = bench.timed_sweep(GRID, f"grid-{workers}", *_runner(workers))
            print(f"grid on {_label(workers)}: {grid[workers][0]:.1f} s; {_load()}", flush=True)
        long = {}
        for workers in (1, 2):
            long[workers] = bench.timed_sweep(LONG, f"long-{workers}", *_runner(workers))
            print(f"long on {_label(workers)}: {long[workers][0]:.1f} s; {_load()}", flush=True)
    finally:
        bench.close()

    print(f"\ngrid: {cells} cells at 10^6 rows, 20 epochs; hello flow {hello_s:.2f} s")
    print(
        f"{'runner':>18} {'sweep (s)':>10} {'beyond hello':>13} {'target':>7} "
        f"{'training (s)':>13} {'overhead/cell (ms)':>19}"
    )
    print(f"{'plain loop':>18} {plain:>10.1f} {'':>13} {'':>7} {'':>13} {'':>19}")
    for workers, target in ((0, THREADS_BEYOND_HELLO_S), (2, DASK_BEYOND_HELLO_S)):
        wall, window = grid[workers]
        slots = workers or os.cpu_count() or 1  # threads: all the cores of one process
        overhead = (window * slots - plain) / cells  # worker-seconds beyond the plain loop
        print(
            f"{_label(workers):>18} {wall:>10.1f} {wall - hello_s:>13.1f} {target:>7.0f} "
            f"{window:>13.1f} {overhead * 1e3:>19.0f}"
        )
    long_cells = len(SweepParams(**LONG).cells())
    print(f"\nlong: {long_cells} cells of the reference engine at 10^4 rows, 40 epochs")
    print(f"{'runner':>18} {'sweep (s)':>10} {'training (s)':>13}")
    for workers, (wall, window) in long.items():
        print(f"{_label(workers):>18} {wall:>10.1f} {window:>13.1f}")
    sweep, training = long[1][0] / long[2][0], long[1][1] / long[2][1]
    print(
        f"2 workers over 1: sweep {sweep:.2f}x, training {training:.2f}x (target {DASK_SPEED_UP}x)"
    )


if __name__ == "__main__":
    main()
