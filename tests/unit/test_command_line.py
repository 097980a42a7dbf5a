"""The command line's options come from the parameter models; bad ones are refused in one line.

In-process: parsing, help and refusals happen before any command imports Prefect.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import BaseModel

from flows.cli import app, run_command
from flows.preflight import params_from_options
from tasks.params import Method, RunParams, SweepParams
from tasks.paths import PROJECT_ROOT

MODEL_COMMANDS = [("run", RunParams), ("sweep", SweepParams), ("serve", RunParams)]


def help_rows(command: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`gdflow COMMAND --help`, one row per option: {option name: the rest of its row}."""
    assert run_command([command, "--help"]) == 0
    rows: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines():
        text = line.strip("│ ")
        if text.startswith("--"):
            name, _, rest = text.partition(" ")
            rows[name] = rest.strip()
    return rows


def shown_default(default: Any) -> str:
    """How a field's default reads in the help: items of a list as they are written."""
    if isinstance(default, list):
        items = [
            f"'{d}'" if isinstance(d, str) and not isinstance(d, Method) else str(d)
            for d in default
        ]
        return "[" + ", ".join(items) + "]"
    return str(default)


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough that no help row wraps."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.mark.usefixtures("wide")
@pytest.mark.parametrize(("command", "model"), MODEL_COMMANDS)
def test_help_lists_every_field_of_the_model_with_its_default_and_help(
    command: str, model: type[BaseModel], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = help_rows(command, capsys)
    for name, field in model.model_fields.items():
        option = "--" + name.replace("_", "-")
        assert option in rows, f"{option} missing from `gdflow {command} --help`"
        row = rows[option]
        assert field.description
        assert field.description in row, (option, row)
        default = field.get_default(call_default_factory=True)
        if default is None:
            assert "[default:" not in row, (option, row)
        else:
            assert f"[default: {shown_default(default)}]" in row, (option, row)
        if field.annotation is bool:
            assert row.startswith(f"--no-{option[2:]}"), (option, row)


@pytest.mark.usefixtures("wide")
def test_help_lists_the_options_that_are_not_fields(capsys: pytest.CaptureFixture[str]) -> None:
    run = help_rows("run", capsys)
    assert run["--json"].startswith("Print one JSON object")
    assert run["--table"].startswith("METHOD")
    sweep = help_rows("sweep", capsys)
    assert {"--json", "--dask", "--dask-workers", "--dask-address"} <= set(sweep)
    assert sweep["--dask-workers"].startswith("N ")
    assert sweep["--dask-address"].startswith("tcp://HOST:PORT")
    serve = help_rows("serve", capsys)
    assert "[default: gdflow-serve]" in serve["--name"]
    assert {"--cron", "--interval"} <= set(serve)
    assert set(help_rows("server", capsys)) == {"--port", "--host"}
    assert {"--data-dir", "--clear", "--older-than", "--json"} == set(help_rows("cache", capsys))
    assert "--empty-methods" not in run  # a list option is never emptied by a flag


def given(*tokens: str) -> dict[str, Any]:
    """The options a command receives for `gdflow TOKENS`, parsed but not run."""
    _, bound, _ = app.parse_args(list(tokens), exit_on_error=False, print_error=False)
    return bound.kwargs.get("given") or {}


def test_a_command_receives_only_the_options_given_and_the_preset_fills_in_the_rest() -> None:
    options = given("run", "--preset", "tutorial", "--epochs", "30", "--no-shuffle")
    assert options == {"preset": "tutorial", "epochs": "30", "shuffle": False}
    params = params_from_options(RunParams, options, "run")
    assert params.methods == [Method.bgd, Method.sgd]  # from the preset
    assert params.sgd_lr == 0.1  # from the preset
    assert params.epochs == 30
    assert given("run") == {}
    assert params_from_options(RunParams, given("run"), "run") == RunParams()


def test_lists_are_given_comma_separated_or_one_item_per_option() -> None:
    run = params_from_options(RunParams, given("run", "--methods", "bgd, sgd"), "run")
    assert run.methods == [Method.bgd, Method.sgd]
    again = given("run", "--methods", "bgd", "--methods", "minibatch")
    assert params_from_options(RunParams, again, "run").methods == [Method.bgd, Method.minibatch]
    options = given("sweep", "--lrs", "0.02,0.01", "--batch-sizes", "1,10,n", "--seeds", "0,1")
    sweep = params_from_options(SweepParams, options, "sweep")
    assert (sweep.lrs, sweep.batch_sizes, sweep.seeds) == ([0.01, 0.02], [1, 10, 100], [0, 1])


BAD_COMMAND_LINES = [
    pytest.param(["run", "--bogus", "1"], ["unknown option", "--bogus"], id="unknown-option"),
    pytest.param(["run", "--epoch", "3"], ["--epoch", "--epochs"], id="misspelt-option"),
    pytest.param(["runn"], ["runn", "gdflow --help"], id="unknown-command"),
    pytest.param(["run", "--epochs"], ["--epochs", "requires an argument"], id="missing-value"),
    pytest.param(["run", "--epochs", "ten"], ["--epochs", "'ten'"], id="bad-int"),
    pytest.param(["run", "--sgd-lr", "fast"], ["--sgd-lr", "'fast'"], id="bad-float"),
    pytest.param(["run", "--methods", "bgd", "sgd"], ["'sgd'", "a,b,c"], id="extra-argument"),
    pytest.param(["run", "--shuffle", "maybe"], ["'maybe'"], id="flag-with-value"),
    pytest.param(["run", "--dtype", "float16"], ["--dtype", "float16"], id="bad-choice"),
    pytest.param(["run", "--epochs", "0"], ["--epochs", "(got '0')"], id="bad-value"),
    pytest.param(["run", "--x-start", "5", "--x-stop", "-5"], ["x_start"], id="bad-pair"),
    pytest.param(["run", "--table", "adam"], ["--table adam"], id="table-not-run"),
    pytest.param(["sweep", "--sgd-lr", "0.1"], ["--sgd-lr"], id="not-a-sweep-option"),
    pytest.param(["sweep", "--dask-workers", "x"], ["--dask-workers", "int"], id="sweep-bad-int"),
    pytest.param(["sweep", "--batch-sizes", "1,m"], ["--batch-sizes", "'m'"], id="bad-batch"),
    pytest.param(["cache", "--older-than", "7x"], ["--older-than '7x'"], id="bad-age"),
    pytest.param(["server", "--port", "http"], ["--port"], id="bad-port"),
]


@pytest.mark.parametrize(("tokens", "words"), BAD_COMMAND_LINES)
def test_a_bad_command_line_is_one_line_naming_the_problem_and_the_fix(
    tokens: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command(tokens) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("gdflow: error: "), line
    assert "; " in line, f"no fix named: {line}"
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"


def test_help_and_refusals_never_load_prefect() -> None:
    """Prefect takes 2.5 s to import: a refused or --help command line is answered without it."""
    script = (
        "import sys; from flows.cli import run_command; "
        "codes = [run_command(['run', '--epochs', '0']), run_command(['sweep', '--help'])]; "
        "print(codes, 'prefect' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    assert done.stdout.strip().splitlines()[-1] == "[2, 0] False"
