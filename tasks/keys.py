"""Content keys that are equal in every process and change when the numeric code changes.

Free of Prefect, so that a process computing ahead of a run (tasks.ahead) can use them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_PACKAGE = Path(__file__).resolve().parent
# Every module whose code decides what a cached result contains.
_NUMERIC_MODULES = (
    "dataset",
    "normal",
    "stats",
    "storage",
    "training",
    "kernels",
    "reference",
    "history",
)


def _code_version() -> str:
    digest = hashlib.sha256()
    for name in _NUMERIC_MODULES:
        path = _PACKAGE / f"{name}.py"
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


CODE_VERSION = _code_version()


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def stable_digest(*parts: Any) -> str:
    """A hash of JSON-able values (pydantic models included) that is equal in every process."""
    payload = json.dumps(_jsonable(parts), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def dumps_metadata(value: object) -> str:
    """Compact, key-sorted JSON: the same text for the same value in every process."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
