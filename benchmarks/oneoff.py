"""One-off run benchmark: `gdflow run` (defaults) against a bare Prefect hello flow.

Times whole processes, as a user meets them, in both of Prefect's modes: a temporary local
server (no PREFECT_API_URL) and a running server (`gdflow server`, PREFECT_API_URL set).
Runs alternate hello / gdflow so load on the machine hits both alike; prints medians of wall
time and of CPU time (the process and everything it started, the temporary server included: a
check that holds up on a busy machine) and their ratios gdflow / hello (target: at most 1.3) for

    repeat   `gdflow run` again on the same data directory (data and training cached)
    changed  `gdflow run --sgd-lr X` on that directory, X new each time (SGD trains, figure redrawn)
    first    `gdflow run` on an empty data directory (everything computed)

    python -m benchmarks.oneoff [--reps 5] [--modes temporary,server] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flows.serving import api_is_up

TARGET = 1.3
HELLO = "from prefect import flow\n\n@flow\ndef hello():\n    return 'hello'\n\nhello()\n"


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU time of one process (with its children), which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """`gdflow server` on a free port; returns it and its API URL once it answers."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "server", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while not api_is_up(api):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("gdflow server did not start")
        time.sleep(0.5)
    return server, api


Timings = dict[str, list[tuple[float, float]]]


def measure(mode: str, reps: int, root: Path, base_env: dict[str, str]) -> Timings:
    """Alternating timings of hello, repeat and first runs in one mode."""
    home = root / f"home-{mode}"
    home.mkdir(parents=True, exist_ok=True)  # a bare flow's temporary server needs it to exist
    env = {**base_env, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    server = None
    if mode == "server":
        server, env["PREFECT_API_URL"] = start_server(env)
    hello = [sys.executable, "-c", HELLO]

    def gdflow(data_dir: Path, *options: str) -> list[str]:
        return [sys.executable, "-m", "flows.cli", "run", "--data-dir", str(data_dir), *options]

    warm = root / f"data-{mode}"
    times: Timings = {"hello": [], "repeat": [], "changed": [], "first": []}
    try:
        timed(hello, env)  # warm-ups: a fresh Prefect home, first imports, the numba cache
        timed(gdflow(warm), env)
        for rep in range(reps):
            times["hello"].append(timed(hello, env))
            times["repeat"].append(timed(gdflow(warm), env))
            step = f"{0.011 + rep / 10_000:g}"  # a step size no earlier run used
            times["changed"].append(timed(gdflow(warm, "--sgd-lr", step), env))
            times["first"].append(timed(gdflow(root / f"fresh-{mode}-{rep}"), env))
            print(
                f"  {mode} rep {rep + 1}/{reps}: "
                + ", ".join(f"{k} {v[-1][0]:.2f} s (cpu {v[-1][1]:.2f})" for k, v in times.items())
                + f" (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--modes", default="temporary,server")
    parser.add_argument("--root", type=Path, default=None, help="scratch directory")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="gdflow-oneoff-"))
    base_env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # busy machines
    }
    print(f"{os.cpu_count()} CPUs, {args.reps} repetitions per figure, scratch {root}")
    rows = []
    for mode in args.modes.split(","):
        times = measure(mode, args.reps, root, base_env)
        for kind in ("repeat", "changed", "first"):
            for column, label in ((0, "wall"), (1, "cpu")):
                hello = statistics.median(t[column] for t in times["hello"])
                run = statistics.median(t[column] for t in times[kind])
                rows.append((mode, kind, label, hello, run))
    print(
        f"\n{'mode':<10} {'gdflow run':<11} {'time':<5} {'hello (s)':>9} {'gdflow (s)':>10} ratio"
    )
    for mode, kind, label, hello, run in rows:
        ratio = run / hello
        verdict = "ok" if ratio <= TARGET else f"over {TARGET}"
        print(f"{mode:<10} {kind:<11} {label:<5} {hello:>9.2f} {run:>10.2f} {ratio:5.2f} {verdict}")


if __name__ == "__main__":
    main()
