"""Checks made before a run or sweep starts (its options, data file, data directory and device),
and one line for a run that failed for a known reason."""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tasks.errors import BrokenEnvironment, GdflowError, InputError
from tasks.params import DataSpec, RunParams, SweepParams
from tasks.paths import dataset_path, resolve_data_dir

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}
_REPORT_BYTES = 4 << 20  # figures, summary and cache records of one run, generously
_HISTORY_ROW_BYTES = 40  # one epoch of a history: epoch, loss, w, b, updates
_DATA_ROW_BYTES = 8  # one point of a data set: float32 x and y
Params = TypeVar("Params", bound=BaseModel)
# Set on Ctrl-C or SIGTERM. Library code may turn the KeyboardInterrupt into another error (a
# pydantic serializer does) and fail the run: the command still ends as interrupted, in one line.
INTERRUPTED = threading.Event()


def params_from_options(model: type[Params], given: dict[str, Any] | None, command: str) -> Params:
    """The parameters of `gdflow COMMAND` from the options given (a dict by field name); presets
    and defaults fill in the rest. The first option refused is an InputError naming the fix."""
    try:
        return model.model_validate(given or {})
    except ValidationError as exc:
        first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    see = f"see `gdflow {command} --help`"
    if not first["loc"]:  # a check across fields: its message names them
        raise InputError(message if "; " in message else f"{message}; {see}")
    got = first.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    option = "--" + str(first["loc"][0]).replace("_", "-")
    raise InputError(f"invalid {option}: {message}{shown}; {see}")


def check_run(params: RunParams) -> None:
    """Refuse, before any work, a run whose data file, data directory or device cannot serve it."""
    data_dir = resolve_data_dir(params.data_dir)
    if params.data:
        # pyarrow, loaded here: a request refused for its options never waits for it (0.3 s)
        from tasks.data.userfile import check_values, inspect_source

        # the file's footer, the batch size against its rows, then every value
        new_rows = inspect_source(params.data, params.x_col, params.y_col).rows
        params.check_rows(new_rows)
        check_values(params.data, params.x_col, params.y_col)
    else:
        new_rows = 0 if _on_disk(data_dir, params.data_spec()) else params.n_samples
    history_rows = len(params.methods) * (params.epochs + 1)
    _check_machine(data_dir, new_rows, history_rows, params.device)


def check_sweep(params: SweepParams) -> None:
    """Refuse, before any work, a sweep whose data directory or device cannot serve it."""
    data_dir = resolve_data_dir(params.data_dir)
    missing = [s for s in params.seeds if not _on_disk(data_dir, params.data_spec(s))]
    # every cell's history, and again in the sweep's combined histories file
    history_rows = 2 * len(params.cells()) * (params.epochs + 1)
    _check_machine(data_dir, len(missing) * params.n_samples, history_rows, params.device)


def _on_disk(data_dir: Path, spec: DataSpec) -> bool:
    from tasks.storage import is_intact  # pyarrow, as in check_run

    return is_intact(dataset_path(data_dir, spec))


def _check_machine(data_dir: Path, data_rows: int, history_rows: int, device: str) -> None:
    """Refuse a data directory that cannot be written to or lacks room for the rows to write,
    or a missing GPU."""
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
    needed = data_rows * _DATA_ROW_BYTES + history_rows * _HISTORY_ROW_BYTES + _REPORT_BYTES
    free = shutil.disk_usage(data_dir).free
    if free < needed:
        raise BrokenEnvironment(
            f"not enough free space in {data_dir}: this run needs about {needed / 2**20:,.1f} MiB, "
            f"{free / 2**20:,.1f} MiB is free; free some space or choose another --data-dir"
        )
    if device == "cuda":
        # torch, loaded only to ask it for a GPU: 1-2 s that a CPU run never pays
        from tasks.training.reference import check_device

        check_device(device)


def explain_failure(exc: BaseException | None) -> GdflowError | None:
    """The one-line error a run failed with, when the input or the machine caused it, else None."""
    if isinstance(exc, GdflowError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        where = f" while writing {exc.filename}" if exc.filename else ""
        return BrokenEnvironment(
            f"the disk is full or a file-size limit was reached{where} ({exc.strerror}); "
            "free some space or choose another --data-dir"
        )
    if isinstance(exc, OSError) and exc.errno in _NO_WRITE:
        where = f" {exc.filename}" if exc.filename else ""
        return BrokenEnvironment(
            f"cannot write{where} ({exc.strerror}); fix the permissions of the data directory "
            "or choose another with --data-dir"
        )
    return None


class _WithoutKnownTracebacks(logging.Formatter):
    """Formats as `inner` does, leaving out tracebacks of failures explain_failure knows and of
    everything after an interrupt."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (INTERRUPTED.is_set() or explain_failure(exc) is not None):
            # a copy: the other handlers of the record (Prefect's API log) keep the traceback
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(record)


def quiet_known_tracebacks() -> None:
    """Keep tracebacks of input and environment failures off the console; the one-line error
    says what they mean. Handlers that are not streams (Prefect's API log) keep them."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):  # a placeholder logger has none
            inner = handler.formatter or logging.Formatter()
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                inner, _WithoutKnownTracebacks
            ):
                handler.setFormatter(_WithoutKnownTracebacks(inner))
