"""`gdflow cache`: what the project's cache holds, and clearing it, all or older than an age."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from tasks.params import InputError, RunParams
from tasks.paths import cache_dir, histories_dir, locks_dir, reports_dir, resolve_data_dir

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


def parse_age(text: str) -> float:
    """Seconds in an age such as 90s, 30m, 12h, 7d or 2w."""
    match = _AGE.match(text)
    if not match:
        raise InputError(
            f"invalid --older-than {text!r}; give a number and a unit (s, m, h, d or w), e.g. 7d"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def _entry(area: str, paths: list[Path]) -> Entry:
    files = [f for p in paths for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file()]
    contents = [s for s in map(_stat, files) if s is not None]
    stats = contents + [s for s in map(_stat, paths) if s is not None]
    size = sum(s.st_size for s in contents)
    return Entry(area, tuple(paths), size, max((s.st_mtime for s in stats), default=0.0))


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:  # removed meanwhile, e.g. by a run finishing a write
        return None


def _files(area: str, folder: Path) -> list[Entry]:
    """Entries of a folder of files: a file with its manifest is one entry."""
    from tasks.storage import MANIFEST_SUFFIX  # pyarrow: loaded only when the command runs

    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.iterdir()):
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


def _reports(folder: Path) -> list[Entry]:
    if not folder.is_dir():
        return []
    return [_entry("reports", [p]) for p in sorted(folder.iterdir()) if p.is_dir()]


def _locks(folder: Path) -> list[Entry]:
    """Lock files that no live process holds (a held one is never listed or removed)."""
    from tasks.safecache import LOCK_SUFFIX, ProcessLockManager

    if not folder.is_dir():
        return []
    manager = ProcessLockManager(folder)
    return [
        _entry("locks", [p])
        for p in sorted(folder.glob(f"*{LOCK_SUFFIX}"))
        if not manager.is_locked(p.name.removesuffix(LOCK_SUFFIX))
    ]


def collect(data_dir: Path) -> list[Entry]:
    """Everything gdflow cached or produced under `data_dir`, as removable entries."""
    return [
        *_files("cache records", cache_dir(data_dir)),
        *_files("datasets", data_dir / "datasets"),
        *_files("histories", histories_dir(data_dir)),
        *_reports(reports_dir(data_dir)),
        *_locks(locks_dir(data_dir)),
    ]


def remove(entry: Entry) -> None:
    """Delete an entry's files, the data file before its manifest (never an intact-looking half)."""
    for path in entry.paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _size(size: int) -> str:
    value, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{size} B" if unit == "B" else f"{value:,.1f} {unit}"


def _age(seconds: float) -> str:
    for unit, length in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{seconds:.0f}s"


def _summary(entries: list[Entry], now: float) -> dict[str, dict[str, float]]:
    areas: dict[str, dict[str, float]] = {}
    for e in entries:
        area = areas.setdefault(e.area, {"entries": 0, "bytes": 0, "oldest_s": 0.0})
        area["entries"] += 1
        area["bytes"] += e.size
        area["oldest_s"] = max(area["oldest_s"], now - e.mtime)
    return areas


def _print_table(title: str, areas: dict[str, dict[str, float]]) -> None:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("area", "entries", "size", "oldest"):
        table.add_column(column, justify="left" if column == "area" else "right")
    for name, a in areas.items():
        table.add_row(name, f"{a['entries']:,}", _size(int(a["bytes"])), _age(a["oldest_s"]))
    total = sum(int(a["bytes"]) for a in areas.values())
    table.add_row("total", f"{sum(int(a['entries']) for a in areas.values()):,}", _size(total), "")
    Console(width=100).print(table)


def cache(
    data_dir: Annotated[
        str | None,
        typer.Option("--data-dir", help=RunParams.model_fields["data_dir"].description),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove the entries (all, or those --older-than AGE).")
    ] = False,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than", metavar="AGE", help="Only entries last written AGE ago, e.g. 12h, 7d."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show what the cache holds (entries, size, age per area); --clear removes entries."""
    min_age = parse_age(older_than) if older_than is not None else 0.0
    root = resolve_data_dir(data_dir)
    now = time.time()
    chosen = [e for e in collect(root) if now - e.mtime >= min_age]
    if clear:
        for entry in chosen:
            remove(entry)
    areas = _summary(chosen, now)
    if as_json:
        print(json.dumps({"data_dir": str(root), "removed" if clear else "entries": areas}))
        return
    scope = f" older than {older_than}" if older_than else ""
    verb = "Removed from" if clear else "Cached in"
    if not chosen:
        print(f"{verb} {root}{scope}: nothing")
        return
    _print_table(f"{verb} {root}{scope}", areas)
