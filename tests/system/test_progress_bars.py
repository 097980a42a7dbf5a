"""The terminal progress bar of a long training, as a user at a terminal sees it."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

from tasks.paths import PROJECT_ROOT
from tests.processes import command_env, gdflow_args

# The reference engine's per-point SGD on 100,000 points: about 2 s per epoch here, so the
# training outlives the 3 s after which its bar appears.
LONG_TRAINING = ("--engine", "reference", "--methods", "sgd", "--n-samples", "100000")


def _run_on_a_terminal(tmp_path, api: str, *args: str, **env: str) -> str:
    """Run `gdflow ARGS` with stderr on a pseudo-terminal; return what the terminal showed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        gdflow_args(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=command_env(tmp_path / "data", api, COLUMNS="120", **env),
        cwd=PROJECT_ROOT,
    )
    os.close(terminal)
    shown, deadline = bytearray(), time.monotonic() + 240
    while time.monotonic() < deadline:
        if not select.select([controller], [], [], 1.0)[0]:
            continue
        try:
            block = os.read(controller, 1 << 16)
        except OSError:  # the process closed its end
            break
        if not block:
            break
        shown += block
    os.close(controller)
    if process.poll() is None:
        process.kill()
    assert process.wait(timeout=30) == 0, shown.decode(errors="replace")[-3000:]
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))


def test_a_long_training_shows_a_progress_bar_on_a_terminal(tmp_path, prefect_api) -> None:
    shown = _run_on_a_terminal(tmp_path, prefect_api, "run", *LONG_TRAINING, "--epochs", "3")
    bars = re.findall(r"train-sgd-lr0\.01 \(3 epochs\) .*? (\d+)% loss \d", shown)
    assert bars, shown[-3000:]


def test_a_short_training_shows_no_bar_and_no_telemetry_notice(tmp_path, prefect_api) -> None:
    # A Prefect home of its own: Prefect shows its notice once per home.
    home = str(tmp_path / "prefect-home")
    shown = _run_on_a_terminal(tmp_path, prefect_api, "run", "--methods", "sgd", PREFECT_HOME=home)
    assert "Finished in state Completed" in shown
    assert "epochs) " not in shown, shown[-3000:]
    assert "usage data" not in shown, shown[-3000:]
