"""`gdflow cache`: what the cache holds, clearing it by age, and runs noticing what is gone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter

from flows.comparison import gd_comparison
from tasks.params import RunParams
from tests.processes import assert_one_line_error, gdflow

DAY = 86400


def run_states(data_dir: Path) -> dict[str, str]:
    """Run the flow; return {task-run name prefix: state name}."""
    state = gd_comparison(params=RunParams(data_dir=str(data_dir)), return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
        )
    return {r.name.split("-lr")[0]: r.state.name for r in runs}


def cache_json(data_dir: Path, *args: str) -> dict[str, Any]:
    result = gdflow("cache", "--json", "--data-dir", str(data_dir), *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def age(paths: list[Path], days: float) -> None:
    then = time.time() - days * DAY
    for path in paths:
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.utime(p, (then, then))


@pytest.mark.usefixtures("prefect_api")
def test_the_cache_is_shown_by_area_and_cleared_by_age(tmp_path) -> None:
    data_dir = tmp_path / "data"
    run_states(data_dir)
    shown = cache_json(data_dir)["entries"]
    assert shown["datasets"]["entries"] == 1
    assert shown["histories"]["entries"] == 3
    assert shown["reports"]["entries"] == 1
    assert shown["cache records"]["entries"] >= 4
    assert set(shown) == {"cache records", "datasets", "histories", "reports"}
    assert all(area["bytes"] > 0 for area in shown.values())

    bgd = next((data_dir / "histories").glob("bgd-*.parquet"))
    interrupted = data_dir / "datasets" / ".synthetic-0.parquet.abc123.tmp"
    interrupted.write_bytes(b"half a file")
    age([bgd, bgd.with_name(bgd.name + ".manifest.json"), interrupted], days=10)
    removed = cache_json(data_dir, "--clear", "--older-than", "7d")["removed"]
    assert {area: r["entries"] for area, r in removed.items()} == {
        "histories": 1,
        "interrupted writes": 1,
    }
    assert removed["histories"]["oldest_s"] == pytest.approx(10 * DAY, rel=0.01)
    assert not bgd.exists()
    assert not interrupted.exists()
    assert len(list((data_dir / "histories").glob("*.parquet"))) == 2

    states = run_states(data_dir)  # the removed history is noticed and trained again
    assert states["train-bgd"] == "Completed"
    assert states["train-sgd"] == states["train-minibatch"] == "Cached"


@pytest.mark.usefixtures("prefect_api")
def test_clearing_everything_makes_the_next_run_compute_everything(tmp_path) -> None:
    data_dir = tmp_path / "data"
    run_states(data_dir)
    (data_dir / "keep-me.txt").write_text("not gdflow's")
    shown = gdflow("cache", "--data-dir", str(data_dir))
    assert shown.returncode == 0, shown.stderr
    assert f"Cached in {data_dir}" in shown.stdout
    assert "histories" in shown.stdout
    assert "total" in shown.stdout
    result = gdflow("cache", "--clear", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "Removed from" in result.stdout
    assert cache_json(data_dir)["entries"] == {}
    assert (data_dir / "keep-me.txt").read_text() == "not gdflow's"
    assert set(run_states(data_dir).values()) == {"Completed"}


def test_an_empty_data_directory_holds_nothing(tmp_path) -> None:
    result = gdflow("cache", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Cached in {tmp_path}: nothing"


def test_a_malformed_age_is_refused(tmp_path) -> None:
    result = gdflow("cache", "--clear", "--older-than", "7x", "--data-dir", str(tmp_path))
    assert_one_line_error(result, 2, "--older-than '7x'", "e.g. 7d")


def test_a_data_dir_that_is_a_file_is_refused(tmp_path) -> None:
    not_a_dir = tmp_path / "results.txt"
    not_a_dir.write_text("a file")
    result = gdflow("cache", "--clear", "--data-dir", str(not_a_dir))
    assert_one_line_error(result, 2, str(not_a_dir), "is a file")
    assert not_a_dir.read_text() == "a file"
