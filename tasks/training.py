"""Training entry point: run one method on one engine, time it, and judge divergence."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from tasks.history import History
from tasks.kernels import Chunk, Visits, batch_lambda_max, train_fast, warm_up
from tasks.params import Method, MethodSpec
from tasks.stats import Moments
from tasks.stats import moments as compute_moments

# A run counts as diverged once its loss exceeds this multiple of its starting loss.
DIVERGENCE_FACTOR = 1e3
# Progress goes out about every tenth of the epochs, and at least this often while work goes on.
PROGRESS_SECONDS = 2.0
# Data sets up to this size (x and y as float32) are loaded once and shared by the training
# tasks of a process; larger ones stream from disk on every pass, in bounded memory.
IN_MEMORY_BYTES = 1 << 30
# Rows per piece when a shuffled epoch gathers its points.
GATHER_ROWS = 1 << 20

Progress = Callable[[int, float], None]


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
    if not (spec.shuffle and spec.method is not Method.bgd):
        return Visits(n, lambda _epoch, _multiple: [(x, y)], fixed=True)

    def gathered(epoch: int, multiple: int) -> Iterator[Chunk]:
        order = epoch_order(n, spec.shuffle_seed, epoch)
        step = max(1, GATHER_ROWS // multiple) * multiple
        for lo in range(0, n, step):
            idx = order[lo : lo + step]
            yield x[idx], y[idx]

    return Visits(n, gathered, fixed=False)


def streams_rows(rows: int, spec: MethodSpec) -> bool:
    """Whether training reads a stored data set of `rows` rows pass by pass from disk instead of
    holding it in memory.

    The fast engine streams data larger than IN_MEMORY_BYTES, and never loads data for batch
    gradient descent, which needs only the moments; the reference engine and shuffled epochs
    need the data in memory.
    """
    if spec.engine != "fast" or (spec.shuffle and spec.method is not Method.bgd):
        return False
    return spec.method is Method.bgd or rows * 8 > IN_MEMORY_BYTES


def stream_visits(n: int, read: Callable[[], Iterable[Chunk]]) -> Visits:
    """Data read afresh, in stored order, on every pass: memory holds about one piece."""
    return Visits(n, lambda _epoch, multiple: aligned(read(), multiple), fixed=True)


def stability_bound(spec: MethodSpec, stats: Moments, batch_lambda: float | None = None) -> float:
    """Largest step size for which the method's error recurrence does not grow.

    Mini-batch descent needs `batch_lambda`, the largest λmax of a batch's MSE Hessian over
    the batches in stored order; for a shuffled run the in-order figure is an approximation.
    """
    if spec.method is Method.bgd:
        return 2.0 / stats.hessian_lambda_max()
    if spec.method is Method.sgd:
        return 1.0 / (1.0 + stats.max_x2)
    if batch_lambda is None:
        raise ValueError("the mini-batch stability bound needs the largest batch λmax")
    return 2.0 / batch_lambda


def method_name(spec: MethodSpec) -> str:
    """The method in words."""
    if spec.method is Method.bgd:
        return "batch gradient descent"
    if spec.method is Method.sgd:
        return "per-point SGD"
    return f"mini-batch descent with batches of {spec.batch_size}"


def bound_formula(spec: MethodSpec) -> str:
    """The stability bound's formula, in words."""
    if spec.method is Method.bgd:
        return "2/λmax(full-data MSE Hessian)"
    if spec.method is Method.sgd:
        return "1/(1 + max x²)"
    if spec.shuffle:
        return (
            "min over the in-order batches of 2/λmax(batch MSE Hessian), approximate when shuffled"
        )
    return "min over batches of 2/λmax(batch MSE Hessian)"


def divergence_reason(loss: np.ndarray, spec: MethodSpec, bound: float) -> str | None:
    """One sentence on why the loss history counts as diverged, or None when it does not."""
    finite = np.isfinite(loss)
    start = loss[0]
    if finite.all() and loss.max() <= DIVERGENCE_FACTOR * max(start, 1e-12):
        return None
    if not finite[0]:
        what = "the loss at the starting point is not finite"
    else:
        peak = loss[finite].max()
        what = f"loss grew from {start:.4g} to {peak:.4g}"
        if peak <= start:
            what = f"loss started at {start:.4g}"
        if not finite.all():
            k = int(np.argmin(finite))
            what += (
                f", then overflowed to {loss[k]} at epoch {k}"
                if np.isinf(loss[k])
                else f", then the parameters overflowed during epoch {k - 1}"
            )
    side = "above" if spec.lr > bound else "not above"
    return (
        f"{what} (step size {spec.lr:g} is {side} the stability bound {bound:.3g}"
        f" = {bound_formula(spec)} for {method_name(spec)})"
    )


class _Ticker:
    """Passes progress on about every tenth of the epochs and at least every PROGRESS_SECONDS."""

    def __init__(self, progress: Progress | None, epochs: int) -> None:
        self.progress = progress
        self.epochs = epochs
        self.stride = max(1, epochs // 10)
        self.next = self.stride
        self.last = time.monotonic()
        self.spent = 0.0  # seconds spent in `progress`, kept out of the training time

    def __call__(self, epoch: int, loss: float) -> None:
        now = time.monotonic()
        due = epoch >= self.next or epoch == self.epochs or now - self.last >= PROGRESS_SECONDS
        if self.progress is not None and due:
            self.next = (epoch // self.stride + 1) * self.stride
            self.progress(epoch, loss)
            self.last = time.monotonic()
            self.spent += self.last - now


def _history(
    spec: MethodSpec,
    trace: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    wall_time: float,
    stats: Moments,
    batch_lambda: float | None,
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
        wall_time_s=wall_time,
        diverged=reason is not None,
        reason=reason,
        stability_bound=bound,
        lr=spec.lr,
        engine=spec.engine,
        dtype=spec.dtype,
        compute_dtype=spec.dtype if spec.engine == "reference" else "float64",
        extra={"stability_bound_formula": bound_formula(spec)},
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

    Mini-batch descent on shuffled visits needs `batch_lambda` (see stability_bound). The wall
    time covers every pass over the data and the epochs; compiling the kernels (for data of
    `dtype`) comes before the clock starts, and time spent in `progress` is left out.
    """
    if spec.engine != "fast":
        raise ValueError(f"the {spec.engine} engine needs the data in memory: use train()")
    warm_up(dtype)
    tick = _Ticker(progress, spec.epochs)
    start = time.perf_counter()
    trace, found = train_fast(visits, spec, stats, tick if progress else None)
    wall_time = time.perf_counter() - start - tick.spent
    lam = found if found is not None else batch_lambda
    return _history(spec, trace, wall_time, stats, lam)


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
    return batch_lambda_max([(x, y)], x.shape[0], spec)


def train(
    x: np.ndarray,
    y: np.ndarray,
    spec: MethodSpec,
    moments: Moments | None = None,
    progress: Progress | None = None,
) -> History:
    """Train one method on in-memory (x, y) in spec.dtype and return its per-epoch history.

    `progress(epoch, loss)` hears about every tenth of the epochs, and at least every
    PROGRESS_SECONDS while epochs finish, with the full-data loss after `epoch` epochs. The
    reference engine's wall time covers its epochs only.
    """
    stats = moments if moments is not None else compute_moments(x, y)
    shuffled = spec.shuffle and spec.method is not Method.bgd
    needs_lambda = spec.method is Method.minibatch and (shuffled or spec.engine == "reference")
    batch_lambda = in_order_batch_lambda(x, y, spec) if needs_lambda else None
    if spec.engine == "fast":
        visits = array_visits(x, y, spec)
        return train_visits(visits, spec, stats, progress, str(x.dtype), batch_lambda)
    order = (lambda e: epoch_order(x.shape[0], spec.shuffle_seed, e)) if shuffled else None
    tick = _Ticker(progress, spec.epochs)
    from tasks.reference import train_reference  # torch only for the reference engine

    start = time.perf_counter()
    trace = train_reference(x, y, spec, order, spec.device, tick if progress else None)
    wall_time = time.perf_counter() - start - tick.spent
    return _history(spec, trace, wall_time, stats, batch_lambda)
