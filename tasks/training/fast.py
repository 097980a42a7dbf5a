"""The fast engine: trains on data of any size with the numba kernels, same results as the
reference engine.

An epoch runs as a short pass over the composed maps of its segments (tasks.training.kernels).
An epoch that visits the points in stored order uses the same maps every epoch, so they are
built once. Composition is exact up to rounding as long as no map expands, which holds below
the stability bound. Otherwise, and for an epoch whose maps would carry (w, b) beyond ±LIMIT or
out of the finite numbers, the epoch runs update by update: an overflow is reported where it
happens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from tasks.params import Method, MethodSpec
from tasks.stats import Moments
from tasks.training.kernels import (
    DONE,
    EXACT,
    SEGMENT,
    STOPPED,
    batch_maps,
    batch_pass,
    mse,
    point_maps,
    point_pass,
    run_epochs,
    stop,
)
from tasks.training.visits import Chunk, Visits

Trace = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Tick = Callable[[int, float], None]


def updates_per_epoch(spec: MethodSpec, n: int) -> int:
    """Parameter updates in one epoch over n points."""
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
    """Fill `out` with the maps of one aligned chunk; returns the largest batch λmax."""
    if spec.method is Method.sgd:
        return point_maps(x, y, lr, out)
    return batch_maps(x, y, lr, spec.batch_size, _per_map(spec), out)


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
        lam = max(lam, _build(x, y, spec, rate, maps[done : done + count]))
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
            w, b, made = point_pass(x, y, w, b, spec.lr)
        else:
            w, b, made = batch_pass(x, y, w, b, spec.lr, spec.batch_size)
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
            tick(e, float(mse(rows[1, e], rows[2, e], summary)))

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
        e, status = run_epochs(
            maps, summary, spec.lr, e, min(e + stride, epochs), rows, updates, per_epoch
        )
        if status == EXACT:
            w, b, done = _exact_epoch(visits, e, spec, rows[1, e], rows[2, e])
            if math.isfinite(w) and math.isfinite(b):
                rows[1, e + 1], rows[2, e + 1] = w, b
                updates[e + 1] = updates[e] + done
                e += 1
            else:
                stop(rows, updates, e, done)
                status = STOPPED
        if status != STOPPED and e < epochs:
            beat()
    if status != STOPPED:
        rows[0, epochs] = mse(rows[1, epochs], rows[2, epochs], summary)
    if tick is not None:
        tick(epochs, float(rows[0, epochs]))
    return (rows[0], rows[1], rows[2], updates), lam
