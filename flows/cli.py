"""The `gdflow` command line: run, sweep, serve, server, cache, runs and compare.

The options of `run`, `sweep` and `serve` are the fields of RunParams and SweepParams, named and
documented by cyclopts from the models; a command validates only the options given, so a preset
fills in the rest. Prefect is imported inside the commands, after main() sets its environment
defaults: a request refused for its options never waits for that import (2.5 s).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from cyclopts import App, CycloptsError, Parameter
from pydantic import PlainValidator

from flows import terminal
from flows.cache_listing import parse_age, select
from flows.preflight import (
    INTERRUPTED,
    check_run,
    check_sweep,
    explain_failure,
    params_from_options,
    quiet_known_tracebacks,
)
from tasks.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    BrokenEnvironment,
    GdflowError,
    InputError,
)
from tasks.params import RunParams, SweepParams
from tasks.paths import resolve_data_dir


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options given, by field name, with the items of comma-separated lists split."""
    return {
        name: [item.strip() for v in value for item in str(v).split(",") if item.strip()]
        if isinstance(value, list)
        else value
        for name, value in options.items()
    }


# A model's fields as options. Cyclopts passes the options given to pydantic as a dict;
# PlainValidator hands that dict to the command as it is, for the command's own validation.
RunOptions = Annotated[RunParams, Parameter(name="*"), PlainValidator(_given)]
SweepOptions = Annotated[SweepParams, Parameter(name="*"), PlainValidator(_given)]


def _flag(help: str, name: str | None = None) -> Parameter:
    """An option that is on when given and off otherwise (no --no- form)."""
    return Parameter(name=name, negative="", show_default=False, help=help)


JsonFlag = Annotated[bool, _flag("Print one JSON object on stdout.", name="--json")]

app = App(
    name="gdflow",
    help="Gradient-descent experiments as a Prefect workflow.",
    version_flags=(),
    default_parameter=Parameter(negative_iterable=()),  # --no-shuffle, but no --empty-methods
    result_action="return_value",
    suppress_keyboard_interrupt=False,
)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _error(message: str, exit_code: int) -> int:
    """Report a failure gdflow can explain in its one line on stderr; return the exit code."""
    _note("gdflow: error: " + " ".join(message.splitlines()))
    return exit_code


def _finish(state: Any, what: str, as_json: bool, show: Callable[[Any, str], None]) -> int:
    """Print a finished flow run's result (JSON, or `show(result, title)`), or the one line
    saying why it did not complete; return the exit code."""
    if INTERRUPTED.is_set():  # the run failed because it was interrupted
        raise KeyboardInterrupt
    run_id = str(state.state_details.flow_run_id)
    if not state.is_completed():
        error = explain_failure(state.result(raise_on_failure=False))
        error = error or BrokenEnvironment(f"the {what} ended {state.name}: {state.message}")
        if not as_json:
            raise error  # the one line of run_command
        print(json.dumps({"flow_run": {"id": run_id, "state": state.name}, "error": str(error)}))
        return error.exit_code
    result = state.result()
    name = result.flow_run_name
    if not as_json:
        show(result, f"{name} · {state.name}")
        return 0
    # pydantic writes NaN and infinities as null: the output is strict JSON
    fields = json.loads(result.model_dump_json(exclude={"flow_run_name"}))
    print(json.dumps({"flow_run": {"id": run_id, "name": name, "state": state.name}, **fields}))
    return 0


@app.command
def run(
    *,
    given: RunOptions | None = None,
    as_json: JsonFlag = False,
    table: Annotated[
        str | None,
        Parameter(metavar="METHOD", help="Also print METHOD's history as the tutorial's table."),
    ] = None,
) -> int:
    """Run the comparison: generate data, train each method, publish the figure.

    Lists are comma-separated: --methods bgd,sgd.
    """
    params = params_from_options(RunParams, given, "run")
    if table is not None and table not in {m.value for m in params.methods}:
        raise InputError(f"--table {table}: that method is not being run; pick one of --methods")
    check_run(params)
    from flows.comparison import gd_comparison
    from flows.serving import describe_target, reporting_server

    target = describe_target()
    if not as_json:
        _note(f"Running gd-comparison on {target} ...")
    quiet_known_tracebacks()
    with reporting_server(), terminal.progress_bars(shown=not as_json):
        state = gd_comparison(params=params, return_state=True)
    return _finish(state, "run", as_json, partial(terminal.print_run, table_of=table))


@app.command
def sweep(
    *,
    given: SweepOptions | None = None,
    as_json: JsonFlag = False,
    dask: Annotated[bool, _flag("Run the cells on a new local Dask cluster of processes.")] = False,
    dask_workers: Annotated[
        int | None,
        Parameter(
            metavar="N",
            help="Worker processes of the local cluster of --dask (default: one per core).",
        ),
    ] = None,
    dask_address: Annotated[
        str | None,
        Parameter(
            metavar="tcp://HOST:PORT",
            help="Run the cells on the existing Dask cluster whose scheduler is there.",
        ),
    ] = None,
) -> int:
    """Sweep step size x batch size x seed: train every cell, publish where each converges.

    Lists are comma-separated: --lrs 0.01,0.02 --batch-sizes 1,10,n --seeds 0,1.
    """
    params = params_from_options(SweepParams, given, "sweep")
    from flows.serving import describe_target, reporting_server
    from flows.sweep import run_sweep, task_runner

    runner = task_runner(dask, dask_address, dask_workers)
    check_sweep(params)
    target = describe_target()
    if not as_json:
        where = "a new local Dask cluster" if dask else "threads of this process"
        where = f"the Dask cluster at {dask_address}" if dask_address else where
        cells = terminal.runs(len(params.cells()))
        _note(f"Running gd-sweep ({cells} on {where}) on {target} ...")
    quiet_known_tracebacks()
    with reporting_server(), terminal.progress_bars(shown=not as_json):
        state = run_sweep(params, runner)
    return _finish(state, "sweep", as_json, terminal.print_sweep)


@app.command
def serve(
    *,
    given: RunOptions | None = None,
    cron: Annotated[
        list[str] | None,
        Parameter(help="Cron schedule in UTC, e.g. '0 2 * * *' (02:00 nightly); repeatable."),
    ] = None,
    interval: Annotated[
        list[float] | None, Parameter(help="Run every this many seconds; repeatable.")
    ] = None,
    name: Annotated[str, Parameter(help="Name of the deployment.")] = "gdflow-serve",
    pause_on_shutdown: Annotated[
        bool,
        Parameter(help="Pause the schedules when serving stops (else the server keeps them)."),
    ] = True,
) -> int:
    """Serve the comparison on one or more schedules from this machine (needs a running server).

    The deployment holds only the options given; the preset and defaults fill in the rest.
    """
    params = params_from_options(RunParams, given, "serve")
    from flows.serving import serve_comparison

    serve_comparison(params, given or {}, name, cron or (), interval or (), pause_on_shutdown)
    return 0


@app.command
def server(
    *,
    port: Annotated[int, Parameter(help="Port of the API and UI.")] = 4200,
    host: Annotated[str, Parameter(help="Address to listen on.")] = "127.0.0.1",
) -> int:
    """Start a local Prefect server (analytics off) and print its UI address."""
    from flows.serving import run_server

    return run_server(host, port)


@app.command
def cache(
    *,
    data_dir: Annotated[
        str | None, Parameter(help=RunParams.model_fields["data_dir"].description)
    ] = None,
    clear: Annotated[bool, _flag("Remove the entries (all, or those --older-than AGE).")] = False,
    older_than: Annotated[
        str | None, Parameter(metavar="AGE", help="Only entries last written AGE ago, e.g. 7d.")
    ] = None,
    as_json: JsonFlag = False,
) -> int:
    """Show what the cache holds (entries, size, age per area); --clear removes entries."""
    min_age = parse_age(older_than) if older_than is not None else 0.0
    root = resolve_data_dir(data_dir)
    chosen, areas = select(root, min_age, remove=clear)
    if as_json:
        listed = {name: dataclasses.asdict(a) for name, a in areas.items()}
        print(json.dumps({"data_dir": str(root), "removed" if clear else "entries": listed}))
        return 0
    scope = f" older than {older_than}" if older_than else ""
    title = f"{'Removed from' if clear else 'Cached in'} {root}{scope}"
    if not chosen:
        print(f"{title}: nothing")
        return 0
    print(title)
    terminal.print_areas(areas)
    return 0


@app.command
def runs(
    *,
    limit: Annotated[int, Parameter(metavar="N", help="How many runs, newest first.")] = 20,
    preset: Annotated[str | None, Parameter(help="Only the runs of this preset.")] = None,
    deployment: Annotated[
        str | None, Parameter(metavar="NAME", help="Only the runs of this deployment.")
    ] = None,
    as_json: JsonFlag = False,
    parquet: Annotated[
        str | None,
        Parameter(metavar="PATH", help="Also write one row per run and method to this file."),
    ] = None,
) -> int:
    """List the recent comparison runs on the server with their results."""
    from flows import trend
    from flows.serving import require_server

    require_server("runs")
    records = trend.recent_runs(limit, preset, deployment)
    rows = trend.write_rows(Path(parquet), records) if parquet else 0
    if as_json:
        print(json.dumps({"runs": [r.model_dump(mode="json") for r in records]}))
        return 0
    terminal.print_runs(records)
    if parquet:
        print(f"Wrote {rows} rows ({terminal.runs(len(records))}) to {parquet}")
    return 0


@app.command
def compare(
    first: Annotated[str, Parameter(help="A run: its id, the start of its id, or its name.")],
    second: Annotated[str, Parameter(help="The other run.")],
    /,
) -> int:
    """Print two recorded runs side by side: the parameters that differ, results per method."""
    from flows import trend
    from flows.serving import require_server

    require_server("compare")

    a, b = trend.find_run(first), trend.find_run(second)
    terminal.print_comparison(a, b, trend.differing_params(a, b))
    return 0


def run_command(tokens: list[str]) -> int:
    """Run the gdflow command `tokens`; every failure gdflow can explain is one line on stderr."""
    try:
        code = app(tokens, exit_on_error=False, print_error=False)
    except CycloptsError as exc:
        return _error(terminal.describe_usage_error(exc), EXIT_BAD_INPUT)
    except GdflowError as exc:
        return _error(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        # Task threads finish the work they were given before the process can exit; what they
        # log then is about a run that is over (and the log service has stopped): drop it.
        logging.disable(logging.CRITICAL)
        _note("gdflow: interrupted")
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C and SIGTERM: a KeyboardInterrupt, remembered in INTERRUPTED."""
    INTERRUPTED.set()
    signal.default_int_handler(signum, frame)


def main() -> None:
    """The `gdflow` program."""
    # Prefect reads these when it is first imported, which the commands do.
    # Analytics off, the server's and the client's (which asks the server in the background).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # A scheduler stops a command with SIGTERM: it ends as Ctrl-C ends it (exit 130, clean up).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    sys.exit(run_command(sys.argv[1:]))


if __name__ == "__main__":
    main()
