"""Wiring shared by the flows: how a cached task finds its result storage, locks and files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.paths import cache_dir, locks_dir
from tasks.safecache import intact_output_policy


def cached(task: Any, data_dir: Path, output: Path, refresh: bool) -> Any:
    """The task with result storage and locks under `data_dir`; rerun if `output` is not intact.

    Pass refresh=True only to recompute on purpose: it makes concurrent runs compute twice.
    """
    return task.with_options(
        cache_policy=intact_output_policy(output, cache_dir(data_dir), locks_dir(data_dir)),
        result_storage=cache_dir(data_dir),
        refresh_cache=refresh,
    )
