"""How an epoch visits the training data: in memory or streamed from disk, in stored or
shuffled order, in pieces aligned to the fast engine's composed maps."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from tasks.params import Method, MethodSpec
from tasks.training import kernels, shuffle
from tasks.training.shuffle import RowShuffle

# Data sets up to this size (x and y as float32) are held in memory by training; larger ones
# stream from disk on every pass, in bounded memory.
IN_MEMORY_BYTES = 1 << 30

Chunk = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Visits:
    """The training data as an epoch visits it.

    `chunks(epoch, multiple)` yields that epoch's (x, y) in visiting order, in pieces whose
    lengths are multiples of `multiple` (all but the last); a piece may be a view of a buffer
    that the next piece reuses. `fixed`: every epoch visits the
    points in the same order.
    """

    n: int
    chunks: Callable[[int, int], Iterable[Chunk]]
    fixed: bool


def shuffled(spec: MethodSpec) -> bool:
    """Whether epochs visit the points in shuffled order (BGD's one batch has none)."""
    return spec.shuffle and spec.method is not Method.bgd


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which a shuffled epoch visits the n points: the row numbers as RowShuffle,
    which also serves the fast engine's shuffled epochs, moves them (tasks.training.shuffle)."""
    order = np.empty(n, np.int64)
    done = 0
    for piece in RowShuffle(np.arange(n, dtype=np.int64)).pieces(seed, epoch):
        order[done : done + piece.shape[0]] = piece
        done += piece.shape[0]
    return order


def aligned(chunks: Iterable[Chunk], multiple: int) -> Iterator[Chunk]:
    """The same points in pieces whose lengths are multiples of `multiple`, all but the last.

    Only the few points that straddle two pieces are copied, when they are set aside: a piece
    may be a buffer that the next one overwrites.
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
            carry = (x[whole:].copy(), y[whole:].copy())
    if carry is not None:
        yield carry


def array_visits(x: np.ndarray, y: np.ndarray, spec: MethodSpec) -> Visits:
    """In-memory data: visited in stored order, or shuffled piece by piece in epoch order.

    Loads the shuffle's kernels, and those the fast engine runs on its pieces, for a shuffled
    epoch before any clock starts.
    """
    n = x.shape[0]
    if not shuffled(spec):
        return Visits(n, lambda _epoch, _multiple: [(x, y)], fixed=True)
    dtype = str(np.result_type(x.dtype, y.dtype))
    shuffle.warm_up(dtype)
    kernels.warm_up(dtype, pieces=True)
    rows = RowShuffle(x, y)

    def shuffled_chunks(epoch: int, multiple: int) -> Iterator[Chunk]:
        return aligned(rows.columns(spec.shuffle_seed, epoch), multiple)

    return Visits(n, shuffled_chunks, fixed=False)


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
