"""Parquet files written atomically, each with a manifest that records its content hash."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from stat import S_ISREG

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from tasks.errors import CorruptFileError
from tasks.paths import manifest_path

_HASH_BLOCK = 1 << 24


class FileRecord(BaseModel):
    """Identity of a written file: where it is, what it holds, and its size and time on disk."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    size: int
    mtime_ns: int
    rows: int


def sha256_file(path: Path | str, fs: pafs.FileSystem | None = None) -> str:
    """Content hash of a file on `fs` (default the local disk), read block by block."""
    digest = hashlib.sha256()
    with open(path, "rb") if fs is None else fs.open_input_stream(str(path)) as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it into place only if the block succeeds.

    A directory where the file belongs is removed first: targets are gdflow's own paths under
    its data directory, so anything else there is damage, and a rename cannot replace it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_parquet(
    target: Path,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    metadata: dict[str, str],
) -> FileRecord:
    """Write batches as row groups of one Parquet file, atomically, then record its manifest."""
    schema = schema.with_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    rows = 0
    with atomic_path(target) as tmp:
        with pq.ParquetWriter(
            tmp, schema, compression="none", use_dictionary=False, write_statistics=False
        ) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        sha = sha256_file(tmp)
    stat = target.stat()
    record = FileRecord(
        path=str(target), sha256=sha, size=stat.st_size, mtime_ns=stat.st_mtime_ns, rows=rows
    )
    # Until this lands, the old manifest's size and mtime no longer match: not intact.
    write_bytes_atomic(manifest_path(target), record.model_dump_json().encode())
    return record


def read_manifest(target: Path) -> FileRecord | None:
    try:
        return FileRecord.model_validate_json(manifest_path(target).read_bytes())
    except (OSError, ValueError):
        return None


def find_damage(target: Path, content: bool = True) -> str | None:
    """What keeps the file at `target` from being served, or None: it must be a regular file
    (not a link) with its manifest's size and time and, when `content`, its content hash.

    The hash is checked by verify, so a process hashes a file once and its readers reuse that.
    """
    try:
        found = os.lstat(target)
    except OSError:
        return "is missing"
    if not S_ISREG(found.st_mode):
        return "is not a regular file"
    record = read_manifest(target)
    if record is None:
        return "has no valid manifest"
    if (found.st_size, found.st_mtime_ns) != (record.size, record.mtime_ns):
        return "changed since it was written (size or time differs)"
    if content:
        try:
            verify(record.model_copy(update={"path": str(target)}))  # a copied data directory
        except CorruptFileError:
            return "changed since it was written (content hash differs)"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
    return None


def is_intact(target: Path) -> bool:
    """True when the file is unchanged since its manifest was written, by a cheap stat."""
    return find_damage(target, content=False) is None


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    # The change time and inode too: a write that restores the size and mtime still moves them.
    found = path.stat()
    return str(path), found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino


_verified: dict[tuple[str, int, int, int, int], str] = {}
_verify_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
_verify_guard = threading.Lock()


def _changed(path: Path) -> CorruptFileError:
    return CorruptFileError(
        f"{path} changed since it was written (content hash differs); re-run to regenerate it"
    )


def verify(record: FileRecord) -> None:
    """Check the file's bytes against its recorded hash, block by block (bounded memory).

    A process hashes a file once while its size, times and inode stay the same; concurrent
    callers wait for that one pass instead of hashing it again.
    """
    path = Path(record.path)
    with _verify_guard:
        lock = _verify_locks[record.path]
    with lock:
        before = _stat_key(path)
        if _verified.get(before) == record.sha256:
            return
        if sha256_file(path) != record.sha256:
            raise _changed(path)
        if _stat_key(path) == before:
            _verified[before] = record.sha256


def iter_row_groups(record: FileRecord, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The file's row groups one at a time, in order, after checking its recorded hash.

    Memory stays at about one row group; a file that changes while it is read raises
    CorruptFileError.
    """
    verify(record)
    path = Path(record.path)
    before = _stat_key(path)
    with pq.ParquetFile(path, memory_map=False) as parquet:
        for i in range(parquet.num_row_groups):
            yield parquet.read_row_group(i, columns=columns)
    if _stat_key(path) != before:
        raise _changed(path)


def file_metadata(path: Path) -> dict[str, str]:
    """Key-value metadata of a Parquet file's schema, decoded."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}
