"""The `gdflow run` command as a user runs it: a real process, real files, a real server."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch

from tests.processes import assert_one_line_error, gdflow, processes_with, start

NO_CUDA = "needs a CUDA device that torch sees"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--n-samples", "1"], "--n-samples"),
        (["--n-samples", "0"], "--n-samples"),
        (["--sgd-lr", "0"], "--sgd-lr"),
        (["--bgd-lr", "-0.1"], "--bgd-lr"),
        (["--minibatch-lr", "nan"], "--minibatch-lr"),
        (["--sgd-lr", "inf"], "--sgd-lr"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "101"], "batch_size"),
        (["--methods", "bgd,adam"], "--methods"),
        (["--preset", "fastest"], "preset"),
        (["--epochs", "ten"], "--epochs"),
        (["--x-start", "5", "--x-stop", "-5"], "x_start"),
        (["--no-such-option", "1"], "--no-such-option"),
    ],
)
def test_invalid_parameters_are_refused_before_any_work(tmp_path, args, names) -> None:
    result = gdflow("run", *args, data_dir=tmp_path)
    assert_one_line_error(result, 2, names)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_run_without_a_gpu_is_refused_before_any_work(tmp_path) -> None:
    result = gdflow("run", "--device", "cuda", "--engine", "reference", data_dir=tmp_path)
    assert_one_line_error(result, 2, "CUDA", "--device cpu")
    assert not (tmp_path / "datasets").exists()


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def test_json_output_is_one_object_with_the_documented_fields(tmp_path, prefect_api) -> None:
    # sgd at step size 5 overflows: its final loss, w and b are not finite numbers
    result = gdflow(
        "run", "--json", "--preset", "tutorial", "--sgd-lr", "5", api=prefect_api, data_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout, parse_constant=_not_json)  # strict JSON: no NaN, no inf
    assert payload["flow_run"]["state"] == "Completed"
    assert payload["flow_run"]["id"]
    assert re.fullmatch(r"tutorial-n100-e20-bgd\+sgd-[0-9a-f]{6}", payload["flow_run"]["name"])
    assert Path(payload["dataset"]["path"]).is_file()
    assert {"sha256", "rows", "source"} <= set(payload["dataset"])
    assert Path(payload["figure"]).is_file()
    assert Path(payload["figure_svg"]).is_file()
    assert Path(payload["summary"]).is_file()
    assert Path(payload["data_dir"]) == tmp_path.resolve()
    assert set(payload["methods"]) == {"bgd", "sgd"}
    for name, method in payload["methods"].items():
        assert Path(method["history"]).is_file(), name
        assert {"final_b", "reason", "stability_bound", "updates", "wall_time_s"} <= set(method)
    bgd, sgd = payload["methods"]["bgd"], payload["methods"]["sgd"]
    assert isinstance(bgd["final_loss"], float)
    assert isinstance(bgd["final_w"], float)
    assert bgd["diverged"] is False
    assert sgd["diverged"] is True
    assert sgd["final_loss"] is None  # not finite: null


def test_human_output_prints_a_summary_the_figure_and_the_tutorial_table(
    tmp_path, prefect_api
) -> None:
    result = gdflow(
        "run", "--preset", "tutorial", "--table", "bgd", api=prefect_api, data_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"Running gd-comparison on the Prefect server at {prefect_api}")
    out = result.stdout
    assert re.search(r"gd-comparison · tutorial-n100-e20-bgd\+sgd-[0-9a-f]{6} · Completed", out)
    assert "sgd diverged:" in out
    assert "1/(1 + max x²)" in out
    figure = next(line for line in out.splitlines() if line.startswith("Figure: "))
    assert Path(figure.removeprefix("Figure: ")).is_file()
    assert "bgd: epoch, loss at its start, w and b at its end" in out
    rows = [line for line in out.splitlines() if line[:2] in {f"{i}," for i in range(10)}]
    rows += [line for line in out.splitlines() if line[:3] in {f"{i}," for i in range(10, 20)}]
    assert len(rows) == 20
    loss0 = float(rows[0].split(",")[1])
    assert 596.7 - 15 < loss0 < 596.7 + 15


def test_every_log_line_reaches_the_server_and_a_default_run_logs_a_dozen(
    tmp_path, prefect_api
) -> None:
    """Prefect sends its last logs as the process exits; the server must have them all."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    result = gdflow("run", "--json", api=prefect_api, data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout)["flow_run"]["id"]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    messages = [log.message for log in logs]
    assert any(m.startswith("Dataset: 100 rows") for m in messages)
    assert any(m.startswith("Figure: ") for m in messages)
    assert messages[-1] == "Finished in state Completed()"
    # The story, no more: the data set, a result per method, the figure; no progress lines for
    # trainings of milliseconds.
    from_tasks = [log.message for log in logs if log.task_run_id is not None]
    assert len(from_tasks) <= 12, from_tasks
    assert not [m for m in from_tasks if ": epoch " in m], from_tasks


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc")
def test_a_run_without_a_server_uses_a_temporary_one_and_leaves_nothing_running(tmp_path) -> None:
    data_dir = tmp_path / "one-off-run"
    result = gdflow("run", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "Running gd-comparison on a temporary local Prefect server" in result.stderr
    assert (data_dir / "reports").is_dir()
    assert processes_with(f"GDFLOW_DATA_DIR={data_dir}") == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_run_on_cuda_completes_with_the_cpu_results(tmp_path, prefect_api, engine) -> None:
    args = ["run", "--json", "--n-samples", "200000", "--epochs", "5", "--engine", engine]
    args += ["--methods", "bgd,minibatch"]
    runs = {}
    for device in ("cpu", "cuda"):
        result = gdflow(*args, "--device", device, api=prefect_api, data_dir=tmp_path / device)
        assert result.returncode == 0, result.stderr
        runs[device] = json.loads(result.stdout)
        assert runs[device]["flow_run"]["state"] == "Completed"
    for method in ("bgd", "minibatch"):
        on_cpu = runs["cpu"]["methods"][method]["final_loss"]
        on_gpu = runs["cuda"]["methods"][method]["final_loss"]
        # The fast engine works in float64; the reference in the data's float32, where the GPU
        # sums in another order: the engines' own float64 and float32 bounds.
        assert on_gpu == pytest.approx(on_cpu, rel=1e-9 if engine == "fast" else 1e-5), method


def test_ctrl_c_stops_a_run_with_exit_code_130_and_no_traceback(tmp_path, prefect_api) -> None:
    run = start("run", "--n-samples", "2000000", data_dir=tmp_path, api=prefect_api)
    assert run.stderr is not None
    while "Dataset: " not in (line := run.stderr.readline()):  # into the flow run: training
        assert line, "the run ended before it trained"
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "gdflow: interrupted"
    assert out == ""
