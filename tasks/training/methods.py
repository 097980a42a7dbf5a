"""Training one method: pick the engine, time it, and judge the run's divergence."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TypeVar

import numpy as np

from tasks.history import History
from tasks.params import Method, MethodSpec
from tasks.stats import Moments
from tasks.stats import moments as compute_moments
from tasks.training.divergence import bound_formula, divergence_reason, stability_bound
from tasks.training.fast import Trace, epoch_maps, train_fast
from tasks.training.kernels import warm_up
from tasks.training.visits import (
    Chunk,
    Visits,
    array_visits,
    shuffled,
    stream_visits,
    streams_rows,
)

# Progress goes out about every tenth of the epochs, and at least this often while work goes on.
PROGRESS_SECONDS = 2.0

Progress = Callable[[int, float], None]
T = TypeVar("T")


def _timed(
    run: Callable[[Progress | None], T], epochs: int, progress: Progress | None
) -> tuple[T, float]:
    """`run(tick)` and its wall time, less the time spent in `progress`.

    `tick` passes progress on about every tenth of the epochs and at least every
    PROGRESS_SECONDS; it is None when nobody listens.
    """
    stride = max(1, epochs // 10)
    due, last, spent = stride, time.monotonic(), 0.0

    def tick(epoch: int, loss: float) -> None:
        nonlocal due, last, spent
        now = time.monotonic()
        if epoch >= due or epoch == epochs or now - last >= PROGRESS_SECONDS:
            due = (epoch // stride + 1) * stride
            progress(epoch, loss)
            last = time.monotonic()
            spent += last - now

    start = time.perf_counter()
    result = run(tick if progress is not None else None)
    return result, time.perf_counter() - start - spent


def _history(
    spec: MethodSpec, trace: Trace, wall_time: float, stats: Moments, batch_lambda: float | None
) -> History:
    loss, w, b, updates = trace
    bound = stability_bound(spec, stats, batch_lambda)
    reason = divergence_reason(loss, spec, bound)
    return History(
        method=spec.method.value,
        epoch=np.arange(spec.epochs + 1, dtype=np.int64),
        loss=loss,
        w=w,
        b=b,
        updates=updates,
        diverged=reason is not None,
        reason=reason,
        stability_bound=bound,
        lr=spec.lr,
        engine=spec.engine,
        dtype=spec.dtype,
        compute_dtype=spec.dtype if spec.engine == "reference" else "float64",
        extra={"stability_bound_formula": bound_formula(spec)},
        wall_time_s=wall_time,
    )


def train_visits(
    visits: Visits,
    spec: MethodSpec,
    stats: Moments,
    progress: Progress | None = None,
    dtype: str = "float32",
    batch_lambda: float | None = None,
) -> History:
    """Train one method with the fast engine on data of any size, as `visits` serves it.

    Mini-batch descent on shuffled visits needs `batch_lambda` (see stability_bound). Compiling
    the kernels (for data of `dtype`) comes before the clock starts.
    """
    warm_up(dtype)
    run = partial(train_fast, visits, spec, stats)
    (trace, found), wall_time = _timed(run, spec.epochs, progress)
    return _history(spec, trace, wall_time, stats, batch_lambda if found is None else found)


def train_stored(
    rows: int,
    read: Callable[[], Iterable[Chunk]],
    load: Callable[[], tuple[np.ndarray, np.ndarray]],
    spec: MethodSpec,
    stats: Moments,
    progress: Progress | None = None,
) -> History:
    """Train on a stored data set of `rows` rows: streamed pass by pass through `read` where
    streams_rows says so, else held in memory as `load` gives it."""
    if streams_rows(rows, spec):
        return train_visits(stream_visits(rows, read), spec, stats, progress)
    x, y = load()
    return train(x, y, spec, stats, progress)


def in_order_batch_lambda(x: np.ndarray, y: np.ndarray, spec: MethodSpec) -> float:
    """The largest batch λmax over the batches of (x, y) in stored order."""
    warm_up(str(x.dtype))
    return epoch_maps([(x, y)], x.shape[0], spec)[1]


def train(
    x: np.ndarray,
    y: np.ndarray,
    spec: MethodSpec,
    moments: Moments | None = None,
    progress: Progress | None = None,
) -> History:
    """Train one method on in-memory (x, y) in spec.dtype and return its per-epoch history.

    `progress(epoch, loss)` hears the full-data loss after `epoch` epochs (see _timed). The
    reference engine's wall time covers its epochs only.
    """
    stats = moments if moments is not None else compute_moments(x, y)
    needs_lambda = spec.method is Method.minibatch and (shuffled(spec) or spec.engine != "fast")
    batch_lambda = in_order_batch_lambda(x, y, spec) if needs_lambda else None
    if spec.engine == "fast":
        visits = array_visits(x, y, spec)
        return train_visits(visits, spec, stats, progress, str(x.dtype), batch_lambda)
    # torch: imported only when the reference engine trains (a second of start-up otherwise)
    from tasks.training.reference import check_device, train_reference

    check_device(spec.device)
    trace, wall_time = _timed(partial(train_reference, x, y, spec), spec.epochs, progress)
    return _history(spec, trace, wall_time, stats, batch_lambda)
