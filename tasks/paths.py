"""Where gdflow keeps its files: one data directory holding data, results and cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tasks import keys
from tasks.keys import dumps_metadata, stable_digest

if TYPE_CHECKING:
    from tasks.params import DataSpec, RunParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "GDFLOW_DATA_DIR"


def resolve_data_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the given value, else $GDFLOW_DATA_DIR, else the project's data/."""
    chosen = value or os.environ.get(DATA_DIR_ENV) or PROJECT_ROOT / "data"
    return Path(chosen).expanduser().resolve()


def cache_dir(data_dir: Path) -> Path:
    """Prefect result storage: cached task results and their cache records."""
    return data_dir / "cache"


def locks_dir(data_dir: Path) -> Path:
    return data_dir / "locks"


def reports_dir(data_dir: Path) -> Path:
    return data_dir / "reports"


def histories_dir(data_dir: Path) -> Path:
    return data_dir / "histories"


def report_name(params: RunParams) -> str:
    """Same parameters, same report folder (a re-run replaces it)."""
    relevant = params.model_dump(mode="json", exclude={"refresh", "data_dir"})
    return f"{params.preset}-{stable_digest(relevant)[:10]}"


def spec_digest(spec: DataSpec) -> str:
    payload = dumps_metadata({"spec": spec.model_dump(), "code": keys.CODE_VERSION})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def dataset_path(data_dir: Path, spec: DataSpec) -> Path:
    """Where the synthetic data set of `spec` lives (same spec and code, same path)."""
    return data_dir / "datasets" / f"synthetic-{spec_digest(spec)}.parquet"
