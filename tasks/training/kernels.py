"""The fast engine's numba kernels: float64 arithmetic on float32 or float64 data.

Every update of (w, b), one point for SGD or one batch of m points for mini-batch descent, is
an affine map

    (w, b) <- A·(w, b) + c,   A = I − (2·lr/m)·[[Σx², Σx], [Σx, m]],   c = (2·lr/m)·(Σxy, Σy).

The kernels compose the maps of consecutive segments of about SEGMENT points (SGD builds the
maps of short runs of points side by side in SIMD lanes), run epochs as short sequential
passes over the segment maps, and run an epoch update by update where composing is not safe
(see tasks.training.fast).

Batch gradient descent needs no pass over the data: its loss and gradient follow from the
full-data centred moments, in O(1) per epoch:

    off    = w·mean_x + b − mean_y
    loss   = w²·var_x − 2·w·cov_xy + var_y + off²
    grad_w = 2·(w·var_x − cov_xy + mean_x·off),   grad_b = 2·off

Every kernel is compiled on first use and kept in numba's on-disk cache; nogil lets training
tasks on threads of one process run side by side.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SEGMENT = 1024  # points per composed map
_GROUP = 8  # SGD: consecutive points per first-level map (8 lanes' loads interleave well)
_GROUPS = SEGMENT // _GROUP
_RUN = 4  # first-level maps per second-level map
_RUNS = _GROUPS // _RUN
LIMIT = 1e100  # (w, b) beyond this: the epoch reruns update by update
# Lets LLVM fuse multiply-adds; NaN and inf keep their IEEE meaning (divergence checks need it).
_FASTMATH = {"contract"}

DONE, EXACT, STOPPED = 0, 1, 2  # how run_epochs ended: see there
_IDENTITY = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def mse(w: float, b: float, stats: tuple[float, float, float, float, float]) -> float:
    """Full-data MSE from centred moments (mean_x, mean_y, var_x, cov_xy, var_y)."""
    mean_x, mean_y, var_x, cov_xy, var_y = stats
    off = w * mean_x + b - mean_y
    return w * w * var_x - 2.0 * w * cov_xy + var_y + off * off


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _compose(outer, inner):
    """The map `outer` ∘ `inner`; a map is (m11, m21, m12, m22, v1, v2): (w, b) -> M·(w, b) + v."""
    a11, a21, a12, a22, c1, c2 = outer
    m11, m21, m12, m22, v1, v2 = inner
    return (
        a11 * m11 + a12 * m21,
        a21 * m11 + a22 * m21,
        a11 * m12 + a12 * m22,
        a21 * m12 + a22 * m22,
        a11 * v1 + a12 * v2 + c1,
        a21 * v1 + a22 * v2 + c2,
    )


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _point_step(m, xi, yi, lr2):
    """The map `m` followed by the SGD update at point (xi, yi); lr2 = 2·lr.

    The update is (w, b) -> (w, b) − lr2·(xi·w + b − yi)·(xi, 1), applied to each column.
    """
    m11, m21, m12, m22, v1, v2 = m
    a = lr2 * xi
    r = xi * m11 + m21
    m11 -= a * r
    m21 -= lr2 * r
    r = xi * m12 + m22
    m12 -= a * r
    m22 -= lr2 * r
    r = xi * v1 + v2 - yi
    v1 -= a * r
    v2 -= lr2 * r
    return m11, m21, m12, m22, v1, v2


@njit(cache=True, nogil=True)
def _column(maps, i):
    """Map i of maps stored one component per row."""
    return maps[0, i], maps[1, i], maps[2, i], maps[3, i], maps[4, i], maps[5, i]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def point_maps(x, y, lr, out):
    """Maps of per-point SGD over consecutive SEGMENT-point segments of (x, y) into `out`.

    Each segment is composed in three levels: maps of _GROUP consecutive points (the groups
    of a segment are independent, so they are built side by side in SIMD lanes, and the loads
    of their points interleave), maps of _RUN consecutive groups (side by side again), then
    those runs in order. The last segment may be shorter.
    """
    n = x.shape[0]
    lr2 = 2.0 * lr
    groups = np.empty((6, _GROUPS))
    runs = np.empty((6, _RUNS))
    full = n // SEGMENT
    for s in range(full):
        base = s * SEGMENT
        for g in range(_GROUPS):
            m = _IDENTITY
            for k in range(base + g * _GROUP, base + (g + 1) * _GROUP):  # unrolled by LLVM
                m = _point_step(m, np.float64(x[k]), y[k], lr2)
            for q in range(6):
                groups[q, g] = m[q]
        for r in range(_RUNS):
            m = _column(groups, r * _RUN)
            for g in range(r * _RUN + 1, (r + 1) * _RUN):
                m = _compose(_column(groups, g), m)
            for q in range(6):
                runs[q, r] = m[q]
        m = _column(runs, 0)
        for r in range(1, _RUNS):
            m = _compose(_column(runs, r), m)
        for q in range(6):
            out[s, q] = m[q]
    if full < out.shape[0]:
        m = _IDENTITY
        for k in range(full * SEGMENT, n):
            m = _point_step(m, np.float64(x[k]), y[k], lr2)
        for q in range(6):
            out[full, q] = m[q]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def batch_maps(x, y, lr, batch, per_map, out):
    """Maps of mini-batch descent over consecutive runs of `per_map` batches into `out`.

    Returns the largest λmax of a batch's MSE Hessian 2·[[E x², E x], [E x, 1]]. The last
    batch, and the last run, may be shorter.
    """
    n = x.shape[0]
    lam = 0.0
    for s in range(out.shape[0]):
        m = _IDENTITY
        end = min((s + 1) * per_map * batch, n)
        for lo in range(s * per_map * batch, end, batch):
            hi = min(lo + batch, n)
            sx = sy = sxx = sxy = 0.0
            for i in range(lo, hi):
                xi = np.float64(x[i])
                yi = np.float64(y[i])
                sx += xi
                sy += yi
                sxx += xi * xi
                sxy += xi * yi
            count = hi - lo
            k = 2.0 * lr / count
            m = _compose((1.0 - k * sxx, -k * sx, -k * sx, 1.0 - k * count, k * sxy, k * sy), m)
            exx, ex = sxx / count, sx / count
            trace = exx + 1.0
            lam = max(lam, trace + math.sqrt(max(trace * trace - 4.0 * (exx - ex * ex), 0.0)))
        for q in range(6):
            out[s, q] = m[q]
    return lam


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def point_pass(x, y, w, b, lr):
    """Per-point SGD over (x, y) in order; stops at the first non-finite parameter."""
    lr2 = 2.0 * lr
    for i in range(x.shape[0]):
        xi = np.float64(x[i])
        err = w * xi + (b - y[i])
        w -= (lr2 * xi) * err
        b -= lr2 * err
        if not (math.isfinite(w) and math.isfinite(b)):
            return w, b, i + 1
    return w, b, x.shape[0]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def batch_pass(x, y, w, b, lr, batch):
    """Mini-batch updates over (x, y) in order, like the reference; stops when not finite."""
    n = x.shape[0]
    done = 0
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        gw = gb = 0.0
        for i in range(lo, hi):
            xi = np.float64(x[i])
            err = w * xi + b - y[i]
            gw += err * xi
            gb += err
        w -= lr * (2.0 * gw / (hi - lo))
        b -= lr * (2.0 * gb / (hi - lo))
        done += 1
        if not (math.isfinite(w) and math.isfinite(b)):
            break
    return w, b, done


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _moment_step(stats, w, b, lr):
    """One batch gradient descent step from the full-data centred moments."""
    mean_x, mean_y, var_x, cov_xy, _ = stats
    off = w * mean_x + b - mean_y
    grad_w = 2.0 * (w * var_x - cov_xy + mean_x * off)
    return w - lr * grad_w, b - lr * (2.0 * off)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _apply(maps, w, b):
    """Apply the maps in order; ok is False once (w, b) leaves [-LIMIT, LIMIT]² (or is NaN)."""
    for s in range(maps.shape[0]):
        w, b = (
            maps[s, 0] * w + maps[s, 2] * b + maps[s, 4],
            maps[s, 1] * w + maps[s, 3] * b + maps[s, 5],
        )
        if not (abs(w) <= LIMIT and abs(b) <= LIMIT):
            return w, b, False
    return w, b, True


@njit(cache=True, nogil=True)
def stop(rows, updates, e, done):
    """Training ended during epoch e after `done` of its updates: later rows are NaN."""
    rows[:, e + 1 :] = np.nan
    updates[e + 1 :] = updates[e] + done


@njit(cache=True, nogil=True)
def run_epochs(maps, stats, lr, first, last, rows, updates, per_epoch):
    """Run epochs first..last-1 of rows = [loss; w; b], recording each epoch's start loss.

    Uses the segment maps, or the full-data moments when there are none (batch gradient
    descent). Returns (epoch, status): DONE at `last`; EXACT when that epoch must be rerun
    update by update; STOPPED when its start loss, or BGD's next parameters, are not finite.
    """
    for e in range(first, last):
        w, b = rows[1, e], rows[2, e]
        rows[0, e] = mse(w, b, stats)
        if not math.isfinite(rows[0, e]):
            stop(rows, updates, e, 0)
            return e, STOPPED
        if maps.shape[0] == 0:
            w, b = _moment_step(stats, w, b, lr)
            if not (math.isfinite(w) and math.isfinite(b)):
                stop(rows, updates, e, 1)
                return e, STOPPED
        else:
            w, b, ok = _apply(maps, w, b)
            if not ok:
                return e, EXACT
        rows[1, e + 1], rows[2, e + 1] = w, b
        updates[e + 1] = updates[e] + per_epoch
    return last, DONE


def warm_up(dtype: str, pieces: bool = False) -> None:
    """Compile the kernels for data of this dtype, or load them from the on-disk cache.

    Training calls this before its clock starts, so its wall time is the training's alone:
    loading takes about 0.4 to 0.9 s per process, a cold SGD epoch at 10^7 rows 8 to 18 ms. Arrays
    read from a file are read-only, which numba compiles separately: both kinds are loaded
    (the second adds about 20 ms). `pieces`: also the strided views a shuffled epoch serves
    (the real and imaginary parts of complex rows, see tasks.training.shuffle).
    """
    columns = []
    for writeable in (True, False):
        x = np.zeros(SEGMENT + 1, dtype=dtype)
        x.flags.writeable = writeable
        columns.append(x)
    if pieces:
        columns.append(np.zeros(SEGMENT + 1, dtype=np.result_type(dtype, np.complex64)).real)
    for x in columns:
        point_maps(x, x, 0.0, np.empty((2, 6)))
        batch_maps(x, x, 0.0, 2, 2, np.empty((SEGMENT // 4 + 1, 6)))
        point_pass(x, x, 0.0, 0.0, 0.0)
        batch_pass(x, x, 0.0, 0.0, 0.0, 2)
    rows, updates = np.zeros((3, 2)), np.zeros(2, np.int64)
    run_epochs(np.empty((0, 6)), (0.0,) * 5, 0.0, 0, 1, rows, updates, 1)
