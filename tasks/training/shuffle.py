"""The shuffle of an epoch: a seeded, uniformly random permutation of the rows (x_i, y_i),
drawn in cache-sized pieces.

Scattering every row to one of k buckets, chosen uniformly and independently at random, and
then permuting each bucket uniformly gives a uniformly random permutation of all the rows
(Sanders 1998, "Random permutations on distributed, external and hierarchical memory",
Information Processing Letters 67). Rows are scattered twice, 16 ways each: 16 write streams
are as many as a core's prefetchers follow, and the 256 buckets (~n/256 rows, 312 KB at 10^7
rows) fit in the L2 cache, where Fisher-Yates (Durstenfeld 1964) permutes each. At 10^7 rows
this takes about 65 ms; numpy's permutation alone takes 400 ms, and gathering x[perm], y[perm]
another 270 ms.

Random numbers come from SplitMix64 on counters (Steele, Lea & Flood 2014, "Fast splittable
pseudorandom number generators", OOPSLA; it passes TestU01's BigCrush): a bucket id is 4 bits
of one output, and a bounded integer is exact by Lemire's method (2019, "Fast random integer
generation in an interval", ACM TOMACS 29). So, as far as these outputs pass for independent
uniform bits, every order of the rows is equally likely and the orders of different epochs and
seeds are independent: what SGD's analysis of random reshuffling assumes. Each epoch's 64-bit
key comes from numpy's SeedSequence of (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numba import njit

_WAYS = 16  # buckets per scatter: 4 bits of a draw each, 16 ids per 64-bit draw
_U = np.uint64
_GAMMA = _U(0x9E3779B97F4A7C15)
_LOW = _U(0xFFFFFFFF)
_MAX_ROWS = 1 << 32  # Lemire's method here draws 32-bit integers


@njit(cache=True, nogil=True, inline="always")
def _mix(z):
    """SplitMix64's output function: the draw for counter value z."""
    z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


@njit(cache=True, nogil=True, inline="always")
def _stream(key, index):
    """The key of stream `index` of the epoch's `key`; draw c of stream s is _mix(s + c·γ)."""
    return _mix(key + _U(index) * _GAMMA)


@njit(cache=True, nogil=True)
def _starts(m, key):
    """Where each of the _WAYS buckets of m rows begins (and, last, m): the bucket of row i is
    nibble i mod 16 of draw i // 16 of stream `key`."""
    starts = np.zeros(_WAYS + 1, np.int64)
    for block in range(-(-m // 16)):
        r = _mix(key + _U(block) * _GAMMA)
        for _ in range(min(16, m - block * 16)):
            starts[np.int64(r & _U(15)) + 1] += 1
            r >>= _U(4)
    for k in range(_WAYS):
        starts[k + 1] += starts[k]
    return starts


@njit(cache=True, nogil=True)
def scatter(x, y, rows, key, stream):
    """Rows into `rows` by their buckets, drawn from stream `stream` of `key`: the items of x,
    or with y the columns (x_i, y_i) as complex x + i·y. Returns the starts."""
    m = x.shape[0]
    key = _stream(key, stream)
    starts = _starts(m, key)
    nxt = starts[:_WAYS].astype(np.uint64)
    for block in range(-(-m // 16)):
        r = _mix(key + _U(block) * _GAMMA)
        for i in range(block * 16, min(block * 16 + 16, m)):
            k = r & _U(15)
            r >>= _U(4)
            q = nxt[k]
            nxt[k] = q + _U(1)
            if y is None:  # decided when numba compiles: one version per kind
                rows[q] = x[_U(i)]
            else:
                rows[q] = complex(x[_U(i)], y[_U(i)])
    return starts


@njit(cache=True, nogil=True, inline="always")
def _below(h, bound, key, c):
    """Lemire's exact map of a uniform 32-bit h to [0, bound); a rejected h (chance below
    bound / 2^32) is redrawn from stream `key` at counter c. Returns (value, counter)."""
    m = h * bound
    if (m & _LOW) < bound:
        floor = (_U(1 << 32) - bound) % bound
        while (m & _LOW) < floor:
            m = (_mix(key + c * _GAMMA) >> _U(32)) * bound
            c += _U(1)
    return m >> _U(32), c


@njit(cache=True, nogil=True, inline="always")
def _swap(rows, i, j):
    row = rows[i]
    rows[i] = rows[j]
    rows[j] = row


@njit(cache=True, nogil=True)
def fisher_yates(rows, starts, key, stream):
    """Permute each bucket rows[starts[k]:starts[k+1]] uniformly (Durstenfeld's Fisher-Yates),
    two steps per 64-bit draw of stream `stream` of `key`."""
    key = _stream(key, stream)
    c = _U(0)
    for k in range(_WAYS):
        lo, i = _U(starts[k]), _U(starts[k + 1])  # next: place rows[i - 1], then rows[i - 2]
        while i >= lo + _U(2):
            r = _mix(key + c * _GAMMA)
            c += _U(1)
            j, c = _below(r >> _U(32), i - lo, key, c)
            _swap(rows, i - _U(1), lo + j)
            if i == lo + _U(2):
                break
            j, c = _below(r & _LOW, i - _U(1) - lo, key, c)
            _swap(rows, i - _U(2), lo + j)
            i -= _U(2)


def epoch_key(seed: int, epoch: int) -> np.uint64:
    """The 64-bit key of one epoch's shuffle."""
    return np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]


class RowShuffle:
    """Shuffled epochs of in-memory rows, in pieces: columns (x, y), or one array whose items
    are the rows. Holds about 1.1·n rows of buffers, kept from epoch to epoch."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        if x.shape[0] >= _MAX_ROWS:
            raise ValueError(f"shuffles hold fewer than {_MAX_ROWS} rows")
        self.x, self.y = x, y
        self.dtype = x.dtype if y is None else np.result_type(x.dtype, y.dtype, np.complex64)
        self.spread = np.empty(0, self.dtype)  # the rows after the first scatter
        self.piece = np.empty(0, self.dtype)  # one first-level bucket at a time

    def pieces(self, seed: int, epoch: int) -> Iterator[np.ndarray]:
        """The epoch's rows in shuffled order (columns as x + i·y), in _WAYS pieces: views of
        one buffer, each valid until the next is asked for."""
        key = epoch_key(seed, epoch)
        if self.spread.shape[0] != self.x.shape[0]:
            self.spread = np.empty(self.x.shape[0], self.dtype)
        starts = scatter(self.x, self.y, self.spread, key, 0)
        biggest = int(np.diff(starts).max())
        if self.piece.shape[0] < biggest:
            self.piece = np.empty(biggest + biggest // 16, self.dtype)
        for b in range(_WAYS):
            part = self.piece[: starts[b + 1] - starts[b]]
            inner = scatter(self.spread[starts[b] : starts[b + 1]], None, part, key, 1 + b)
            fisher_yates(part, inner, key, 1 + _WAYS + b)
            yield part

    def columns(self, seed: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The epoch's (x, y) in shuffled order, in pieces (see pieces)."""
        for part in self.pieces(seed, epoch):
            yield part.real, part.imag


def warm_up(dtype: str) -> None:
    """Compile the shuffle for columns of this dtype (writeable or read-only), or load it from
    numba's on-disk cache."""
    for writeable in (True, False):
        x = np.zeros(40, dtype=dtype)
        x.flags.writeable = writeable
        for _ in RowShuffle(x, x).pieces(0, 0):
            pass
