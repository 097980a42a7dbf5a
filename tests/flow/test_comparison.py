"""The whole flow against a real Prefect server: outputs, caching, artifacts."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

from flows.comparison import gd_comparison
from tasks.params import RunParams

pytestmark = pytest.mark.usefixtures("prefect_api")


def run(data_dir: Path, **fields: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Run the flow; return its result and {task-run name prefix: state name}."""
    params = RunParams(data_dir=str(data_dir), **fields)
    state = gd_comparison(params=params, return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
        )
    return state.result().model_dump(), {r.name.split("-lr")[0]: r.state.name for r in runs}


def test_default_run_writes_every_output(tmp_path) -> None:
    result, states = run(tmp_path)
    assert states == {
        "generate-n100-seed0": "Completed",
        "train-bgd": "Completed",
        "train-sgd": "Completed",
        "train-minibatch": "Completed",
        "publish-report": "Completed",
        "publish-trend": "Completed",
    }
    assert Path(result["dataset"]["path"]).is_file()
    assert result["dataset"]["rows"] == 100
    for name in ("bgd", "sgd", "minibatch"):
        m = result["methods"][name]
        table = pq.read_table(m["history"])
        assert table.column_names[:4] == ["epoch", "loss", "w", "b"]
        assert table.num_rows == 21
        assert not m["diverged"]
        assert m["final_loss"] < 0.5
    figure = Path(result["figure"])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(result["figure_svg"]).is_file()
    summary = json.loads(Path(result["summary"]).read_text())
    assert {r["method"] for r in summary["results"]} == {"bgd", "sgd", "minibatch"}


def test_runs_of_the_same_parameters_get_their_own_names_and_telling_tags(tmp_path) -> None:
    first, _ = run(tmp_path, methods=["bgd", "sgd"])
    second, _ = run(tmp_path, methods=["bgd", "sgd"])
    assert first["flow_run_name"] != second["flow_run_name"]
    for result in (first, second):
        assert re.fullmatch(r"default-n100-e20-bgd\+sgd-[0-9a-f]{6}", result["flow_run_name"])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name={"any_": [first["flow_run_name"]]})
        )[0]
    assert {"preset:default", "method:bgd", "method:sgd", "data:synthetic"} <= set(flow_run.tags)
    assert "method:minibatch" not in flow_run.tags


def test_tutorial_preset_completes_with_sgd_marked_diverged(tmp_path) -> None:
    result, _ = run(tmp_path, preset="tutorial")
    assert set(result["methods"]) == {"bgd", "sgd"}
    sgd, bgd = result["methods"]["sgd"], result["methods"]["bgd"]
    assert sgd["diverged"]
    assert "0.0385" in sgd["reason"] or "0.038" in sgd["reason"]
    assert not bgd["diverged"]
    assert bgd["final_loss"] < 0.3
    assert math.isfinite(sgd["final_loss"])
    assert sgd["final_loss"] > 1e9


def _listing(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.exists() else set()


def test_repeat_run_is_cached_and_does_no_training(tmp_path, default_storage) -> None:
    before = _listing(default_storage)
    first, _ = run(tmp_path)
    mtimes = {n: Path(m["history"]).stat().st_mtime_ns for n, m in first["methods"].items()}
    dataset_mtime = Path(first["dataset"]["path"]).stat().st_mtime_ns
    figure_mtime = Path(first["figure"]).stat().st_mtime_ns
    second, states = run(tmp_path)
    assert Path(second["figure"]).stat().st_mtime_ns == figure_mtime  # not redrawn
    assert states["generate-n100-seed0"] == "Cached"
    assert {states[f"train-{n}"] for n in ("bgd", "sgd", "minibatch")} == {"Cached"}
    assert states["publish-report"] == "Completed"
    assert Path(second["dataset"]["path"]).stat().st_mtime_ns == dataset_mtime
    for n, m in second["methods"].items():
        assert Path(m["history"]).stat().st_mtime_ns == mtimes[n]
        assert m == first["methods"][n]
    # cache records live under the data directory, never in Prefect's default storage
    assert any((tmp_path / "cache").iterdir())
    assert _listing(default_storage) == before


def test_changing_one_step_size_retrains_only_that_method(tmp_path) -> None:
    first, _ = run(tmp_path)
    second, states = run(tmp_path, sgd_lr=0.005)
    assert second["figure"] != first["figure"]  # another report, drawn for these parameters
    assert Path(second["figure"]).is_file()
    assert states["generate-n100-seed0"] == "Cached"
    assert states["train-sgd"] == "Completed"
    assert states["train-bgd"] == states["train-minibatch"] == "Cached"
    assert states["publish-report"] == "Completed"


@pytest.mark.parametrize("damage", ["delete", "alter"])
def test_damaged_dataset_is_regenerated_and_retrained(tmp_path, damage: str) -> None:
    first, _ = run(tmp_path)
    path = Path(first["dataset"]["path"])
    if damage == "delete":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    second, states = run(tmp_path)
    assert states["generate-n100-seed0"] == "Completed"
    assert {states[f"train-{n}"] for n in ("bgd", "sgd", "minibatch")} == {"Completed"}
    assert second["dataset"]["sha256"] == first["dataset"]["sha256"]
    assert path.read_bytes() != b""
    third, states = run(tmp_path)
    assert states["generate-n100-seed0"] == "Cached"
    assert {states[f"train-{n}"] for n in ("bgd", "sgd", "minibatch")} == {"Cached"}
    # The same numbers; the wall times may be those of the first training (its record is reused).
    assert _without_times(third) == _without_times(second)


def _without_times(result: dict[str, Any]) -> dict[str, Any]:
    """The result less what differs between runs of the same numbers: times and run names."""
    methods = {n: {**m, "wall_time_s": None} for n, m in result["methods"].items()}
    return {**result, "methods": methods, "flow_run_name": None}


def test_deleted_history_is_retrained(tmp_path) -> None:
    first, _ = run(tmp_path)
    history = Path(first["methods"]["bgd"]["history"])
    figure_mtime = Path(first["figure"]).stat().st_mtime_ns
    original = history.read_bytes()
    history.unlink()
    second, states = run(tmp_path)
    assert states["train-bgd"] == "Completed"
    assert states["train-sgd"] == "Cached"
    assert Path(second["methods"]["bgd"]["history"]).read_bytes() == original
    # the same history, byte for byte: the figure drawn from it is still current
    assert Path(second["figure"]).stat().st_mtime_ns == figure_mtime


def test_numeric_code_change_invalidates_training(tmp_path, monkeypatch) -> None:
    run(tmp_path)
    monkeypatch.setattr("tasks.policies.code_version", lambda: "a-different-version")
    _, states = run(tmp_path)
    assert {states[f"train-{n}"] for n in ("bgd", "sgd", "minibatch")} == {"Completed"}


def test_refresh_recomputes_everything(tmp_path) -> None:
    run(tmp_path)
    _, states = run(tmp_path, refresh=True)
    assert set(states.values()) == {"Completed"}


def test_artifacts_are_published_and_versioned(tmp_path) -> None:
    run(tmp_path, n_samples=120)
    run(tmp_path, n_samples=120)
    with get_client(sync_client=True) as client:
        versions = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gd-comparison"]))
        )
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gd-losses"]))
        )
    assert len(versions) >= 2
    newest = max(versions, key=lambda a: a.created)
    assert newest.type == "markdown"
    assert "data:image/png;base64," in newest.data
    for name in ("bgd", "sgd", "minibatch"):
        assert f"| {name} " in newest.data
    assert tables
    rows = json.loads(max(tables, key=lambda a: a.created).data)
    assert len(rows) == 21
    assert {"epoch", "bgd", "sgd", "minibatch"} <= set(rows[0])
