"""The user's own Parquet file: checked, copied in as float32 x, y, cached, and credited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

from flows.comparison import gd_comparison
from tasks.errors import InputError
from tasks.params import RunParams
from tasks.report.tables import markdown_text
from tasks.stats import moments
from tasks.storage import file_metadata
from tests.processes import gdflow, leftovers

pytestmark = pytest.mark.usefixtures("prefect_api")


def user_file(path: Path, slope: float = -3.0, rows: int = 200, **extra: Any) -> Path:
    """A Parquet file of y = slope·x + 1 + noise in float64 columns a and b."""
    x = np.linspace(-4.0, 4.0, rows)
    y = slope * x + 1.0 + np.random.default_rng(1).normal(0.0, 0.2, rows)
    pq.write_table(pa.table({"a": x, "b": y, **extra}), path, row_group_size=64)
    return path


def run(data_dir: Path, **fields: Any) -> tuple[dict[str, Any], dict[str, str], Any]:
    """Run the flow; return its result, {task-run name prefix: state name} and its run id."""
    state = gd_comparison(params=RunParams(data_dir=str(data_dir), **fields), return_state=True)
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
    return state.result().model_dump(), {r.name.split("-lr")[0]: r.state.name for r in runs}, run_id


def test_a_users_file_is_copied_in_as_float32_and_trained_on(tmp_path) -> None:
    source = user_file(tmp_path / "mine.parquet")
    result, states, run_id = run(tmp_path / "data", data=str(source), x_col="a", y_col="b")
    assert states["load-data"] == "Completed"
    stored = pq.read_table(result["dataset"]["path"])
    assert stored.schema.names == ["x", "y"]
    assert stored.schema.field("x").type == pa.float32()
    original = pq.read_table(source)
    assert np.array_equal(stored["x"].to_numpy(), original["a"].to_numpy().astype(np.float32))
    assert np.array_equal(stored["y"].to_numpy(), original["b"].to_numpy().astype(np.float32))
    assert result["dataset"]["rows"] == 200
    assert str(source) in result["dataset"]["source"]
    provenance = json.loads(file_metadata(Path(result["dataset"]["path"]))["gdflow.source"])
    assert provenance["uri"] == str(source)
    assert provenance["columns"] == ["a", "b"]
    assert len(provenance["sha256"]) == 64
    assert provenance["sha256"][:12] in result["dataset"]["source"]
    w_ls, b_ls = moments(stored["x"].to_numpy(), stored["y"].to_numpy()).least_squares()
    minibatch = result["methods"]["minibatch"]
    assert minibatch["final_w"] == pytest.approx(w_ls, abs=0.05)
    assert minibatch["final_b"] == pytest.approx(b_ls, abs=0.05)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gd-comparison"])),
            flow_run_filter=FlowRunFilter(id={"any_": [run_id]}),
        )
    assert len(artifacts) == 1
    # the source as markdown text: the underscores of pytest's folder names escaped
    assert "Data: " + markdown_text(result["dataset"]["source"]) in artifacts[0].data
    summary = json.loads(Path(result["summary"]).read_text())
    assert summary["params"]["data"] == str(source)


def test_a_repeat_run_reuses_the_copy_and_ignores_the_synthetic_options(tmp_path) -> None:
    source = user_file(tmp_path / "mine.parquet")
    first, _, _ = run(tmp_path / "data", data=str(source), x_col="a", y_col="b")
    stored = Path(first["dataset"]["path"])
    written = stored.stat().st_mtime_ns
    second, states, _ = run(
        tmp_path / "data", data=str(source), x_col="a", y_col="b", n_samples=7, seed=3, slope=9.0
    )
    assert states["load-data"] == "Cached"  # its body, which reads the file, did not run
    assert {states[f"train-{m}"] for m in ("bgd", "sgd", "minibatch")} == {"Cached"}
    assert stored.stat().st_mtime_ns == written
    assert second["dataset"] == first["dataset"]
    assert second["methods"] == first["methods"]
    assert RunParams(data=str(source), batch_size=150).batch_size == 150  # not held to n_samples


def test_a_changed_file_is_read_again(tmp_path) -> None:
    source = user_file(tmp_path / "mine.parquet")
    first, _, _ = run(tmp_path / "data", data=str(source), x_col="a", y_col="b")
    user_file(source, slope=2.0)
    second, states, _ = run(tmp_path / "data", data=str(source), x_col="a", y_col="b")
    assert states["load-data"] == "Completed"
    assert states["train-bgd"] == "Completed"
    assert second["dataset"]["sha256"] != first["dataset"]["sha256"]
    assert second["methods"]["minibatch"]["final_w"] == pytest.approx(2.0, abs=0.1)


def test_an_altered_copy_is_made_again(tmp_path) -> None:
    source = user_file(tmp_path / "mine.parquet")
    first, _, _ = run(tmp_path / "data", data=str(source), x_col="a", y_col="b")
    stored = Path(first["dataset"]["path"])
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    second, states, _ = run(tmp_path / "data", data=str(source), x_col="a", y_col="b")
    assert states["load-data"] == "Completed"
    assert second["dataset"]["sha256"] == first["dataset"]["sha256"]
    assert leftovers(tmp_path / "data") == []


def test_a_file_uri_is_the_same_file_as_its_path(tmp_path) -> None:
    source = user_file(tmp_path / "mine.parquet")
    by_path, _, _ = run(tmp_path / "data", data=str(source), x_col="a", y_col="b")
    by_uri, _, _ = run(tmp_path / "data", data=source.as_uri(), x_col="a", y_col="b")
    assert source.as_uri() in by_uri["dataset"]["source"]
    tables = [pq.read_table(r["dataset"]["path"]) for r in (by_path, by_uri)]
    assert tables[0].equals(tables[1])
    hashes = [
        json.loads(file_metadata(Path(r["dataset"]["path"]))["gdflow.source"])["sha256"]
        for r in (by_path, by_uri)
    ]
    assert hashes[0] == hashes[1]


def test_a_run_that_bypasses_the_cli_still_refuses_bad_values(tmp_path) -> None:
    source = user_file(tmp_path / "bad.parquet", extra_col=np.zeros(200))
    table = pq.read_table(source)
    b = table["b"].to_numpy().copy()
    b[150] = np.nan
    pq.write_table(table.set_column(1, "b", pa.array(b)), source, row_group_size=64)
    params = RunParams(data_dir=str(tmp_path / "data"), data=str(source), x_col="a", y_col="b")
    state = gd_comparison(params=params, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputError)
    assert "(nan) at row 150" in str(error)
    assert not list((tmp_path / "data" / "datasets").glob("*.parquet"))
    assert leftovers(tmp_path / "data") == []


def test_integer_and_extra_columns_are_accepted_at_the_command_line(
    tmp_path, prefect_api: str
) -> None:
    path = tmp_path / "ints.parquet"
    x = np.arange(-5, 5)
    pq.write_table(pa.table({"x": x, "y": -2 * x + 3, "label": [f"p{i}" for i in range(10)]}), path)
    result = gdflow(
        "run", "--json", "--data", str(path), "--data-dir", str(tmp_path / "d"), api=prefect_api
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    stored = pq.read_table(payload["dataset"]["path"])
    assert stored.schema.names == ["x", "y"]
    assert np.array_equal(stored["x"].to_numpy(), x.astype(np.float32))
    assert "Traceback" not in result.stderr


def test_names_from_the_user_are_shown_as_text_not_markup(tmp_path) -> None:
    """A `$` would be mathematics to matplotlib and HTML would be markup to the UI."""
    column = "<img src=x onerror=alert(1)>"
    source = user_file(tmp_path / "cost in $^$ (odd).parquet", **{column: np.zeros(200)})
    _, states, run_id = run(tmp_path / "data", data=str(source), x_col=column, y_col="b")
    assert states["publish-report"] == "Completed"
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gd-comparison"])),
            flow_run_filter=FlowRunFilter(id={"any_": [run_id]}),
        )
    assert column not in artifact.data
    assert "&lt;img src=x onerror=alert(1)&gt;" in artifact.data
    assert "cost in $^$ (odd).parquet" in artifact.data
