"""A damaged data set or history is recomputed with one warning, never served and never fatal."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

from flows.comparison import gd_comparison
from tasks.params import RunParams
from tasks.paths import manifest_path

pytestmark = pytest.mark.usefixtures("prefect_api")

TRAININGS = ("train-bgd", "train-sgd", "train-minibatch")


def run(data_dir: Path) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Run the default flow; return its result, {task-run name prefix: state name} and the
    messages of its warnings."""
    state = gd_comparison(params=RunParams(data_dir=str(data_dir)), return_state=True)
    assert state.is_completed(), state.message
    APILogWorker.drain_all(timeout=10)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    states = {r.name.split("-lr")[0]: r.state.name for r in runs}
    warnings = [log.message for log in logs if log.level >= 30]
    return state.result().model_dump(), states, warnings


def flip_a_byte_keeping_size_and_time(path: Path) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def replace_by_a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside.txt").write_text("not gdflow's")


def garble_the_manifest(path: Path) -> None:
    manifest_path(path).write_text("{not json")


def delete_the_file(path: Path) -> None:
    path.unlink()


def truncate_it(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def replace_by_a_symlink(path: Path) -> None:
    """A link to an exact copy elsewhere, with the same size and time: not the file written."""
    elsewhere = path.parent.parent.parent / "elsewhere" / path.name
    elsewhere.parent.mkdir()
    shutil.copy2(path, elsewhere)
    path.unlink()
    path.symlink_to(elsewhere)


# Each damage, and what the warning says of the file.
DAMAGE = {
    flip_a_byte_keeping_size_and_time: "changed since it was written (content hash differs)",
    replace_by_a_directory: "is not a regular file",
    garble_the_manifest: "has no valid manifest",
    delete_the_file: "is missing",
    truncate_it: "changed since it was written (size or time differs)",
    replace_by_a_symlink: "is not a regular file",
}


def _numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The result less what differs between runs of the same numbers: times and run names."""
    methods = {n: {**m, "wall_time_s": None} for n, m in result["methods"].items()}
    return {**result, "methods": methods, "flow_run_name": None}


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
@pytest.mark.parametrize("stored", ["dataset", "history"])
def test_a_damaged_file_is_recomputed_with_a_warning_then_cached_again(
    tmp_path: Path, stored: str, damage: Callable[[Path], None]
) -> None:
    data_dir = tmp_path / "data"
    fresh, _, _ = run(data_dir)
    path = Path(
        fresh["dataset"]["path"] if stored == "dataset" else fresh["methods"]["bgd"]["history"]
    )
    original = path.read_bytes()
    damage(path)

    healed, states, warnings = run(data_dir)
    assert warnings == [f"{path} {DAMAGE[damage]}; recomputing it"]
    recomputed = {"generate-n100-seed0", *TRAININGS} if stored == "dataset" else {"train-bgd"}
    assert {name for name, state in states.items() if state == "Completed"} == {
        *recomputed,
        "publish-report",
        "publish-trend",
    }
    assert not path.is_symlink()
    assert path.read_bytes() == original
    assert _numbers(healed) == _numbers(fresh)

    again, states, warnings = run(data_dir)
    assert warnings == []
    assert {states["generate-n100-seed0"], *(states[t] for t in TRAININGS)} == {"Cached"}
    assert _numbers(again) == _numbers(healed)
