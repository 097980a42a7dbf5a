"""Prefect servers: which one a command talks to, starting a local one, and serving the
comparison on a schedule."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectAlreadyExists
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.workers.process import ProcessWorker
from pydantic import ValidationError

from flows.comparison import gd_comparison
from tasks.errors import BrokenEnvironment, InputError
from tasks.params import PRESETS, RunParams
from tasks.paths import resolve_data_dir

WORK_POOL = "gdflow"  # the process work pool of prefect.yaml's deployments
SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 20.0
LOOPBACK = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent exits
_SQLITE_HEADER = b"SQLite format 3\x00"


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
        check_prefect_home()
        return "a temporary local Prefect server (start one with `gdflow server` to keep runs)"
    if not api_is_up(api):
        raise BrokenEnvironment(
            f"no Prefect server answers at PREFECT_API_URL={api}; start one with `gdflow server`, "
            "or unset PREFECT_API_URL to run on a temporary local server"
        )
    return f"the Prefect server at {api}"


def require_server(command: str) -> None:
    """Refuse `gdflow COMMAND`, which needs a lasting server, when none is set or it is down."""
    if not get_current_settings().api.url:
        raise InputError(
            f"`gdflow {command}` needs a running Prefect server and PREFECT_API_URL is not set; "
            "start one with `gdflow server`, then set PREFECT_API_URL to the address it prints"
        )
    describe_target()  # refuses a server that does not answer


def _schedules(
    crons: Iterable[str], intervals: Iterable[float]
) -> list[CronSchedule | IntervalSchedule]:
    """The schedules of `gdflow serve`: one per --cron and per --interval, all in UTC."""
    schedules: list[CronSchedule | IntervalSchedule] = []
    for interval in intervals:
        try:
            every = timedelta(seconds=interval) if interval > 0 else None
        except OverflowError:  # infinite, or beyond what a timedelta holds
            every = None
        if every is None:
            raise InputError(
                f"invalid --interval: must be a positive number of seconds (got {interval}); "
                "e.g. --interval 3600"
            )
        schedules.append(IntervalSchedule(interval=every, timezone="UTC"))
    for cron in crons:
        try:
            schedules.append(CronSchedule(cron=cron, timezone="UTC"))
        except ValidationError as exc:
            reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise InputError(f"invalid --cron {cron!r}: {reason}; e.g. '0 2 * * *'") from None
    if not schedules:
        raise InputError(
            "give a schedule: --cron '0 2 * * *' or --interval 3600 (each may be repeated)"
        )
    return schedules


def deployment_parameters(params: RunParams, given: Iterable[str]) -> dict[str, Any]:
    """The flow's parameters for a deployment: the fields given and those its preset sets, paths
    made absolute. The UI's run form shows these values; for the fields left out it shows (and
    submits) the defaults, which is why every field a preset sets is spelled out."""
    values = params.model_dump(mode="json", include={*given, *PRESETS[params.preset]})
    if params.data_dir is not None:
        values["data_dir"] = str(resolve_data_dir(params.data_dir))
    return {"params": values}


def serve_comparison(
    params: RunParams,
    given: Iterable[str],
    name: str,
    crons: Iterable[str] = (),
    intervals: Iterable[float] = (),
    pause_on_shutdown: bool = True,
) -> None:
    """Serve the comparison with the `given` fields of `params` on its schedules until
    interrupted; then pause them, unless not `pause_on_shutdown`."""
    schedules = _schedules(crons, intervals)
    require_server("serve")
    gd_comparison.serve(
        name=name,
        schedules=schedules,
        pause_on_shutdown=pause_on_shutdown,
        parameters=deployment_parameters(params, given),
        tags=["gdflow", "served"],
        description="The gd-comparison flow, served by `gdflow serve`.",
        entrypoint_type=EntrypointType.MODULE_PATH,  # runs resolve from any directory
    )


def _die_with_this_process() -> Callable[[], None]:
    """A preexec_fn for a child that must not outlive this process, however it ends: the kernel
    sends the child SIGTERM when the thread that started it exits (Linux; elsewhere nothing)."""
    parent = os.getpid()
    prctl = getattr(ctypes.CDLL(None), "prctl", None)  # looked up before the fork

    def arrange() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # this process died before the request was made
                os.kill(os.getpid(), signal.SIGTERM)

    return arrange


def check_prefect_home() -> None:
    """Refuse a Prefect home a server cannot start from: a file, or a database file that is not
    SQLite (Prefect's server would restart on it forever)."""
    home = get_current_settings().home
    if home.exists() and not home.is_dir():
        raise BrokenEnvironment(
            f"PREFECT_HOME={home} is a file, not a directory; "
            "move it aside or point PREFECT_HOME at a directory"
        )
    url = get_current_settings().server.database.connection_url
    database = home / "prefect.db"
    if url is not None and str(database) not in url.get_secret_value():
        return  # another database: the server says what is wrong with it
    try:
        with open(database, "rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return  # a new home: the server creates its database
    except OSError as exc:
        raise BrokenEnvironment(
            f"cannot read Prefect's database {database} ({exc.strerror}); "
            "fix its permissions or point PREFECT_HOME at another directory"
        ) from None
    if header and header != _SQLITE_HEADER:
        raise BrokenEnvironment(
            f"Prefect's database {database} is not a SQLite database; move it aside "
            "(the server makes a new, empty one) or point PREFECT_HOME at another directory"
        )


@contextlib.contextmanager
def _prefect_server(host: str, port: int, quiet: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """`prefect server start` on host:port (analytics off, its UI pointing there) while the block
    runs, which starts once the server answers; its output on this terminal, or discarded if
    quiet. Stopped at the end: asked to shut down, killed after SERVER_STOP_TIMEOUT_S; and
    stopped by the kernel if this process is killed."""
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
    # In a session of its own, a terminal's Ctrl-C reaches only this process, which then stops
    # the server once what it logged has reached it.
    server = subprocess.Popen(
        command,
        env=env,
        stdout=output,
        stderr=output,
        start_new_session=True,
        preexec_fn=_die_with_this_process(),
    )
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

    Its output is discarded: this command's stdout may be JSON.
    """
    with socket.socket() as sock:  # a port free at the moment
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    with _prefect_server(LOOPBACK, port, quiet=True):
        try:
            yield f"http://{LOOPBACK}:{port}/api"
        finally:
            # what this process logged for the server reaches it before it stops, however the
            # block ended (log workers left to drain at exit would wait for it forever)
            APILogWorker.drain_all(timeout=SERVER_STOP_TIMEOUT_S)


@contextlib.contextmanager
def reporting_server() -> Iterator[None]:
    """The server a run or sweep reports to while the block runs: the one PREFECT_API_URL names,
    else a temporary local one, started now and stopped when the block ends.

    gdflow starts the temporary server itself, rather than leaving it to Prefect, so that it
    never outlives the command, and so that worker processes (a local Dask cluster) report to it.
    """
    if get_current_settings().api.url:
        yield
        return
    with local_server() as url, temporary_settings({PREFECT_API_URL: url}):
        yield


def ensure_work_pool(api_url: str) -> None:
    """Create the process work pool prefect.yaml's deployments use, unless it exists."""
    pool = WorkPoolCreate(
        name=WORK_POOL,
        type="process",
        base_job_template=ProcessWorker.get_default_base_job_template(),
    )
    with SyncPrefectClient(api_url) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(pool)


def check_address(host: str, port: int) -> None:
    """Refuse an address this machine cannot listen on: a port out of range, a host that does not
    resolve or is not this machine's, a port in use or not allowed."""
    if not 0 < port < 65536:
        raise InputError(f"invalid --port {port}; give a port from 1 to 65535, e.g. 4200")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(
            f"invalid --host {host!r} ({exc.strerror}); give an address of this machine, "
            "e.g. 127.0.0.1"
        ) from None
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(
                f"port {port} on {host} is already in use (a server already running?); "
                "pick another with --port"
            ) from None
        raise InputError(
            f"cannot listen on {host}:{port} ({os.strerror(exc.errno or 0)}); "
            "choose another --host (an address of this machine) or --port"
        ) from None


def run_server(host: str, port: int) -> int:
    """Run `prefect server start` on host:port until interrupted; print where its UI is."""
    check_address(host, port)
    check_prefect_home()  # a run or sweep checks it in describe_target, before it says where
    address = f"http://{host}:{port}"
    api_url = f"{address}/api"
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
    except KeyboardInterrupt:  # the server was asked to shut down and given time to
        return 0
