"""Test isolation: no test reads or writes the user's Prefect home, result storage or data/."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SANDBOX = Path(tempfile.mkdtemp(prefix="gdflow-tests-"))
os.environ["PREFECT_HOME"] = str(_SANDBOX / "prefect-home")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SANDBOX / "default-result-storage")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["GDFLOW_DATA_DIR"] = str(_SANDBOX / "data")
os.environ.pop("PREFECT_API_URL", None)
# Lock files live in the temporary directory: the tests' own, for them and their subprocesses.
(_SANDBOX / "tmp").mkdir()
os.environ["TMPDIR"] = str(_SANDBOX / "tmp")
tempfile.tempdir = None


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One real Prefect server (the test harness) for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def default_storage() -> Path:
    """Prefect's default result storage, which gdflow must never write to."""
    return Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
