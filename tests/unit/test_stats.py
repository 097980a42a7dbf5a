"""The data set's moments: the same bits on any machine, whatever its thread count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = (
    "import numpy as np; from tasks.stats import moments; "
    "rng = np.random.default_rng(5); x = rng.standard_normal(300_000).astype(np.float32); "
    "print(repr(moments(x, 3 * x + rng.standard_normal(300_000).astype(np.float32))))"
)


@pytest.mark.parametrize("variable", ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"])
def test_moments_do_not_depend_on_the_number_of_threads(variable: str) -> None:
    printed = {
        subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env={**os.environ, variable: threads},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for threads in ("1", "2", "4")
    }
    assert len(printed) == 1, printed
