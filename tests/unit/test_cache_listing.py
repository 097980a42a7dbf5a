"""The data directory's contents by area, as `gdflow cache` lists and clears them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from flows.cache_listing import (
    INTERRUPTED,
    collect,
    delete,
    format_age,
    format_size,
    parse_age,
    summarize,
)
from tasks.errors import InputError
from tasks.paths import MANIFEST_SUFFIX

DAY = 86400


def _write(path: Path, size: int, days_old: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    then = time.time() - days_old * DAY
    os.utime(path, (then, then))
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory with one of each kind of thing gdflow leaves, and a file of the user's."""
    _write(tmp_path / "datasets" / "synthetic-a.parquet", 100, days_old=3)
    _write(tmp_path / "datasets" / f"synthetic-a.parquet{MANIFEST_SUFFIX}", 20, days_old=3)
    _write(tmp_path / "datasets" / f"gone.parquet{MANIFEST_SUFFIX}", 20)  # its file was removed
    _write(tmp_path / "datasets" / ".synthetic-b.parquet.123.tmp", 50, days_old=1)
    _write(tmp_path / "histories" / "sgd-a.parquet", 70)
    _write(tmp_path / "histories" / f"sgd-a.parquet{MANIFEST_SUFFIX}", 10)
    report = _write(tmp_path / "reports" / "default-a" / "comparison.png", 300, days_old=10)
    os.utime(report.parent, (report.stat().st_atime, report.stat().st_mtime))
    _write(tmp_path / "cache" / "0123abcd", 40)
    _write(tmp_path / "notes.txt", 5)
    return tmp_path


def test_every_area_is_listed_with_a_file_and_its_manifest_as_one_entry(data_dir: Path) -> None:
    areas = summarize(collect(data_dir), time.time())
    entries = {name: (a.entries, a.bytes) for name, a in areas.items()}
    assert entries == {
        "cache records": (1, 40),
        "datasets": (2, 140),
        INTERRUPTED: (1, 50),
        "histories": (1, 80),
        "reports": (1, 300),
    }
    assert areas["reports"].oldest_s == pytest.approx(10 * DAY, rel=0.01)
    assert areas["datasets"].oldest_s == pytest.approx(3 * DAY, rel=0.01)


def test_removing_an_entry_removes_its_files_and_nothing_else(data_dir: Path) -> None:
    for entry in collect(data_dir):
        if entry.area in ("datasets", "reports"):
            delete(entry)
    left = {str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file()}
    assert left == {
        "datasets/.synthetic-b.parquet.123.tmp",
        "histories/sgd-a.parquet",
        f"histories/sgd-a.parquet{MANIFEST_SUFFIX}",
        "cache/0123abcd",
        "notes.txt",
    }


def test_a_missing_data_directory_holds_nothing(tmp_path: Path) -> None:
    assert collect(tmp_path / "nowhere") == []


def test_ages_take_a_number_and_a_unit() -> None:
    assert parse_age("90s") == 90
    assert parse_age("1.5h") == 5400
    assert parse_age(" 7d ") == 7 * DAY
    assert parse_age("2w") == 14 * DAY
    for bad in ("-1d", "7x", "d", "7", ""):
        with pytest.raises(InputError, match="--older-than"):
            parse_age(bad)


def test_sizes_and_ages_read_in_their_largest_unit() -> None:
    assert (format_size(512), format_size(3 * 2**20 + 2**19)) == ("512 B", "3.5 MiB")
    assert format_size(5 * 2**30) == "5.0 GiB"
    assert (format_age(45), format_age(90 * 60), format_age(3 * DAY)) == ("45s", "2h", "3d")
