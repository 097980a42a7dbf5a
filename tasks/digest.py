"""Stable content digests: equal in every process, and changed by any change to gdflow's code."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

_PACKAGE = Path(__file__).resolve().parent


def dumps(value: object) -> str:
    """Compact, key-sorted JSON: the same text for the same value in every process.

    Pydantic models and paths are written in their JSON form, anything else JSON lacks as str().
    """
    plain = to_jsonable_python(value, fallback=str)
    return json.dumps(plain, sort_keys=True, separators=(",", ":"))


def stable_digest(*parts: Any) -> str:
    """SHA-256 of JSON-able values (pydantic models included), equal in every process."""
    return hashlib.sha256(dumps(parts).encode()).hexdigest()


@cache
def code_version() -> str:
    """A digest of every module of the tasks package: whatever decides a stored result is in it.

    Part of every cache key and stored file name, so changed code never serves an old result.
    """
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
