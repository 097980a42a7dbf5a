"""The `gdflow` command line."""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from tasks.params import RunParams

try:  # recent typer releases carry their own copy of click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

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


def _describe_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:
        return message
    field = str(first["loc"][0])
    got = first.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    return f"invalid {option_name(field)}: {message}{shown}; see `gdflow run --help`"


def parse_params(values: dict[str, Any]) -> RunParams:
    """RunParams from the options the user gave; the preset fills in the rest."""
    try:
        return RunParams.model_validate(values)
    except ValidationError as exc:
        raise UserError(_describe_error(exc)) from None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _server_mode() -> str:
    url = os.environ.get("PREFECT_API_URL")
    return f"Prefect server at {url}" if url else "a temporary local Prefect server"


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


def _run(params: RunParams, as_json: bool, table: str | None) -> int:
    if table is not None and table not in {m.value for m in params.methods}:
        raise UserError(f"--table {table}: that method is not being run; pick one of --methods")
    if not as_json:
        err.print(f"Running gd-comparison on {_server_mode()} ...")
    from flows.comparison import gd_comparison

    state = gd_comparison(params=params, return_state=True)
    run_id = str(state.state_details.flow_run_id)
    if not state.is_completed():
        message = state.message or state.name
        if as_json:
            print(json.dumps({"flow_run": {"id": run_id, "state": state.name}, "error": message}))
        else:
            err.print(f"[red]gdflow: the run ended {state.name}: {message}[/red]")
        return EXIT_FAILED
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


def _field_option(name: str) -> inspect.Parameter:
    field = RunParams.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = ",".join(getattr(v, "value", str(v)) for v in default)
    help_text = f"{field.description} (default: {default})"
    annotation: Any
    if name == "methods":
        annotation, help_text = str | None, help_text.replace(" (", " Comma-separated (", 1)
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


def run(**options: Any) -> None:
    """Run the comparison: generate data, train each method, publish the figure."""
    as_json = options.pop("json_output")
    table = options.pop("table")
    values = {k: v for k, v in options.items() if v is not None}
    if "methods" in values:
        values["methods"] = [m.strip() for m in values["methods"].split(",") if m.strip()]
    raise typer.Exit(_run(parse_params(values), as_json, table))


run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_field_option(name) for name in RunParams.model_fields]
    + [
        inspect.Parameter(
            "json_output",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=bool,
            default=typer.Option(False, "--json", help="Print one JSON object on stdout."),
        ),
        inspect.Parameter(
            "table",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=typer.Option(
                None,
                "--table",
                metavar="METHOD",
                help="Also print METHOD's history as the tutorial's table.",
            ),
        ),
    ]
)
app.command("run")(run)


@app.callback()
def _root() -> None:
    """Gradient-descent experiments as a Prefect workflow."""


def main() -> None:
    """Entry point: one-line errors and exit code 2 for user mistakes, no tracebacks."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="gdflow", standalone_mode=False)
    except click_exc.NoArgsIsHelpError:
        code = 0
    except click_exc.UsageError as exc:
        err.print(f"gdflow: error: {exc.format_message()}", highlight=False, soft_wrap=True)
        code = EXIT_BAD_INPUT
    except UserError as exc:
        err.print(f"gdflow: error: {exc}", highlight=False, soft_wrap=True, markup=False)
        code = EXIT_BAD_INPUT
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        err.print("gdflow: aborted")
        code = 130
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
