"""The data set tasks: synthetic data generated and stored as Parquet, or the user's file
copied in."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks import paths
from tasks.data.dataset import DatasetRef
from tasks.data.userfile import SourceFile, ingest
from tasks.params import MAX_SAMPLES, DataSpec
from tasks.policies import RETRY_IO, intact_output, time_limit


def _dataset_file(spec: DataSpec, data_dir: str) -> Path:
    return paths.dataset_path(Path(data_dir), spec)


def _user_copy(source: SourceFile, x_col: str, y_col: str, data_dir: str) -> Path:
    return paths.user_dataset_path(Path(data_dir), source, x_col, y_col)


# Deterministic work: no retries (a second try fails the same way). Sized for the largest
# data set the parameters allow, which takes about 10 min here.
@task(
    cache_policy=intact_output(_dataset_file),
    persist_result=True,
    task_run_name="generate-n{spec.n_samples}-seed{spec.seed}",
    timeout_seconds=time_limit(MAX_SAMPLES),
)
def generate_dataset(spec: DataSpec, data_dir: str) -> DatasetRef:
    """Generate the synthetic data set and store it as Parquet."""
    from tasks.data.synthetic import write_synthetic  # torch: only when data is generated

    target = _dataset_file(spec, data_dir)
    ref = write_synthetic(spec, target)
    get_run_logger().info(
        "Generated %s rows -> %s (sha256 %s)", f"{ref.file.rows:,}", target, ref.file.sha256[:12]
    )
    return ref


# Reads a file that may be remote, twice (its hash, then the copy); sized for the largest data
# set the parameters allow.
@task(
    cache_policy=intact_output(_user_copy),
    persist_result=True,
    task_run_name="load-data",
    timeout_seconds=time_limit(MAX_SAMPLES, passes=2),
    **RETRY_IO,
)
def load_user_data(source: SourceFile, x_col: str, y_col: str, data_dir: str) -> DatasetRef:
    """Check the user's Parquet file and store its x and y columns as the run's data set."""
    ref = ingest(source, x_col, y_col, _user_copy(source, x_col, y_col, data_dir))
    get_run_logger().info("Loaded %s -> %s", ref.source, ref.file.path)
    return ref
