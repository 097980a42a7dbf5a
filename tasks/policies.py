"""The cache policy of gdflow's file-writing tasks, and the OS file locks it runs under.

Prefect serves a cached result from its own record and never looks at the files a task wrote:
a deleted or altered Parquet file would be trusted. IntactOutput keys a task on its inputs and
the code version, and gives no key (so no cache hit) while the task's output file is damaged.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.locking.protocol import LockManager
from prefect.transactions import IsolationLevel

from tasks.digest import code_version, stable_digest
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
        key = stable_digest(task_ctx.task.name, inputs, code_version())
        if self.output is None:
            return key
        target = self.output(**inputs)
        damage = find_damage(target)
        if damage is None or not task_ctx.result_store.exists(key):
            return key
        get_run_logger().warning("%s %s; recomputing it", target, damage)
        return None


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


def intact_output(output: Callable[..., Path]) -> IntactOutput:
    """The policy of a task writing `output(**inputs)`, under SERIALIZABLE isolation with flock
    locks: of identical runs started together one computes, the others wait and reuse it."""
    return IntactOutput(output=output).configure(
        lock_manager=FlockLockManager(), isolation_level=IsolationLevel.SERIALIZABLE
    )
