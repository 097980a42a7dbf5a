"""`gdflow sweep` as a user runs it: bad sweeps refused in one line, a local Dask cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.processes import gdflow


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--lrs", "0.1,x"], "--lrs"),
        (["--batch-sizes", "1,500"], "--batch-sizes"),
        (["--seeds", "-1"], "--seeds"),
        (["--sgd-lr", "0.1"], "--sgd-lr"),
        (["--dask-address", "localhost"], "--dask-address"),
    ],
)
def test_cli_refuses_bad_sweeps_in_one_line(tmp_path, args: list[str], names: str) -> None:
    result = gdflow("sweep", *args, data_dir=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gdflow: error:")
    assert names in lines[0]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_sweep_on_a_new_local_dask_cluster(tmp_path, prefect_api) -> None:
    result = gdflow(
        "sweep",
        "--dask",
        "--dask-workers",
        "2",
        "--json",
        "--lrs",
        "0.01,0.2",
        "--batch-sizes",
        "1,n",
        "--seeds",
        "5",
        data_dir=tmp_path,
        api=prefect_api,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["flow_run"]["state"] == "Completed"
    assert (payload["cells"], payload["diverged"]) == (4, 2)
    assert pq.read_table(payload["histories"]).num_rows == 4 * 21
    assert Path(payload["data_dir"]) == tmp_path.resolve()


def test_dask_without_its_extra_says_how_to_install_it(tmp_path) -> None:
    """A Python where prefect_dask cannot be imported, as without `pip install -e '.[dask]'`."""
    blocker = tmp_path / "missing" / "prefect_dask"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named prefect_dask')\n")
    result = gdflow("sweep", "--dask", data_dir=tmp_path / "data", PYTHONPATH=str(blocker.parent))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install -e '.[dask]'" in lines[0]
    assert not (tmp_path / "data").exists()
