"""The `gdflow` command line."""

from __future__ import annotations

import atexit
import contextlib
import inspect
import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn, TypeVar, get_origin

import typer
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from flows.cachecmd import cache
from flows.preflight import BrokenEnvironment, check_run, explain_failure, quiet_known_tracebacks
from tasks.params import InputError, RunParams, SweepParams

try:  # recent typer releases carry their own copy of click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A temporary server on a fresh Prefect home, on a busy machine, can take longer than 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
Params = TypeVar("Params", bound=BaseModel)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Gradient-descent experiments as a Prefect workflow.",
)
err = Console(stderr=True)
out = Console() if Console().is_terminal else Console(width=120)  # no squeezing when piped


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _describe_error(exc: ValidationError, command: str = "run") -> str:
    first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:
        return message
    field = str(first["loc"][0])
    got = first.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    return f"invalid {option_name(field)}: {message}{shown}; see `gdflow {command} --help`"


def parse_params(
    values: dict[str, Any], model: type[Params] = RunParams, command: str = "run"
) -> Params:
    """The command's parameters from the options the user gave; defaults fill in the rest."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise UserError(_describe_error(exc, command)) from None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _print_summary(result: dict[str, Any], run_name: str, state: str) -> None:
    table = Table(
        title=f"gd-comparison · {run_name} · {state}", title_justify="left", box=box.SIMPLE_HEAD
    )
    for column in ("method", "step", "final loss", "w", "b", "updates", "time (s)", "status"):
        table.add_column(
            column, justify="left" if column in ("method", "status") else "right", no_wrap=True
        )
    for name, m in result["methods"].items():
        status = "[red]diverged[/red]" if m["diverged"] else "[green]converged[/green]"
        table.add_row(
            name,
            f"{m['lr']:g}",
            f"{m['final_loss']:.4g}",
            f"{m['final_w']:.4g}",
            f"{m['final_b']:.4g}",
            f"{m['updates']:,}",
            f"{m['wall_time_s']:.3f}",
            status,
        )
    out.print(table)
    for name, m in result["methods"].items():
        if m["diverged"]:
            out.print(f"[red]{name} diverged:[/red] {m['reason']}")
    out.print(f"Figure: {result['figure']}")


def _print_tutorial_table(history_path: str, method: str) -> None:
    from tasks.history import read_history
    from tasks.storage import read_manifest

    record = read_manifest(Path(history_path))
    if record is None:
        raise UserError(f"history of {method} is missing at {history_path}; re-run with --refresh")
    h = read_history(record)
    print(f"{method}: epoch, loss at its start, w and b at its end")
    for i in range(h.epochs):
        print(f"{i}, {float(h.loss[i])!r}, {float(h.w[i + 1])!r}, {float(h.b[i + 1])!r}")


def _server_mode() -> str:
    """Where flows will run: the configured Prefect server, or a temporary one."""
    from flows.serving import describe_target

    return describe_target()


def _report_failure(state: Any, run_id: str, what: str, as_json: bool) -> int:
    """Say in one line why a flow run did not complete; return the exit code."""
    known = explain_failure(state.result(raise_on_failure=False))
    code, message = known or (EXIT_FAILED, f"the {what} ended {state.name}: {state.message}")
    if as_json:
        print(json.dumps({"flow_run": {"id": run_id, "state": state.name}, "error": message}))
    else:
        err.print(f"gdflow: error: {message}", highlight=False, soft_wrap=True, markup=False)
    return code


def _run(params: RunParams, as_json: bool, table: str | None) -> int:
    if table is not None and table not in {m.value for m in params.methods}:
        raise UserError(f"--table {table}: that method is not being run; pick one of --methods")
    from tasks import ahead

    # First, while this process is alone and has not loaded Prefect: it forks. A refused run
    # ends it unused.
    computing_ahead = ahead.start(params)
    try:
        check_run(params)
        return _run_flow(params, as_json, table, computing_ahead)
    finally:
        ahead.stop()


def _run_flow(params: RunParams, as_json: bool, table: str | None, computing_ahead: bool) -> int:
    target = _server_mode()
    if not as_json:
        err.print(f"Running gd-comparison on {target} ...")
    from flows.serving import temporary_server_starting

    with temporary_server_starting() as booting:
        from flows.comparison import gd_comparison, warm_up

        # While a temporary server boots, load what the run needs, unless a helper computes it.
        if booting and not computing_ahead:
            with contextlib.suppress(Exception):  # only a head start: the run meets any problem
                warm_up(params)

    quiet_known_tracebacks()
    state = gd_comparison(params=params, return_state=True)
    run_id = str(state.state_details.flow_run_id)
    if not state.is_completed():
        return _report_failure(state, run_id, "run", as_json)
    result = state.result()
    run_name = _flow_run_name(run_id)
    if as_json:
        payload = {
            "flow_run": {"id": run_id, "name": run_name, "state": state.name},
            **result,
            "methods": {
                name: {"history": m["file"]["path"], **{k: v for k, v in m.items() if k != "file"}}
                for name, m in result["methods"].items()
            },
        }
        print(json.dumps(_finite(payload)))
    else:
        _print_summary(result, run_name, state.name)
        if table:
            _print_tutorial_table(result["methods"][table]["file"]["path"], table)
    return 0


def _flow_run_name(run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).name


def _field_option(name: str, model: type[BaseModel] = RunParams) -> inspect.Parameter:
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = ",".join(getattr(v, "value", str(v)) for v in default)
    listed = get_origin(field.annotation) is list
    help_text = f"{field.description}{' Comma-separated' if listed else ''} (default: {default})"
    annotation: Any
    if listed:
        annotation = str | None
    elif field.annotation is bool:
        annotation = bool | None
    elif field.annotation in (int, float):
        annotation = field.annotation | None
    else:
        annotation = str | None
    flag = option_name(name)
    decls = [f"{flag}/--no-{flag[2:]}"] if field.annotation is bool else [flag]
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(None, *decls, help=help_text, show_default=False),
        annotation=annotation,
    )


def _given(options: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """The field options the user gave, comma-separated lists split."""
    values = {k: v for k, v in options.items() if v is not None}
    for name, field in model.model_fields.items():
        if name in values and get_origin(field.annotation) is list:
            values[name] = [item.strip() for item in values[name].split(",") if item.strip()]
    return values


def run(**options: Any) -> None:
    """Run the comparison: generate data, train each method, publish the figure."""
    as_json = options.pop("json_output")
    table = options.pop("table")
    raise typer.Exit(_run(parse_params(_given(options, RunParams)), as_json, table))


def _option(name: str, annotation: Any, option: Any) -> inspect.Parameter:
    """A keyword-only command parameter whose default is a hand-made typer.Option."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option
    )


_JSON_OPTION = _option(
    "json_output",
    bool,
    typer.Option(False, "--json", help="Print one JSON object on stdout."),
)
run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_field_option(name) for name in RunParams.model_fields]
    + [
        _JSON_OPTION,
        _option(
            "table",
            str | None,
            typer.Option(
                None,
                "--table",
                metavar="METHOD",
                help="Also print METHOD's history as the tutorial's table.",
            ),
        ),
    ]
)
app.command("run")(run)
app.command("cache")(cache)


def serve(**options: Any) -> None:
    """Serve the comparison on a schedule from this machine (needs a running server)."""
    from flows.serving import serve_comparison

    schedule = {k: options.pop(k) for k in ("cron", "interval", "name")}
    given = _given(options, RunParams)
    serve_comparison(parse_params(given, command="serve"), given, **schedule)


serve.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_field_option(name) for name in RunParams.model_fields]
    + [
        _option(
            "cron",
            str | None,
            typer.Option(
                None, "--cron", help="Cron schedule in UTC, e.g. '0 2 * * *' (02:00 nightly)."
            ),
        ),
        _option(
            "interval",
            float | None,
            typer.Option(None, "--interval", help="Run every this many seconds."),
        ),
        _option(
            "name",
            str,
            typer.Option("gdflow-serve", "--name", help="Name of the deployment."),
        ),
    ]
)
app.command("serve")(serve)


@app.command("server")
def server(
    port: int = typer.Option(4200, "--port", help="Port of the API and UI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
) -> None:
    """Start a local Prefect server (analytics off) and print its UI address."""
    from flows.serving import run_server

    raise typer.Exit(run_server(host, port))


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def _print_sweep(result: dict[str, Any], run_name: str, state: str) -> None:
    table = Table(
        title=f"gd-sweep · {run_name} · {state} · best step size per batch size",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    columns = ("batch", "method", "best step", "loss − floor", "epochs to target", "bound")
    for column in (*columns, "diverged at"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for b in result["best"]:
        found = b["best_lr"] is not None
        table.add_row(
            f"{b['batch_size']:,}",
            b["method"],
            f"{b['best_lr']:g}" if found else "[red]all diverged[/red]",
            f"{b['excess_loss']:.3g}" if found else "",
            "not reached" if b["epochs_to_target"] is None else f"{b['epochs_to_target']:g}",
            f"{b['stability_bound']:.3g}",
            ", ".join(f"{lr:g}" for lr in b["diverged_lrs"]) or "none",
        )
    out.print(table)
    out.print(
        f"{_runs(result['cells'])} ({result['cached']} from the cache), "
        f"{result['diverged']} diverged"
    )
    out.print(f"Figure: {result['figure']}")
    out.print(f"All histories: {result['histories']}")


def _sweep(params: SweepParams, runner: Any, workers: str, as_json: bool) -> int:
    from flows.sweep import run_sweep

    target = _server_mode()
    if not as_json:
        cells = len(params.lrs) * len(params.batch_sizes) * len(params.seeds)
        err.print(f"Running gd-sweep ({_runs(cells)} on {workers}) on {target} ...")
    quiet_known_tracebacks()
    state = run_sweep(params, runner)
    run_id = str(state.state_details.flow_run_id)
    if not state.is_completed():
        return _report_failure(state, run_id, "sweep", as_json)
    result = state.result()
    run_name = _flow_run_name(run_id)
    if as_json:
        flow = {"id": run_id, "name": run_name, "state": state.name}
        print(json.dumps(_finite({"flow_run": flow, **result})))
    else:
        _print_sweep(result, run_name, state.name)
    return 0


def sweep(**options: Any) -> None:
    """Sweep step size x batch size x seed: train every cell, publish where each converges."""
    as_json = options.pop("json_output")
    dask, address = options.pop("dask"), options.pop("dask_address")
    workers = options.pop("workers")
    params = parse_params(_given(options, SweepParams), SweepParams, "sweep")
    from flows.sweep import task_runner

    try:
        runner = task_runner(dask, address, workers)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    where = (
        f"the Dask cluster at {address}"
        if address
        else "a new local Dask cluster"
        if dask
        else "threads of this process"
    )
    raise typer.Exit(_sweep(params, runner, where, as_json))


sweep.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_field_option(name, SweepParams) for name in SweepParams.model_fields]
    + [
        _JSON_OPTION,
        _option(
            "dask",
            bool,
            typer.Option(
                False, "--dask", help="Run the cells on a new local Dask cluster of processes."
            ),
        ),
        _option(
            "workers",
            int | None,
            typer.Option(
                None,
                "--dask-workers",
                metavar="N",
                help="Worker processes of the local cluster of --dask (default: one per core).",
                show_default=False,
            ),
        ),
        _option(
            "dask_address",
            str | None,
            typer.Option(
                None,
                "--dask-address",
                metavar="tcp://HOST:PORT",
                help="Run the cells on the existing Dask cluster whose scheduler is there.",
            ),
        ),
    ]
)
app.command("sweep")(sweep)


@app.callback()
def _root() -> None:
    """Gradient-descent experiments as a Prefect workflow."""


def main() -> None:
    """Entry point: one-line errors and exit code 2 for user mistakes, no tracebacks.

    Ends the process (see exit_without_teardown): call it as a program, not as a function.
    """
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="gdflow", standalone_mode=False)
    except click_exc.NoArgsIsHelpError:
        code = 0
    except click_exc.UsageError as exc:
        hint = f"; see `{exc.ctx.command_path} --help`" if exc.ctx else ""
        err.print(f"gdflow: error: {exc.format_message()}{hint}", highlight=False, soft_wrap=True)
        code = EXIT_BAD_INPUT
    except (UserError, InputError) as exc:
        err.print(f"gdflow: error: {exc}", highlight=False, soft_wrap=True, markup=False)
        code = EXIT_BAD_INPUT
    except BrokenEnvironment as exc:
        err.print(f"gdflow: error: {exc}", highlight=False, soft_wrap=True, markup=False)
        code = EXIT_FAILED
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        err.print("gdflow: aborted")
        code = 130
    exit_without_teardown(code or 0)


def exit_without_teardown(code: int) -> NoReturn:
    """Exit as the interpreter would, except for its final teardown of modules and objects.

    Non-daemon threads are joined and threading's exit hooks run (Prefect sends its last logs
    and events there), then the atexit handlers (logging, Prefect stopping a temporary server),
    and the output is flushed. Only the teardown of torch, numba and Prefect is skipped: about
    a second after a first run, with nothing left for it to write.
    """
    shutdown = getattr(threading, "_shutdown", None)
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exitfuncs is None:  # another interpreter: exit the usual way
        sys.exit(code)
    shutdown()
    run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
