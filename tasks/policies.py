"""How gdflow's tasks run: the cache policy of the file-writing tasks (and the OS file locks it
runs under), retries, and time limits sized from the work.

Prefect serves a cached result from its own record and never looks at the files a task wrote:
a deleted or altered Parquet file would be trusted. IntactOutput keys a task on its inputs and
the code version, and gives no key (so no cache hit) while the task's output file is damaged.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.locking.protocol import LockManager
from prefect.results import ResultStore
from prefect.states import State
from prefect.task_engine import TaskRunTimeoutError
from prefect.tasks import Task, exponential_backoff
from prefect.transactions import IsolationLevel
from prefect.utilities.timeout import timeout

from tasks.digest import code_version, stable_digest
from tasks.errors import GdflowError, RunTimeout
from tasks.paths import cache_dir
from tasks.storage import find_damage

_POLL_S = 0.05


@dataclass
class IntactOutput(CachePolicy):
    """Key = task name + inputs (stably hashed) + code version; no key while the output is
    damaged and a record for it exists.

    `output(**inputs)` names the file the task writes. When that file is damaged in any way
    (find_damage: missing, not a regular file, no valid manifest, other size, time or content
    hash) but a record exists, the task logs a warning, runs again and rewrites the file,
    leaving the record as it is: the record holds what the inputs determine, so it is right
    again once the file is back. The hash check costs a fully cached run one read of its data
    set (10^7 rows: 0.11 s; 800 MB: 0.75 s); a task that reads the file in the same process
    reuses it, so other runs pay nothing more. Unlike Prefect's INPUTS, two tasks with equal
    inputs never share a key; unlike TASK_SOURCE, a change in any module the task calls changes
    the key.
    """

    output: Callable[..., Path] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        key = run_key(task_ctx.task.name, inputs)
        if self.output is not None and damaged(task_ctx.result_store, key, self.output(**inputs)):
            return None
        return key


def run_key(task_name: str, inputs: dict[str, Any]) -> str:
    """The cache key of a run of the task `task_name` with these inputs (IntactOutput's)."""
    return stable_digest(task_name, inputs, code_version())


def damaged(store: ResultStore, key: str, target: Path) -> bool:
    """Whether `store` holds a record for `key` but `target`, the file of that run, is damaged
    (with a warning that it is computed again)."""
    damage = find_damage(target)
    if damage is None or not store.exists(key):
        return False
    get_run_logger().warning("%s %s; recomputing it", target, damage)
    return True


def _flock(fd: int, operation: int, timeout: float | None) -> bool:
    """Take an flock on `fd`, waiting at most `timeout` seconds (forever if None)."""
    if timeout is None:
        fcntl.flock(fd, operation)
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)


def locks_dir() -> Path:
    """Where this machine's gdflow lock files live (flock locks hold only within one machine)."""
    return Path(tempfile.gettempdir()) / f"gdflow-locks-{os.getuid()}"


class FlockLockManager(LockManager):
    """Prefect record locks held as flock(2) locks on files in one directory.

    The operating system drops a lock when its holder's process dies, so a run killed while
    holding one never blocks the next run (Prefect's FileSystemLockManager would wait forever).
    A lock file is never deleted while in use: deleting it would let two holders lock two files.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.held: dict[str, tuple[str, int]] = {}
        self.mutex = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory}  # open descriptors mean nothing elsewhere

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])  # type: ignore[misc]

    def lock_path(self, key: str) -> Path:
        return (self.directory or locks_dir()) / f"{key}.lock"

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Lock `key` for `holder`; a lock lasts until released or its process ends."""
        if self.is_lock_holder(key, holder):
            return True
        path = self.lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _flock(fd, fcntl.LOCK_EX, acquire_timeout):
            os.close(fd)
            return False
        with self.mutex:
            self.held[key] = (holder, fd)
        return True

    async def aacquire_lock(self, *args: Any, **kwargs: Any) -> bool:
        """acquire_lock, waited for in a worker thread."""
        return await anyio.to_thread.run_sync(partial(self.acquire_lock, *args, **kwargs))

    def release_lock(self, key: str, holder: str) -> None:
        with self.mutex:
            if not self.is_lock_holder(key, holder):
                raise ValueError(f"no lock on {key!r} is held by {holder}")
            _, fd = self.held.pop(key)
        os.close(fd)  # closing the descriptor releases its flock

    def is_locked(self, key: str) -> bool:
        return key in self.held or not self.wait_for_lock(key, timeout=0)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        held = self.held.get(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        try:
            fd = os.open(self.lock_path(key), os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            return _flock(fd, fcntl.LOCK_SH, timeout)
        finally:
            os.close(fd)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(partial(self.wait_for_lock, key, timeout))


def in_data_dir(task: Any, data_dir: Path, refresh: bool = False) -> Any:
    """The task with its cache records under `data_dir`, recomputed regardless when `refresh`.

    Refresh only on purpose: it makes identical runs started together each compute.
    """
    return task.with_options(result_storage=cache_dir(data_dir), refresh_cache=refresh)


def records(data_dir: Path) -> ResultStore:
    """The cache records of the tasks run in_data_dir(data_dir), with the locks they run under:
    for writing a task's records from outside its runs (a sweep's batches of trainings)."""
    storage = LocalFileSystem(basepath=str(cache_dir(data_dir)))
    return ResultStore(result_storage=storage, lock_manager=FlockLockManager())


def intact_output(output: Callable[..., Path]) -> IntactOutput:
    """The policy of a task writing `output(**inputs)`, under SERIALIZABLE isolation with flock
    locks: of identical runs started together one computes, the others wait and reuse it."""
    return IntactOutput(output=output).configure(
        lock_manager=FlockLockManager(), isolation_level=IsolationLevel.SERIALIZABLE
    )


# Time limits: a floor for what any task may wait for (imports, compiling the kernels once,
# about 20 s; a busy machine) plus its work, rows x passes over them, at a rate 10 to 20 times
# slower than measured here: the fast engine streams 10^8 rows from disk at about 0.1 us a row,
# generating the data takes 56 ns a row, and the reference engine's per-point loop 15 us (about
# 3x that on a GPU). A limit stops a task that hangs, never a large run.
TIMEOUT_FLOOR_S = 600.0
SECONDS_PER_ROW_PASS = {"fast": 1e-6, "reference": 2e-4}
# A report's work is bounded (at most 3 x MAX_EPOCHS history rows): seconds to a minute.
REPORT_LIMIT_S = 1800.0


_TRANSIENT_ERRNOS = {
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EAGAIN,
    errno.EIO,
    errno.ESTALE,
}


class _NoThreadTimeoutNotice(logging.Filter):
    """Drops Prefect's warning, logged for every task run with a timeout on a worker thread, that
    the timeout takes effect only when the task runs Python code again: gdflow's trainings do, at
    every progress tick, so the warning would be a line of noise per training."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "but the task is running in a worker thread" not in str(record.msg)


# Installed where the tasks are defined, so that worker processes (Dask) drop it too.
logging.getLogger("prefect.task_runs").addFilter(_NoThreadTimeoutNotice())


def time_limit(rows: int, passes: int = 1, engine: str = "fast") -> float:
    """A task's timeout_seconds, sized from its work: `passes` over `rows` rows."""
    return TIMEOUT_FLOOR_S + rows * passes * SECONDS_PER_ROW_PASS[engine]


class _StageOverrun(TimeoutError):
    """Raised by Prefect's timeout in a time_box, and turned into RunTimeout there."""


@contextmanager
def time_box(seconds: float, stage: str) -> Iterator[None]:
    """Bound a stage of a flow run: past `seconds`, it ends with RunTimeout, which Prefect marks
    TimedOut. A flow's own timeout_seconds is fixed when it is decorated; a box is sized from
    each run's parameters. It also ends a run whose tasks never start (a Dask cluster lost)."""
    try:
        with timeout(seconds=seconds, timeout_exc_type=_StageOverrun):
            yield
    except _StageOverrun:
        raise RunTimeout(
            f"{stage} went on past its time limit of {seconds:,.0f} s, sized from its work; "
            "the run's task runs in the Prefect UI show which step did not finish"
        ) from None


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Whether a failed task run may succeed when tried again: it failed on I/O (a remote file,
    a network filesystem), not on bad input, a corrupt file or running out its time limit."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, (GdflowError, TaskRunTimeoutError)) or not isinstance(exc, OSError):
        return False
    # pyarrow's remote I/O errors carry no errno; a full disk or a missing permission does
    return exc.errno is None or exc.errno in _TRANSIENT_ERRNOS


# Retries for the tasks whose file I/O can fail for a moment: a few, further and further apart.
# Each request to the Prefect server is retried by Prefect's client (PREFECT_CLIENT_MAX_RETRIES);
# a task retry cannot help while the server is away, since the retry is a state it must accept.
RETRY_IO = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),  # 5, 10, 20 s
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
)
