"""Training entry point: run one method on one engine, time it, and judge divergence."""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from tasks.history import History
from tasks.kernels import BatchMoments, batch_moments, train_fast, warm_up
from tasks.params import Method, MethodSpec
from tasks.reference import train_reference
from tasks.stats import Moments
from tasks.stats import moments as compute_moments

# A run counts as diverged once its loss exceeds this multiple of its starting loss.
DIVERGENCE_FACTOR = 1e3


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which a shuffled epoch visits the n points."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def stability_bound(spec: MethodSpec, stats: Moments, batches: BatchMoments | None = None) -> float:
    """Largest step size for which the method's error recurrence does not grow.

    Mini-batch descent needs the in-order `batches`; for a shuffled run the in-order figure
    is an approximation.
    """
    if spec.method is Method.bgd:
        return 2.0 / stats.hessian_lambda_max()
    if spec.method is Method.sgd:
        return 1.0 / (1.0 + stats.max_x2)
    if batches is None:
        raise ValueError("the mini-batch stability bound needs the batch moments")
    return float(2.0 / np.max(batches.hessian_lambda_max()))


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


def train(
    x: np.ndarray, y: np.ndarray, spec: MethodSpec, moments: Moments | None = None
) -> History:
    """Train one method on (x, y) in spec.dtype and return its per-epoch history.

    The wall time covers the epochs only: kernel compilation and the one-pass data statistics
    (full-data moments and, for mini-batch descent, the in-order batch moments) come before the
    clock starts.
    """
    stats = moments if moments is not None else compute_moments(x, y)
    batches = batch_moments(x, y, spec.batch_size) if spec.method is Method.minibatch else None
    shuffled = spec.shuffle and spec.method is not Method.bgd
    order = partial(epoch_order, x.shape[0], spec.shuffle_seed) if shuffled else None

    if spec.engine == "reference":
        start = time.perf_counter()
        loss, w, b, updates = train_reference(x, y, spec, order)
    else:
        warm_up(str(x.dtype))
        start = time.perf_counter()
        loss, w, b, updates = train_fast(x, y, spec, stats, batches, order)
    wall_time = time.perf_counter() - start

    bound = stability_bound(spec, stats, batches)
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
