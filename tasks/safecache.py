"""Cached results that are served only while their file is intact, under crash-proof locks."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.locking.protocol import LockManager
from prefect.transactions import IsolationLevel

from tasks.caching import StableInputs
from tasks.storage import is_intact

LOCK_SUFFIX = ".lock"
_POLL_S = 0.05


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


class ProcessLockManager(LockManager):
    """Prefect record locks held as flock(2) locks on files in one directory.

    The operating system drops a lock when its holder's process dies, so a run killed while
    holding one never blocks the next run (Prefect's FileSystemLockManager would wait forever).
    A lock file is never deleted while in use: deleting it would let two holders lock two files.
    """

    def __init__(self, lock_files_directory: Path) -> None:
        self.directory = Path(lock_files_directory)
        self._held: dict[str, tuple[str, int]] = {}
        self._mutex = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory}  # open descriptors mean nothing elsewhere

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])  # type: ignore[misc]

    def lock_path(self, key: str) -> Path:
        return self.directory / f"{key}{LOCK_SUFFIX}"

    def _open(self, key: str) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(self.lock_path(key), os.O_RDWR | os.O_CREAT, 0o666)

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
        fd = self._open(key)
        if not _flock(fd, fcntl.LOCK_EX, acquire_timeout):
            os.close(fd)
            return False
        with self._mutex:
            self._held[key] = (holder, fd)
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        call = partial(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)
        return await anyio.to_thread.run_sync(call)

    def release_lock(self, key: str, holder: str) -> None:
        with self._mutex:
            held = self._held.get(key)
            if held is None or held[0] != holder:
                raise ValueError(f"no lock on {key!r} is held by {holder}")
            del self._held[key]
        os.close(held[1])  # closing the descriptor releases its flock

    def is_locked(self, key: str) -> bool:
        if key in self._held:
            return True
        try:
            fd = os.open(self.lock_path(key), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            return not _flock(fd, fcntl.LOCK_SH, 0)
        finally:
            os.close(fd)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        held = self._held.get(key)
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


@dataclass
class IntactOutputInputs(StableInputs):
    """StableInputs whose record is served only while the task's output file is intact.

    When `output` is missing or changed, the record under the key is deleted while holding
    the key's lock, so the task runs again; a concurrent run waiting on that lock then finds
    the fresh record instead of computing a second time (which refresh_cache would do).
    """

    output: Path | None = None
    records: Path | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        key = super().compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is not None and self.output is not None and not is_intact(self.output):
            self._drop_record(key)
        return key

    def _drop_record(self, key: str) -> None:
        if self.records is None or self.lock_manager is None:
            return
        holder = f"drop-stale-{uuid.uuid4().hex}"
        self.lock_manager.acquire_lock(key, holder)
        try:
            if not is_intact(self.output):  # type: ignore[arg-type]
                (self.records / key).unlink(missing_ok=True)
        finally:
            self.lock_manager.release_lock(key, holder)


def intact_output_policy(output: Path, records: Path, locks: Path) -> CachePolicy:
    """Cache keyed on the stable inputs, with records in `records`, locked across processes."""
    return IntactOutputInputs(output=output, records=records).configure(
        lock_manager=ProcessLockManager(locks),
        isolation_level=IsolationLevel.SERIALIZABLE,
    )
