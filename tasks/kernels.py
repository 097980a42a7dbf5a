"""Fast training engine: numba kernels in float64 arithmetic, same results as the reference.

The full-data loss and the gradient of any batch follow from centred moments, so batch
gradient descent costs O(1) per epoch and in-order mini-batch descent O(n/B) per epoch:

    off    = w·mean_x + b − mean_y
    loss   = w²·var_x − 2·w·cov_xy + var_y + off²
    grad_w = 2·(w·var_x − cov_xy + mean_x·off),   grad_b = 2·off

Per-point SGD is a sequential loop over the points (`_point_pass`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
from numba import njit

from tasks.params import Method, MethodSpec
from tasks.stats import Moments, moments

_CHUNK = 1 << 20  # rows per vectorised step of the batch moments: bounds their extra memory
# Lets LLVM fuse multiply-adds; NaN and inf keep their IEEE meaning (divergence checks need it).
_FASTMATH = {"contract"}

Order = Callable[[int], np.ndarray]
Trace = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class BatchMoments:
    """Per-batch means and centred second moments (divided by the batch's own size)."""

    mean_x: np.ndarray
    mean_y: np.ndarray
    var_x: np.ndarray
    cov_xy: np.ndarray

    def hessian_lambda_max(self) -> np.ndarray:
        """Largest eigenvalue of each batch's MSE Hessian 2·[[E x², E x], [E x, 1]]."""
        trace = self.var_x + self.mean_x**2 + 1.0
        return trace + np.sqrt(np.maximum(trace * trace - 4.0 * self.var_x, 0.0))

    def stacked(self) -> np.ndarray:
        """The four arrays as rows of one (4, batches) float64 array, as the kernels take them."""
        return np.stack([self.mean_x, self.mean_y, self.var_x, self.cov_xy])


def _aligned_batch_moments(x: np.ndarray, y: np.ndarray, batch_size: int) -> BatchMoments:
    """Batch moments of a slice that starts at a batch boundary, vectorised with reduceat."""
    starts = np.arange(0, x.shape[0], batch_size)
    counts = np.diff(np.append(starts, x.shape[0]))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    mean_x = np.add.reduceat(x64, starts) / counts
    mean_y = np.add.reduceat(y64, starts) / counts
    dx = x64 - np.repeat(mean_x, counts)
    dy = y64 - np.repeat(mean_y, counts)
    var_x = np.add.reduceat(dx * dx, starts) / counts
    cov_xy = np.add.reduceat(dx * dy, starts) / counts
    return BatchMoments(mean_x, mean_y, var_x, cov_xy)


def _moments_batch(x: np.ndarray, y: np.ndarray) -> BatchMoments:
    """One large batch's moments, computed chunk by chunk."""
    m = moments(x, y)
    return BatchMoments(*(np.array([v]) for v in (m.mean_x, m.mean_y, m.var_x, m.cov_xy)))


def batch_moments(x: np.ndarray, y: np.ndarray, batch_size: int) -> BatchMoments:
    """Moments of the consecutive batches of `batch_size` points (the last may be smaller)."""
    n = x.shape[0]
    if batch_size > _CHUNK:
        parts = [
            _moments_batch(x[lo : lo + batch_size], y[lo : lo + batch_size])
            for lo in range(0, n, batch_size)
        ]
    else:
        step = (_CHUNK // batch_size) * batch_size
        parts = [
            _aligned_batch_moments(x[lo : lo + step], y[lo : lo + step], batch_size)
            for lo in range(0, n, step)
        ]
    return BatchMoments(
        *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(BatchMoments))
    )


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _mse(w: float, b: float, stats: tuple[float, float, float, float, float]) -> float:
    """Full-data MSE from centred moments (mean_x, mean_y, var_x, cov_xy, var_y)."""
    mean_x, mean_y, var_x, cov_xy, var_y = stats
    off = w * mean_x + b - mean_y
    return w * w * var_x - 2.0 * w * cov_xy + var_y + off * off


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _point_pass(x: np.ndarray, y: np.ndarray, w: float, b: float, lr: float):
    """One per-point SGD pass in stored order; stops at the first non-finite parameter."""
    lr2 = 2.0 * lr
    for i in range(x.shape[0]):
        xi = float(x[i])
        err = w * xi + (b - y[i])
        w -= (lr2 * xi) * err
        b -= lr2 * err
        if not (math.isfinite(w) and math.isfinite(b)):
            return w, b, i + 1
    return w, b, x.shape[0]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _batch_pass(batches: np.ndarray, w: float, b: float, lr: float):
    """One pass over precomputed batch moments; stops at the first non-finite parameter."""
    for k in range(batches.shape[1]):
        mean_x, mean_y, var_x, cov_xy = batches[0, k], batches[1, k], batches[2, k], batches[3, k]
        off = w * mean_x + b - mean_y
        grad_w = 2.0 * (w * var_x - cov_xy + mean_x * off)
        grad_b = 2.0 * off
        w -= lr * grad_w
        b -= lr * grad_b
        if not (math.isfinite(w) and math.isfinite(b)):
            return w, b, k + 1
    return w, b, batches.shape[1]


@njit(cache=True, nogil=True)
def _run(x, y, batches, stats, lr, points, first, last, rows, updates) -> bool:
    """Train epochs first..last-1 from row `first` of rows = [loss; w; b], filling the rows.

    Records each epoch's start loss, and the final loss when `last` is the final row. Once the
    loss or a parameter is non-finite, every later row is NaN and `updates` stops growing;
    returns False then.
    """
    final = rows.shape[1] - 1
    for e in range(first, last):
        w, b = rows[1, e], rows[2, e]
        rows[0, e] = _mse(w, b, stats)
        if not math.isfinite(rows[0, e]):
            rows[:, e + 1 :] = np.nan
            updates[e + 1 :] = updates[e]
            return False
        if points:
            w, b, done = _point_pass(x, y, w, b, lr)
        else:
            w, b, done = _batch_pass(batches, w, b, lr)
        if not (math.isfinite(w) and math.isfinite(b)):
            rows[:, e + 1 :] = np.nan
            updates[e + 1 :] = updates[e] + done
            return False
        rows[1, e + 1], rows[2, e + 1] = w, b
        updates[e + 1] = updates[e] + done
    if last == final:
        rows[0, final] = _mse(rows[1, final], rows[2, final], stats)
    return True


def warm_up(dtype: str) -> None:
    """Compile the kernels for data of this dtype, or load them from the on-disk cache."""
    x = np.zeros(1, dtype=dtype)
    _run(
        x, x, np.zeros((4, 1)), (0.0,) * 5, 0.0, True, 0, 1, np.zeros((3, 2)), np.zeros(2, np.int64)
    )


def _epoch_batches(
    x: np.ndarray, y: np.ndarray, spec: MethodSpec, stats: Moments, batches: BatchMoments | None
) -> np.ndarray:
    """The batch moments of one epoch, stacked: the whole data for BGD, none for SGD."""
    if spec.method is Method.bgd:
        return np.array([[stats.mean_x], [stats.mean_y], [stats.var_x], [stats.cov_xy]])
    if spec.method is Method.sgd:
        return np.empty((4, 0))
    return (batches or batch_moments(x, y, spec.batch_size)).stacked()


def train_fast(
    x: np.ndarray,
    y: np.ndarray,
    spec: MethodSpec,
    stats: Moments,
    batches: BatchMoments | None = None,
    order: Order | None = None,
) -> Trace:
    """Train with the numba kernels; returns (loss, w, b, updates), each of length epochs + 1.

    `batches` are the in-order batch moments (mini-batch only, computed when not given);
    `order(e)` gives the visiting order of epoch e for shuffled SGD and mini-batch descent.
    """
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    summary = (stats.mean_x, stats.mean_y, stats.var_x, stats.cov_xy, stats.var_y)
    rows = np.empty((3, spec.epochs + 1))
    rows[1, 0], rows[2, 0] = spec.w0, spec.b0
    updates = np.zeros(spec.epochs + 1, dtype=np.int64)
    points = spec.method is Method.sgd

    if order is None or spec.method is Method.bgd:
        stacked = _epoch_batches(x, y, spec, stats, batches)
        _run(x, y, stacked, summary, spec.lr, points, 0, spec.epochs, rows, updates)
        return rows[0], rows[1], rows[2], updates
    for e in range(spec.epochs):
        perm = order(e)
        xs, ys = x[perm], y[perm]
        stacked = _epoch_batches(xs, ys, spec, stats, None)
        if not _run(xs, ys, stacked, summary, spec.lr, points, e, e + 1, rows, updates):
            break
    return rows[0], rows[1], rows[2], updates
