"""Prefect servers: which one a command talks to, starting a local one, and serving the
comparison on a schedule."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectAlreadyExists
from prefect.logging.handlers import APILogWorker
from prefect.settings import get_current_settings
from prefect.workers.process import ProcessWorker
from pydantic import ValidationError

from flows.comparison import gd_comparison
from tasks.errors import BrokenEnvironment, InputError
from tasks.params import RunParams
from tasks.paths import resolve_data_dir

WORK_POOL = "gdflow"  # the process work pool of prefect.yaml's deployments
SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 20.0
LOOPBACK = "127.0.0.1"


def api_is_up(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect server answers its health check at `api_url`."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as reply:
            return reply.status == 200
    except (OSError, ValueError):
        return False


def describe_target() -> str:
    """Where flows will run: the configured server, refused if it does not answer, or a
    temporary one."""
    api = get_current_settings().api.url  # PREFECT_API_URL or the active profile's
    if not api:
        return "a temporary local Prefect server (start one with `gdflow server` to keep runs)"
    if not api_is_up(api):
        raise BrokenEnvironment(
            f"no Prefect server answers at PREFECT_API_URL={api}; start one with `gdflow server`, "
            "or unset PREFECT_API_URL to run on a temporary local server"
        )
    return f"the Prefect server at {api}"


def _schedule(cron: str | None, interval: float | None) -> CronSchedule | IntervalSchedule:
    if (cron is None) == (interval is None):
        raise InputError("give exactly one of --cron or --interval, e.g. --cron '0 2 * * *'")
    if interval is not None:
        if not interval > 0:
            raise InputError(
                f"invalid --interval: must be a positive number of seconds (got {interval}); "
                "e.g. --interval 3600"
            )
        return IntervalSchedule(interval=timedelta(seconds=interval))
    try:
        return CronSchedule(cron=cron, timezone="UTC")
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise InputError(f"invalid --cron {cron!r}: {reason}; e.g. '0 2 * * *'") from None


def deployment_parameters(params: RunParams, given: Iterable[str]) -> dict[str, Any]:
    """The flow's parameters for a deployment: the fields given, paths made absolute. Fields
    left out stay out, so the preset (and later defaults) fill them in at run time."""
    values = params.model_dump(mode="json", include=set(given))
    if params.data_dir is not None:
        values["data_dir"] = str(resolve_data_dir(params.data_dir))
    return {"params": values}


def serve_comparison(
    params: RunParams, given: Iterable[str], name: str, cron: str | None, interval: float | None
) -> None:
    """Serve the comparison with the `given` fields of `params` on a schedule until interrupted."""
    schedule = _schedule(cron, interval)
    if not get_current_settings().api.url:
        raise InputError(
            "`gdflow serve` needs a running Prefect server: start one with `gdflow server`, "
            "then set PREFECT_API_URL to the API address it prints"
        )
    describe_target()  # refuses a server that does not answer
    gd_comparison.serve(
        name=name,
        schedules=[schedule],
        parameters=deployment_parameters(params, given),
        tags=["gdflow", "served"],
        description="The gd-comparison flow, served by `gdflow serve`.",
        entrypoint_type=EntrypointType.MODULE_PATH,  # runs resolve from any directory
    )


@contextlib.contextmanager
def _prefect_server(host: str, port: int, quiet: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """`prefect server start` on host:port (analytics off, its UI pointing there) while the block
    runs, which starts once the server answers; its output on this terminal, or discarded if
    quiet. Stopped at the end: asked to shut down, killed after SERVER_STOP_TIMEOUT_S."""
    api_url = f"http://{host}:{port}/api"
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": api_url,
    }
    output = subprocess.DEVNULL if quiet else None
    command = [sys.executable, "-m", "prefect", "server", "start"]
    server = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not api_is_up(api_url, timeout=1.0):
            if server.poll() is not None:
                raise BrokenEnvironment(
                    f"the Prefect server exited with code {server.returncode} as it started; "
                    "run `prefect server start` to see why"
                )
            if time.monotonic() > deadline:
                raise BrokenEnvironment(
                    f"no answer from the Prefect server in {SERVER_START_TIMEOUT_S:g} s; "
                    "the machine may be overloaded: try again, or start one with `gdflow server`"
                )
            time.sleep(0.25)
        yield server
    finally:
        server.terminate()  # nothing to do if it has exited
        try:
            server.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextlib.contextmanager
def local_server() -> Iterator[str]:
    """A Prefect server on a free loopback port while the block runs; yields its API URL.

    For worker processes (a local Dask cluster) that must report to the same server when no
    PREFECT_API_URL is set. Its output is discarded: this command's stdout may be JSON.
    """
    with socket.socket() as sock:  # a port free at the moment
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    with _prefect_server(LOOPBACK, port, quiet=True):
        yield f"http://{LOOPBACK}:{port}/api"
        # what this process logged for the server reaches it before it stops
        APILogWorker.drain_all(timeout=SERVER_STOP_TIMEOUT_S)


def ensure_work_pool(api_url: str) -> None:
    """Create the process work pool prefect.yaml's deployments use, unless it exists."""
    pool = WorkPoolCreate(
        name=WORK_POOL,
        type="process",
        base_job_template=ProcessWorker.get_default_base_job_template(),
    )
    with SyncPrefectClient(api_url) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(pool)


def run_server(host: str, port: int) -> int:
    """Run `prefect server start` on host:port until interrupted; print where its UI is."""
    with socket.socket() as sock:
        in_use = sock.connect_ex((host, port)) == 0
    if in_use:
        raise InputError(
            f"port {port} on {host} is already in use (a server already running?); "
            "pick another with --port"
        )
    address = f"http://{host}:{port}"
    api_url = f"{address}/api"
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stops it as Ctrl-C does
    try:
        with _prefect_server(host, port) as server:
            ensure_work_pool(api_url)
            print(
                f"\nPrefect UI: {address}\n"
                f"Point gdflow at it from another terminal:  export PREFECT_API_URL={api_url}\n"
                f"Work pool for prefect.yaml's deployments: {WORK_POOL} (process)\n"
                "Stop the server with Ctrl-C.",
                flush=True,
            )
            return server.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches the server too; it was given time to shut down
        return 0
