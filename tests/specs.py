"""Specs for tests, built the way a run builds them: the run options' defaults, some changed."""

from __future__ import annotations

from typing import Any

from tasks.params import DataSpec, SharedParams


def data_spec(seed: int = 0, **options: Any) -> DataSpec:
    """The synthetic data set of a run with these options (the tutorial's data by default)."""
    return SharedParams(**options).data_spec_for(seed)
