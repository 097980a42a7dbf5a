"""Checks made before a run starts, and one line on a run that failed for a known reason."""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
from pathlib import Path

from tasks.params import InputError, RunParams
from tasks.paths import resolve_data_dir

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}
_REPORT_BYTES = 4 << 20  # figures, summary and cache records of one run, generously
_HISTORY_ROW_BYTES = 40


class BrokenEnvironment(RuntimeError):
    """The machine, not the request, is at fault: reported in one line, exit code 1."""


def check_run(params: RunParams) -> None:
    """Refuse, before any work, a run whose data, data directory or server cannot serve it."""
    data_dir = resolve_data_dir(params.data_dir)
    new_rows = _check_data(params) if params.data else _rows_to_generate(params, data_dir)
    check_data_dir(data_dir, new_rows * 8 + _history_bytes(params) + _REPORT_BYTES)
    check_server()


# Imports inside the checks below: a request refused earlier never waits for torch or pyarrow.


def _rows_to_generate(params: RunParams, data_dir: Path) -> int:
    from tasks.paths import dataset_path
    from tasks.storage import is_intact

    return 0 if is_intact(dataset_path(data_dir, params.data_spec())) else params.n_samples


def _check_data(params: RunParams) -> int:
    """The user's file: its footer, the batch size against its rows, then every value."""
    from tasks.datafile import check_values, inspect_source

    assert params.data is not None
    found = inspect_source(params.data, params.x_col, params.y_col)
    params.check_rows(found.rows)
    check_values(params.data, params.x_col, params.y_col)
    return found.rows


def _history_bytes(params: RunParams) -> int:
    return len(params.methods) * (params.epochs + 1) * _HISTORY_ROW_BYTES


def check_data_dir(data_dir: Path, needed: int) -> None:
    """Refuse a data directory that cannot be written to or has too little free space."""
    if data_dir.exists() and not data_dir.is_dir():
        raise InputError(f"--data-dir {data_dir} is a file; give a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir) as probe:  # unnamed where the OS allows
            probe.write(b"gdflow")
            probe.flush()
    except OSError as exc:
        raise BrokenEnvironment(
            f"cannot write to the data directory {data_dir} ({exc.strerror or exc}); "
            "fix its permissions or choose another with --data-dir"
        ) from None
    free = shutil.disk_usage(data_dir).free
    if free < needed:
        raise BrokenEnvironment(
            f"not enough free space in {data_dir}: this run needs about {_mb(needed)}, "
            f"{_mb(free)} is free; free some space or choose another --data-dir"
        )


def _mb(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def check_server() -> None:
    """Refuse to start when PREFECT_API_URL names a server that does not answer."""
    from flows.serving import api_is_up, configured_api

    api = configured_api()
    if api and not api_is_up(api):
        raise BrokenEnvironment(
            f"no Prefect server answers at PREFECT_API_URL={api}; start one with `gdflow server`, "
            "or unset PREFECT_API_URL to run on a temporary local server"
        )


def explain_failure(exc: BaseException | None) -> tuple[int, str] | None:
    """Exit code and one line for a failure caused by the input or the machine, else None."""
    if isinstance(exc, InputError):
        return 2, str(exc)
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        where = f" while writing {exc.filename}" if exc.filename else ""
        return 1, (
            f"the disk is full or a file-size limit was reached{where} ({exc.strerror}); "
            "free some space or choose another --data-dir"
        )
    if isinstance(exc, OSError) and exc.errno in _NO_WRITE:
        where = f" {exc.filename}" if exc.filename else ""
        return 1, (
            f"cannot write{where} ({exc.strerror}); fix the permissions of the data directory "
            "or choose another with --data-dir"
        )
    return None


class _WithoutKnownTracebacks(logging.Formatter):
    """Formats as `inner` does, leaving out tracebacks of failures explain_failure knows."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if explain_failure(exc) is None:
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def quiet_known_tracebacks() -> None:
    """Keep tracebacks of input and environment failures off the console (the API keeps them)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            inner = handler.formatter or logging.Formatter()
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(
                inner, _WithoutKnownTracebacks
            ):
                handler.setFormatter(_WithoutKnownTracebacks(inner))
