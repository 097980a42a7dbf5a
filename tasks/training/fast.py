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


def map_points(spec: MethodSpec) -> int:
    """Points behind one composed map (all but the last): the chunk alignment maps need."""
    if spec.method is Method.sgd:
        return SEGMENT
    return max(1, SEGMENT // spec.batch_size) * spec.batch_size


def epoch_maps(
    chunks: Iterable[Chunk], n: int, spec: MethodSpec, beat: Callable[[], None] | None = None
) -> tuple[np.ndarray, float]:
    """Segment maps of one epoch (chunks aligned to map_points) and the largest batch λmax;
    `beat()` after each chunk."""
    step = map_points(spec)
    maps = np.empty((-(-n // step), 6))
    done, lam = 0, 0.0
    for x, y in chunks:
        count = -(-x.shape[0] // step)
        if done + count > maps.shape[0]:
            raise ValueError(f"the data holds more than the {n} points expected")
        out = maps[done : done + count]
        if spec.method is Method.sgd:
            point_maps(x, y, spec.lr, out)
        else:
            lam = max(lam, batch_maps(x, y, spec.lr, spec.batch_size, step // spec.batch_size, out))
        done += count
        if beat is not None:
            beat()
    if done != maps.shape[0]:
        raise ValueError(f"the data holds fewer than the {n} points expected")
    return maps, lam


def _exact_epoch(
    visits: Visits, e: int, spec: MethodSpec, rows: np.ndarray, updates: np.ndarray
) -> tuple[int, int]:
    """Run epoch e update by update, as run_epochs reports: (e + 1, DONE), or (e, STOPPED) once
    a parameter stops being finite."""
    w, b, done = rows[1, e], rows[2, e], 0
    for x, y in visits.chunks(e, spec.batch_size):
        if spec.method is Method.sgd:
            w, b, made = point_pass(x, y, w, b, spec.lr)
        else:
            w, b, made = batch_pass(x, y, w, b, spec.lr, spec.batch_size)
        done += made
        if not (math.isfinite(w) and math.isfinite(b)):
            stop(rows, updates, e, done)
            return e, STOPPED
    rows[1, e + 1], rows[2, e + 1] = w, b
    updates[e + 1] = updates[e] + done
    return e + 1, DONE


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
    per_epoch = 1 if spec.method is Method.bgd else -(-visits.n // spec.batch_size)
    e, status, lam = 0, DONE, None

    def beat() -> None:
        if tick is not None:
            tick(e, float(mse(rows[1, e], rows[2, e], summary)))

    def maps_of(epoch: int) -> tuple[np.ndarray, float]:
        chunks = visits.chunks(epoch, map_points(spec))
        maps, found = epoch_maps(chunks, visits.n, spec, beat)
        return (maps if _stable(spec, stats, found) else _ONE_BY_ONE), found

    maps = None  # built afresh every epoch
    if spec.method is Method.bgd:
        maps = np.empty((0, 6))  # none: run_epochs steps from the moments
    elif spec.method is Method.sgd and not _stable(spec, stats, 0.0):
        maps = _ONE_BY_ONE
    elif visits.fixed:
        maps, found = maps_of(0)
        lam = found if spec.method is Method.minibatch else None
    rebuild = maps is None

    stride = 1 if rebuild or maps is _ONE_BY_ONE else max(1, epochs // 10)
    while e < epochs and status != STOPPED:
        if rebuild:
            maps, _ = maps_of(e)
        e, status = run_epochs(
            maps, summary, spec.lr, e, min(e + stride, epochs), rows, updates, per_epoch
        )
        if status == EXACT:
            e, status = _exact_epoch(visits, e, spec, rows, updates)
        if status != STOPPED and e < epochs:
            beat()
    if status != STOPPED:
        rows[0, epochs] = mse(rows[1, epochs], rows[2, epochs], summary)
    if tick is not None:
        tick(epochs, float(rows[0, epochs]))
    return (rows[0], rows[1], rows[2], updates), lam
