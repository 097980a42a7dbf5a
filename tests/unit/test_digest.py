"""Stable digests, and the code version that every cache key and stored file name carries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import digest
from tasks.params import RunParams
from tests.specs import data_spec


def test_a_digest_is_the_same_in_another_process() -> None:
    here = digest.stable_digest(RunParams(), data_spec(), [1.5, "x"], Path("/a"))
    script = (
        "from pathlib import Path; from tasks import digest; from tasks.params import *; "
        "print(digest.stable_digest(RunParams(), RunParams().data_spec(), [1.5, 'x'], Path('/a')))"
    )
    there = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert there == here


def test_a_digest_changes_with_any_part() -> None:
    base = digest.stable_digest(data_spec(), "train")
    assert digest.stable_digest(data_spec(seed=1), "train") != base
    assert digest.stable_digest(data_spec(), "generate") != base


@pytest.fixture
def package_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the tasks package that code_version reads instead of the real one."""
    copy = tmp_path / "tasks"
    shutil.copytree(
        Path(digest.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(digest, "_PACKAGE", copy)
    digest.code_version.cache_clear()
    yield copy
    digest.code_version.cache_clear()


@pytest.mark.parametrize(
    "module", ["training/kernels.py", "data/synthetic.py", "report/figure.py", "storage.py"]
)
def test_the_code_version_changes_with_any_module_of_the_package(package_copy, module) -> None:
    before = digest.code_version()
    with (package_copy / module).open("a") as source:
        source.write("\n# changed\n")
    digest.code_version.cache_clear()
    assert digest.code_version() != before


def test_a_new_module_changes_the_code_version(package_copy) -> None:
    before = digest.code_version()
    (package_copy / "training" / "adam.py").write_text("RATE = 0.001\n")
    digest.code_version.cache_clear()
    assert digest.code_version() != before
