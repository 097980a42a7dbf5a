"""What gdflow keeps in a data directory, by area, and removing it: all, or what is older than
an age.

The areas are Prefect's cache records, the data sets, the histories, the reports, and the
temporary files that interrupted writes leave behind. Files of other programs are never listed.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import InputError
from tasks.paths import MANIFEST_SUFFIX, cache_dir, datasets_dir, histories_dir, reports_dir

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_TEMP = re.compile(r"^\..+\.tmp$")  # what an interrupted atomic write leaves behind
INTERRUPTED = "interrupted writes"


@dataclass(frozen=True)
class Entry:
    """Files that are listed and removed together, e.g. a data file and its manifest."""

    area: str
    paths: tuple[Path, ...]
    size: int
    mtime: float


@dataclass
class Area:
    """How many entries an area holds, their size in bytes, and the age of the oldest."""

    entries: int = 0
    bytes: int = 0
    oldest_s: float = 0.0


def parse_age(text: str) -> float:
    """Seconds in an age such as 90s, 30m, 12h, 7d or 2w."""
    match = _AGE.match(text)
    if not match:
        raise InputError(
            f"invalid --older-than {text!r}; give a number and a unit (s, m, h, d or w), e.g. 7d"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:  # removed meanwhile, e.g. by a run finishing a write
        return None


def _entry(area: str, paths: list[Path]) -> Entry:
    files = [f for p in paths for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file()]
    contents = [s for s in map(_stat, files) if s is not None]
    stats = contents + [s for s in map(_stat, paths) if s is not None]
    size = sum(s.st_size for s in contents)
    return Entry(area, tuple(paths), size, max((s.st_mtime for s in stats), default=0.0))


def _files(area: str, folder: Path) -> list[Entry]:
    """Entries of a folder of files: a file with its manifest is one entry."""
    entries = []
    for path in sorted(folder.glob("*")):  # none where the folder is missing
        if _TEMP.match(path.name):
            entries.append(_entry(INTERRUPTED, [path]))
        elif path.name.endswith(MANIFEST_SUFFIX):
            data = path.with_name(path.name.removesuffix(MANIFEST_SUFFIX))
            if not data.exists():
                entries.append(_entry(area, [path]))  # a manifest whose file is gone
        elif path.is_file():
            manifest = path.with_name(path.name + MANIFEST_SUFFIX)
            entries.append(_entry(area, [path, manifest] if manifest.exists() else [path]))
    return entries


def collect(data_dir: Path) -> list[Entry]:
    """Everything gdflow cached or produced under `data_dir`, as removable entries."""
    return [
        *_files("cache records", cache_dir(data_dir)),
        *_files("datasets", datasets_dir(data_dir)),
        *_files("histories", histories_dir(data_dir)),
        *(_entry("reports", [p]) for p in sorted(reports_dir(data_dir).glob("*")) if p.is_dir()),
    ]


def delete(entry: Entry) -> None:
    """Delete an entry's files, the data file before its manifest (never an intact-looking half)."""
    for path in entry.paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def select(root: Path, min_age: float, remove: bool = False) -> tuple[list[Entry], dict[str, Area]]:
    """The entries under `root` last written at least `min_age` seconds ago (removed if
    `remove`), and their areas."""
    if root.exists() and not root.is_dir():
        raise InputError(f"--data-dir {root} is a file; give gdflow's data directory")
    now = time.time()
    chosen = [e for e in collect(root) if now - e.mtime >= min_age]
    for entry in chosen if remove else []:
        delete(entry)
    return chosen, summarize(chosen, now)


def summarize(entries: list[Entry], now: float) -> dict[str, Area]:
    """Entries, bytes and oldest age per area, in the order the areas first appear."""
    areas: dict[str, Area] = {}
    for entry in entries:
        area = areas.setdefault(entry.area, Area())
        area.entries += 1
        area.bytes += entry.size
        area.oldest_s = max(area.oldest_s, now - entry.mtime)
    return areas


def format_size(size: int) -> str:
    """A size in bytes as people read it: 512 B, 3.4 MiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} B"


def format_age(seconds: float) -> str:
    """An age in its largest whole unit: 45s, 12m, 3h, 10d, 2w."""
    for unit in "wdhm":
        if seconds >= _UNITS[unit]:
            return f"{seconds / _UNITS[unit]:.0f}{unit}"
    return f"{seconds:.0f}s"
