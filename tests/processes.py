"""gdflow run as a user runs it, in a real process, and what it leaves on disk."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tasks.digest import code_version, stable_digest
from tasks.params import RunParams
from tasks.paths import MANIFEST_SUFFIX, PROJECT_ROOT
from tasks.storage import is_intact, read_manifest, sha256_file


def command_env(data_dir: Path | None, api: str | None, **extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("PREFECT_API_URL", None)
    if api:
        env["PREFECT_API_URL"] = api
    if data_dir is not None:
        env["GDFLOW_DATA_DIR"] = str(data_dir)
    return env


def gdflow_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def gdflow(
    *args: str,
    data_dir: Path | None = None,
    api: str | None = None,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 300,
    **extra_env: str,
) -> subprocess.CompletedProcess[str]:
    """Run `gdflow ARGS` to the end; a server only when `api` is given."""
    return subprocess.run(
        gdflow_args(*args),
        capture_output=True,
        text=True,
        env=command_env(data_dir, api, **extra_env),
        cwd=PROJECT_ROOT,
        timeout=timeout,
        preexec_fn=preexec_fn,
        check=False,
    )


def start(
    *args: str, data_dir: Path, api: str | None = None, **extra_env: str
) -> subprocess.Popen[str]:
    """Start `gdflow ARGS` without waiting for it."""
    return subprocess.Popen(
        gdflow_args(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=command_env(data_dir, api, **extra_env),
        cwd=PROJECT_ROOT,
    )


def snapshot(root: Path) -> dict[str, str]:
    """Content hash of every file under `root`, by relative path."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The run failed with `code` and said so in exactly one line naming `words` and a fix."""
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("gdflow: error: "), line
    assert "; " in line, f"no fix named: {line}"
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert result.stdout == ""
    return line


def trusted_but_wrong(root: Path) -> list[str]:
    """Files a reader would accept (intact manifest) whose bytes differ from the recorded hash."""
    wrong = []
    for parquet in root.rglob("*.parquet"):
        record = read_manifest(parquet)
        if is_intact(parquet) and record is not None and sha256_file(parquet) != record.sha256:
            wrong.append(str(parquet))
    return wrong


def leftovers(root: Path) -> list[str]:
    """What a failed write may not leave behind: temp files and files without an intact manifest."""
    found = [str(p) for p in root.rglob(".*.tmp")]
    found += [f"{p} (not intact)" for p in root.rglob("*.parquet") if not is_intact(p)]
    found += [
        f"{m} (manifest without its file)"
        for m in root.rglob(f"*{MANIFEST_SUFFIX}")
        if not m.with_name(m.name.removesuffix(MANIFEST_SUFFIX)).exists()
    ]
    return found + trusted_but_wrong(root)


def dataset_key(params: RunParams, data_dir: Path) -> str:
    """The cache key, and so the lock file name, of a run's synthetic data set task."""
    inputs = {"spec": params.data_spec(), "data_dir": str(data_dir)}
    return stable_digest("generate_dataset", inputs, code_version())


def processes_with(marker: str) -> list[str]:
    """Command lines of the running processes whose environment holds `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone, or not ours to read
            continue
    return found


def free_port() -> int:
    """A loopback port no one listens on at the moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
