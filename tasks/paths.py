"""Every file name gdflow makes: one data directory holds the data sets, histories, reports and
cache records, each named from the inputs that decide its content."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from tasks.digest import code_version, stable_digest

if TYPE_CHECKING:
    from tasks.data.dataset import DatasetRef
    from tasks.data.userfile import SourceFile
    from tasks.params import DataSpec, MethodSpec, RunParams, SweepParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "GDFLOW_DATA_DIR"
MANIFEST_SUFFIX = ".manifest.json"


def resolve_data_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the given value, else $GDFLOW_DATA_DIR, else the project's data/."""
    chosen = value or os.environ.get(DATA_DIR_ENV) or PROJECT_ROOT / "data"
    return Path(chosen).expanduser().resolve()


def cache_dir(data_dir: Path) -> Path:
    """Prefect result storage: the cache records of gdflow's tasks."""
    return data_dir / "cache"


def datasets_dir(data_dir: Path) -> Path:
    return data_dir / "datasets"


def histories_dir(data_dir: Path) -> Path:
    return data_dir / "histories"


def reports_dir(data_dir: Path) -> Path:
    return data_dir / "reports"


def manifest_path(path: Path) -> Path:
    """The manifest beside a stored file: its content hash, size and time on disk."""
    return path.with_name(path.name + MANIFEST_SUFFIX)


def dataset_path(data_dir: Path, spec: DataSpec) -> Path:
    """The synthetic data set of `spec` (same spec and code, same file)."""
    digest = stable_digest(spec, code_version())[:16]
    return datasets_dir(data_dir) / f"synthetic-{digest}.parquet"


def user_dataset_path(data_dir: Path, source: SourceFile, x_col: str, y_col: str) -> Path:
    """The copy of this version of the user's file (same file and columns, same copy)."""
    digest = stable_digest(source, x_col, y_col, code_version())[:16]
    return datasets_dir(data_dir) / f"user-{digest}.parquet"


def history_path(data_dir: Path, dataset: DatasetRef, spec: MethodSpec) -> Path:
    """The history of `spec` trained on `dataset` (same inputs and code, same file)."""
    digest = stable_digest(dataset.file.sha256, spec, code_version())[:16]
    return histories_dir(data_dir) / f"{spec.method.value}-{digest}.parquet"


class ReportFiles(NamedTuple):
    """The files of one report folder."""

    png: Path
    svg: Path
    drawn_from: Path  # the digest of what the figure was drawn from
    summary: Path  # a run's results as JSON
    histories: Path  # a sweep's histories, every cell's, in one Parquet file


def report_files(data_dir: Path, params: RunParams | SweepParams) -> ReportFiles:
    """The report of a run or sweep: same parameters, same folder (a re-run replaces it)."""
    relevant = params.model_dump(mode="json", exclude={"refresh", "data_dir"})
    kind = getattr(params, "preset", "sweep")
    folder = reports_dir(data_dir) / f"{kind}-{stable_digest(relevant)[:10]}"
    figure = "sweep" if kind == "sweep" else "comparison"
    return ReportFiles(
        folder / f"{figure}.png",
        folder / f"{figure}.svg",
        folder / "figure-inputs.json",
        folder / "summary.json",
        folder / "histories.parquet",
    )
