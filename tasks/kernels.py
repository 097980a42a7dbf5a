"""Fast training engine: numba kernels in float64 arithmetic, same results as the reference.

Every update of (w, b), one point for SGD or one batch of m points for mini-batch descent, is
an affine map

    (w, b) <- A·(w, b) + c,   A = I − (2·lr/m)·[[Σx², Σx], [Σx, m]],   c = (2·lr/m)·(Σxy, Σy).

The engine composes the maps of consecutive segments of about SEGMENT points (segments are
independent, so all cores build them, and SGD builds the maps of short runs of points side
by side in SIMD lanes), then runs an epoch as a short sequential pass over the segment maps. An
epoch that visits the points in stored order uses the same maps every epoch, so they are built once.
Composition is exact up to rounding as long as no map expands, which holds below the stability
bound. Otherwise, and for an epoch whose maps would carry (w, b) beyond ±LIMIT or out of the
finite numbers, the epoch runs update by update: an overflow is reported where it happens.

Batch gradient descent needs no pass over the data: its loss and gradient follow from the
full-data centred moments, in O(1) per epoch:

    off    = w·mean_x + b − mean_y
    loss   = w²·var_x − 2·w·cov_xy + var_y + off²
    grad_w = 2·(w·var_x − cov_xy + mean_x·off),   grad_b = 2·off
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from tasks.params import Method, MethodSpec
from tasks.stats import Moments

if TYPE_CHECKING:  # torch is imported only where a device path runs
    import torch

SEGMENT = 1024  # points per composed map
_GROUP = 8  # SGD: consecutive points per first-level map (8 lanes' loads interleave well)
_GROUPS = SEGMENT // _GROUP
_RUN = 4  # first-level maps per second-level map
_RUNS = _GROUPS // _RUN
_GROUPS_SIZE = 6 * _GROUPS
_RUNS_SIZE = 6 * _RUNS
_PARTS_PER_CORE = 4
LIMIT = 1e100  # (w, b) beyond this: the epoch reruns update by update
# Lets LLVM fuse multiply-adds; NaN and inf keep their IEEE meaning (divergence checks need it).
_FASTMATH = {"contract"}

DONE, EXACT, STOPPED = 0, 1, 2
_IDENTITY = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
Chunk = tuple[np.ndarray, np.ndarray]
Trace = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Tick = Callable[[int, float], None]


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


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _mse(w: float, b: float, stats: tuple[float, float, float, float, float]) -> float:
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


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _points_map(x, y, lo, hi, lr2):
    """The map of per-point SGD over points lo..hi-1, composed one point at a time."""
    m = _IDENTITY
    for i in range(lo, hi):
        m = _point_step(m, np.float64(x[i]), y[i], lr2)
    return m


@njit(cache=True, nogil=True)
def _column(maps, i):
    """Map i of maps stored one component per row."""
    return maps[0, i], maps[1, i], maps[2, i], maps[3, i], maps[4, i], maps[5, i]


@intrinsic
def _stack_empty(typingctx, size, dtype):
    """A pointer to `size` items of `dtype` on the stack, where LLVM can keep them in registers.

    `size` must be a compile-time constant, such as a module-level int.
    """

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(dtype.dtype), size=args[0])

    return types.CPointer(dtype.dtype)(types.intp, dtype), codegen


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _point_maps(x, y, lr, out):
    """Maps of per-point SGD over consecutive SEGMENT-point segments of (x, y) into `out`.

    Each segment is composed in three levels: maps of _GROUP consecutive points (the groups
    of a segment are independent, so they are built side by side in SIMD lanes, and the loads
    of their points interleave), maps of _RUN consecutive groups (side by side again), then
    those runs in order. The last segment may be shorter.
    """
    n = x.shape[0]
    lr2 = 2.0 * lr
    # Stack buffers: LLVM knows they alias nothing, so the lane loops vectorise.
    groups = carray(_stack_empty(_GROUPS_SIZE, np.float64), (6, _GROUPS))
    runs = carray(_stack_empty(_RUNS_SIZE, np.float64), (6, _RUNS))
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
        m = _points_map(x, y, full * SEGMENT, n, lr2)
        for q in range(6):
            out[full, q] = m[q]
    return 0.0


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _batch_maps(x, y, lr, batch, per_map, out):
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
def _point_pass(x, y, w, b, lr):
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
def _batch_pass(x, y, w, b, lr, batch):
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
def _stop(rows, updates, e, done):
    """Training ended during epoch e after `done` of its updates: later rows are NaN."""
    rows[:, e + 1 :] = np.nan
    updates[e + 1 :] = updates[e] + done


@njit(cache=True, nogil=True)
def _epochs(maps, stats, lr, first, last, rows, updates, per_epoch):
    """Run epochs first..last-1 of rows = [loss; w; b], recording each epoch's start loss.

    Uses the segment maps, or the full-data moments when there are none (batch gradient
    descent). Returns (epoch, status): DONE at `last`; EXACT when that epoch must be rerun
    update by update; STOPPED when its start loss, or BGD's next parameters, are not finite.
    """
    for e in range(first, last):
        w, b = rows[1, e], rows[2, e]
        rows[0, e] = _mse(w, b, stats)
        if not math.isfinite(rows[0, e]):
            _stop(rows, updates, e, 0)
            return e, STOPPED
        if maps.shape[0] == 0:
            w, b = _moment_step(stats, w, b, lr)
            if not (math.isfinite(w) and math.isfinite(b)):
                _stop(rows, updates, e, 1)
                return e, STOPPED
        else:
            w, b, ok = _apply(maps, w, b)
            if not ok:
                return e, EXACT
        rows[1, e + 1], rows[2, e + 1] = w, b
        updates[e + 1] = updates[e] + per_epoch
    return last, DONE


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="gdflow-maps")


os.register_at_fork(after_in_child=_pool.cache_clear)  # a forked child has none of the threads


def warm_up(dtype: str) -> None:
    """Compile the kernels for data of this dtype, or load them from the on-disk cache."""
    x = np.zeros(SEGMENT + 1, dtype=dtype)
    out = np.empty((2, 6))
    _point_maps(x, x, 0.0, out)
    _batch_maps(x, x, 0.0, 2, 2, np.empty((SEGMENT // 4 + 1, 6)))
    _point_pass(x, x, 0.0, 0.0, 0.0)
    _batch_pass(x, x, 0.0, 0.0, 0.0, 2)
    rows, updates = np.zeros((3, 2)), np.zeros(2, np.int64)
    _epochs(out, (0.0,) * 5, 0.0, 0, 1, rows, updates, 1)
    _epochs(np.empty((0, 6)), (0.0,) * 5, 0.0, 0, 1, rows, updates, 1)


def updates_per_epoch(spec: MethodSpec, n: int) -> int:
    if spec.method is Method.bgd:
        return 1
    return -(-n // spec.batch_size)


def _per_map(spec: MethodSpec) -> int:
    """Batches per composed map: about SEGMENT points."""
    return max(1, SEGMENT // spec.batch_size)


def map_points(spec: MethodSpec) -> int:
    """Points behind one composed map (all but the last): the chunk alignment maps need."""
    return SEGMENT if spec.method is Method.sgd else _per_map(spec) * spec.batch_size


def _build(x: np.ndarray, y: np.ndarray, spec: MethodSpec, lr: float, out: np.ndarray) -> float:
    if spec.method is Method.sgd:
        return _point_maps(x, y, lr, out)
    return _batch_maps(x, y, lr, spec.batch_size, _per_map(spec), out)


def _on_device(a: np.ndarray, device: str) -> torch.Tensor:
    import torch

    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


def _maps_of(x: np.ndarray, y: np.ndarray, spec: MethodSpec, lr: float, out: np.ndarray) -> float:
    """Fill `out` with the maps of one aligned chunk; returns the largest batch λmax.

    On the CPU the maps are shared out among the cores, in a few parts per core so that a core
    busy with other work holds up little; mini-batch maps can come from a torch device instead.
    """
    if spec.method is Method.minibatch and spec.device != "cpu":
        maps, lam = batch_maps_torch(
            _on_device(x, spec.device),
            _on_device(y, spec.device),
            lr,
            spec.batch_size,
            _per_map(spec),
        )
        out[:] = maps
        return lam
    step = map_points(spec)
    count = out.shape[0]
    parts = min(_PARTS_PER_CORE * (os.cpu_count() or 1), count)
    bounds = [round(count * i / parts) for i in range(parts + 1)]
    jobs = [
        _pool().submit(
            _build, x[lo * step : hi * step], y[lo * step : hi * step], spec, lr, out[lo:hi]
        )
        for lo, hi in pairwise(bounds)
        if hi > lo
    ]
    return max(job.result() for job in jobs)


def epoch_maps(
    chunks: Iterable[Chunk],
    n: int,
    spec: MethodSpec,
    lr: float | None = None,
    beat: Callable[[], None] | None = None,
) -> tuple[np.ndarray, float]:
    """Segment maps of one epoch (chunks aligned to the map size) and the largest batch λmax.

    `beat()` is called after each chunk.
    """
    step = map_points(spec)
    maps = np.empty((-(-n // step), 6))
    done, lam = 0, 0.0
    rate = spec.lr if lr is None else lr
    for x, y in chunks:
        count = -(-x.shape[0] // step)
        if done + count > maps.shape[0]:
            raise ValueError(f"the data holds more than the {n} points expected")
        lam = max(lam, _maps_of(x, y, spec, rate, maps[done : done + count]))
        done += count
        if beat is not None:
            beat()
    if done != maps.shape[0]:
        raise ValueError(f"the data holds fewer than the {n} points expected")
    return maps, lam


def batch_lambda_max(chunks: Iterable[Chunk], n: int, spec: MethodSpec) -> float:
    """Largest λmax of the MSE Hessian over the mini-batches, visited as `chunks` gives them."""
    return epoch_maps(chunks, n, spec, lr=0.0)[1]


def _exact_epoch(
    visits: Visits, epoch: int, spec: MethodSpec, w: float, b: float
) -> tuple[float, float, int]:
    """One epoch update by update; stops at the first non-finite parameter."""
    done = 0
    for x, y in visits.chunks(epoch, spec.batch_size):
        if spec.method is Method.sgd:
            w, b, made = _point_pass(x, y, w, b, spec.lr)
        else:
            w, b, made = _batch_pass(x, y, w, b, spec.lr, spec.batch_size)
        done += made
        if not (math.isfinite(w) and math.isfinite(b)):
            break
    return w, b, done


def _stable(spec: MethodSpec, stats: Moments, batch_lambda: float) -> bool:
    """Whether no update expands: the step size is within every update's stability bound.

    Composing such maps is as accurate as applying the updates one by one; composing
    expanding ones is not, so those epochs run update by update.
    """
    if spec.method is Method.sgd:
        return spec.lr * (1.0 + stats.max_x2) <= 1.0
    return spec.lr * batch_lambda <= 2.0


_ONE_BY_ONE = np.full((1, 6), np.nan)  # a map that fails at once: the epoch runs update by update


def train_fast(
    visits: Visits, spec: MethodSpec, stats: Moments, tick: Tick | None = None
) -> tuple[Trace, float | None]:
    """Train with the numba kernels; returns ((loss, w, b, updates), batch λmax or None).

    Each array has length epochs + 1. `tick(epoch, loss)` is offered the progress after every
    tenth of the epochs (after every epoch when each builds its own maps); the batch λmax
    (mini-batch descent in stored order) comes for free from building the maps.
    """
    summary = (stats.mean_x, stats.mean_y, stats.var_x, stats.cov_xy, stats.var_y)
    epochs = spec.epochs
    rows = np.empty((3, epochs + 1))
    rows[1, 0], rows[2, 0] = spec.w0, spec.b0
    updates = np.zeros(epochs + 1, dtype=np.int64)
    per_epoch = updates_per_epoch(spec, visits.n)
    step = map_points(spec)
    rebuild = spec.method is not Method.bgd and not visits.fixed and _stable(spec, stats, 0.0)
    lam: float | None = None
    maps = np.empty((0, 6))
    e, status = 0, DONE

    def beat() -> None:
        if tick is not None:
            tick(e, float(_mse(rows[1, e], rows[2, e], summary)))

    if spec.method is Method.sgd and not _stable(spec, stats, 0.0):
        maps = _ONE_BY_ONE
    elif spec.method is not Method.bgd and visits.fixed:
        maps, found = epoch_maps(visits.chunks(0, step), visits.n, spec, beat=beat)
        maps = maps if _stable(spec, stats, found) else _ONE_BY_ONE
        lam = found if spec.method is Method.minibatch else None

    stride = 1 if rebuild or maps is _ONE_BY_ONE else max(1, epochs // 10)
    while e < epochs and status != STOPPED:
        if rebuild:
            maps, found = epoch_maps(visits.chunks(e, step), visits.n, spec, beat=beat)
            maps = maps if _stable(spec, stats, found) else _ONE_BY_ONE
        e, status = _epochs(
            maps, summary, spec.lr, e, min(e + stride, epochs), rows, updates, per_epoch
        )
        if status == EXACT:
            w, b, done = _exact_epoch(visits, e, spec, rows[1, e], rows[2, e])
            if math.isfinite(w) and math.isfinite(b):
                rows[1, e + 1], rows[2, e + 1] = w, b
                updates[e + 1] = updates[e] + done
                e += 1
            else:
                _stop(rows, updates, e, done)
                status = STOPPED
        if status != STOPPED and e < epochs:
            beat()
    if status != STOPPED:
        rows[0, epochs] = _mse(rows[1, epochs], rows[2, epochs], summary)
    if tick is not None:
        tick(epochs, float(rows[0, epochs]))
    return (rows[0], rows[1], rows[2], updates), lam


def batch_maps_torch(
    x: torch.Tensor, y: torch.Tensor, lr: float, batch: int, per_map: int
) -> tuple[np.ndarray, float]:
    """`_batch_maps` in torch on the tensors' device: the batch sums, and the composition of
    runs of `per_map` batches vectorised across runs, as a pairwise tree (few kernel launches).
    Returns the maps (on the CPU) and λmax."""
    import torch

    n = x.shape[0]
    full = n // batch
    xd, yd = x.to(torch.float64), y.to(torch.float64)

    def sums(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return torch.stack([xs.sum(-1), ys.sum(-1), (xs * xs).sum(-1), (xs * ys).sum(-1)], -1)

    parts = [sums(xd[: full * batch].view(full, batch), yd[: full * batch].view(full, batch))]
    counts = [torch.full((full,), float(batch), dtype=torch.float64, device=x.device)]
    if n > full * batch:
        parts.append(sums(xd[full * batch :], yd[full * batch :]).view(1, 4))
        counts.append(
            torch.full((1,), float(n - full * batch), dtype=torch.float64, device=x.device)
        )
    s, m = torch.cat(parts), torch.cat(counts)
    sx, sy, sxx, sxy = s.unbind(-1)
    k = 2.0 * lr / m
    one = torch.ones_like(m)
    batch_maps = torch.stack([one - k * sxx, -k * sx, -k * sx, one - k * m, k * sxy, k * sy], -1)
    exx, ex = sxx / m, sx / m
    trace = exx + 1.0
    lam = (trace + torch.sqrt(torch.clamp(trace * trace - 4.0 * (exx - ex * ex), min=0.0))).max()

    runs = -(-batch_maps.shape[0] // per_map)
    width = 1 << (per_map - 1).bit_length()  # each run padded with identity maps to 2^k
    identity = torch.tensor(_IDENTITY, dtype=torch.float64, device=x.device)
    pad = runs * per_map - batch_maps.shape[0]
    acc = torch.cat([batch_maps, identity.expand(pad, 6)]).view(runs, per_map, 6)
    acc = torch.cat([acc, identity.expand(runs, width - per_map, 6)], 1)
    while acc.shape[1] > 1:  # compose neighbours pairwise: log2(width) steps of whole tensors
        later, earlier = acc[:, 1::2].unbind(-1), acc[:, 0::2].unbind(-1)
        acc = torch.stack(_compose.py_func(later, earlier), -1)  # the numba kernel's Python body
    return acc[:, 0].cpu().numpy(), float(lam)
