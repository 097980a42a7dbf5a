"""How an epoch visits the training data: in memory or streamed from disk, in stored or
shuffled order, in pieces aligned to the fast engine's composed maps."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from tasks.params import Method, MethodSpec

# Data sets up to this size (x and y as float32) are held in memory by training; larger ones
# stream from disk on every pass, in bounded memory.
IN_MEMORY_BYTES = 1 << 30
# Rows per piece when a shuffled epoch gathers its points.
GATHER_ROWS = 1 << 20

Chunk = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Visits:
    """The training data as an epoch visits it.

    `chunks(epoch, multiple)` yields that epoch's (x, y) in visiting order, in pieces whose
    lengths are multiples of `multiple` (all but the last). `fixed`: every epoch visits the
    points in the same order.
    """

    n: int
    chunks: Callable[[int, int], Iterable[Chunk]]
    fixed: bool


def shuffled(spec: MethodSpec) -> bool:
    """Whether epochs visit the points in shuffled order (BGD's one batch has none)."""
    return spec.shuffle and spec.method is not Method.bgd


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which a shuffled epoch visits the n points."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def aligned(chunks: Iterable[Chunk], multiple: int) -> Iterator[Chunk]:
    """The same points in pieces whose lengths are multiples of `multiple`, all but the last.

    Only the few points that straddle two pieces are copied.
    """
    carry: Chunk | None = None
    for x, y in chunks:
        if carry is not None:
            take = min(multiple - carry[0].shape[0], x.shape[0])
            carry = (np.concatenate([carry[0], x[:take]]), np.concatenate([carry[1], y[:take]]))
            x, y = x[take:], y[take:]
            if carry[0].shape[0] < multiple:
                continue
            yield carry
            carry = None
        whole = x.shape[0] - x.shape[0] % multiple
        if whole:
            yield x[:whole], y[:whole]
        if whole < x.shape[0]:
            carry = (x[whole:], y[whole:])
    if carry is not None:
        yield carry


def array_visits(x: np.ndarray, y: np.ndarray, spec: MethodSpec) -> Visits:
    """In-memory data: visited in stored order, or gathered piece by piece in epoch order."""
    n = x.shape[0]
    if not shuffled(spec):
        return Visits(n, lambda _epoch, _multiple: [(x, y)], fixed=True)

    def gathered(epoch: int, multiple: int) -> Iterator[Chunk]:
        order = epoch_order(n, spec.shuffle_seed, epoch)
        step = max(1, GATHER_ROWS // multiple) * multiple
        for lo in range(0, n, step):
            idx = order[lo : lo + step]
            yield x[idx], y[idx]

    return Visits(n, gathered, fixed=False)


def stream_visits(n: int, read: Callable[[], Iterable[Chunk]]) -> Visits:
    """Data read afresh, in stored order, on every pass: memory holds about one piece."""
    return Visits(n, lambda _epoch, multiple: aligned(read(), multiple), fixed=True)


def streams_rows(rows: int, spec: MethodSpec) -> bool:
    """Whether training reads a stored data set of `rows` rows from disk on every pass.

    The fast engine streams data larger than IN_MEMORY_BYTES, and never loads data for batch
    gradient descent, which needs only the moments; the reference engine and shuffled epochs
    need the data in memory.
    """
    if spec.engine != "fast" or shuffled(spec):
        return False
    return spec.method is Method.bgd or rows * 8 > IN_MEMORY_BYTES
