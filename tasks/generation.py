"""Stage 1 as a Prefect task: generate the synthetic data set and store it as Parquet."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.caching import STABLE_INPUTS
from tasks.dataset import DatasetRef, write_dataset
from tasks.params import DataSpec
from tasks.paths import dataset_path


@task(
    cache_policy=STABLE_INPUTS,
    persist_result=True,
    task_run_name="generate-n{spec.n_samples}-seed{spec.seed}",
)
def generate_dataset(spec: DataSpec, data_dir: str) -> DatasetRef:
    """Generate the synthetic data set and store it as Parquet."""
    target = dataset_path(Path(data_dir), spec)
    ref = write_dataset(spec, target)
    get_run_logger().info(
        "Generated %s rows -> %s (sha256 %s)", f"{ref.file.rows:,}", target, ref.file.sha256[:12]
    )
    return ref
